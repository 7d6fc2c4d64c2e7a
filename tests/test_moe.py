"""Mixture of experts in the planner: config.json import and parameter counts checked by
hand against the published totals, MLA's compressed KV cache, the touched-experts formula,
expert parallelism's all-to-alls, and the llmsim engine's three ways of offloading experts
(simulator/moe.py, simulator/engines/llmsim.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from simulator import moe
from simulator.cost import estimate
from simulator.errors import ModelError, PolicyError, ProfileError
from simulator.hardware import load_profile
from simulator.models import PRESETS, ModelSpec, get_model
from simulator.ops import experts_matmul_time_s
from simulator.policy import Placement, Policy, Workload
from simulator.search import SearchSpace, search

CONFIGS = Path(__file__).parent / "fixtures" / "hf_configs"  # published config.json fields (see each _source)
B = 1e9


def _load(name: str) -> tuple[dict, ModelSpec]:
    path = CONFIGS / f"{name}.json"
    return json.loads(path.read_text()), ModelSpec.from_hf_config(path)


def _mlp(h: int, f: int) -> int:
    """A SwiGLU MLP: gate, up (h -> f) and down (f -> h)."""
    return 3 * h * f


# ---------------------------------------------------------------------------- parameter counts by hand
def test_mixtral_8x7b_counts_by_hand():
    c, m = _load("mixtral-8x7b")
    h, f, L, V, E, k = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"], \
        c["num_local_experts"], c["num_experts_per_tok"]
    d = h // c["num_attention_heads"]
    attn = h * h + 2 * h * c["num_key_value_heads"] * d + h * h  # q, k, v, o
    norms = 2 * h
    router = E * h
    layer = attn + norms + router + E * _mlp(h, f)
    total = L * layer + 2 * V * h + h  # untied embedding and LM head, final norm
    active = total - L * (E - k) * _mlp(h, f)
    assert m.num_parameters() == total == 46_702_792_704
    assert m.active_parameters() == active == 12_879_925_248
    assert m.num_parameters() == PRESETS["mixtral-8x7b"].num_parameters()
    # published: 46.7B total, 12.9B active (Mixtral of Experts, arXiv 2401.04088, section 2)
    assert abs(total / B - 46.7) <= 0.05 and abs(active / B - 12.9) <= 0.05


def test_qwen15_moe_a27b_counts_by_hand():
    c, m = _load("qwen1.5-moe-a2.7b")
    h, L, V, E, k = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["num_experts"], \
        c["num_experts_per_tok"]
    f, fs = c["moe_intermediate_size"], c["shared_expert_intermediate_size"]
    attn = 4 * h * h + 3 * h  # q, k, v, o (16 heads of 128, no GQA) and the q/k/v biases
    norms = 2 * h
    router, shared_gate = E * h, h
    layer = attn + norms + router + _mlp(h, fs) + shared_gate + E * _mlp(h, f)
    total = L * layer + 2 * V * h + h
    active = total - L * (E - k) * _mlp(h, f)
    assert m.family == "qwen2_moe" and m.dense_layers == () and m.shared_expert_gate
    assert m.num_parameters() == total == 14_315_784_192
    assert m.active_parameters() == active == 2_689_173_504
    assert m.num_parameters() == PRESETS["qwen1.5-moe-a2.7b"].num_parameters()
    # published (model card): 14.3B in total, 2.7B activated
    assert abs(total / B - 14.3) <= 0.05 and abs(active / B - 2.7) <= 0.05


def _deepseek_by_hand(c: dict, router_bias: bool) -> tuple[int, int]:
    h, L, V, nh = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["num_attention_heads"]
    E, k, f = c["n_routed_experts"], c["num_experts_per_tok"], c["moe_intermediate_size"]
    ql, kl, r = c["q_lora_rank"], c["kv_lora_rank"], c["qk_rope_head_dim"]
    nope, v = c["qk_nope_head_dim"], c["v_head_dim"]
    mla = (h * ql + ql  # q_a_proj and its norm
           + ql * nh * (nope + r)  # q_b_proj
           + h * (kl + r) + kl  # kv_a_proj_with_mqa and its norm
           + kl * nh * (nope + v)  # kv_b_proj
           + nh * v * h)  # o_proj
    norms = 2 * h
    experts = E * h + (E if router_bias else 0) + _mlp(h, c["n_shared_experts"] * f) + E * _mlp(h, f)
    dense = _mlp(h, c["intermediate_size"])
    n_dense = c["first_k_dense_replace"]
    total = L * (mla + norms) + (L - n_dense) * experts + n_dense * dense + 2 * V * h + h
    active = total - (L - n_dense) * (E - k) * _mlp(h, f)
    return total, active


def test_deepseek_v2_counts_by_hand():
    c, m = _load("deepseek-v2")
    total, active = _deepseek_by_hand(c, router_bias=False)
    assert m.is_mla and m.dense_layers == (0,) and m.num_kv_heads == 1 and m.head_dim == 192
    assert m.num_parameters() == total == 235_741_434_880
    assert m.active_parameters() == active == 21_375_800_320
    assert m.num_parameters() == PRESETS["deepseek-v2"].num_parameters()
    # published (arXiv 2405.04434, abstract): 236B total, 21B activated per token
    assert abs(total / B - 236) <= 0.5 and abs(active / B - 21) <= 0.5


def test_deepseek_v3_counts_by_hand():
    c, m = _load("deepseek-v3")
    total, active = _deepseek_by_hand(c, router_bias=True)
    assert m.dense_layers == (0, 1, 2) and m.moe_router_bias
    assert m.num_parameters() == total == 671_026_419_200
    assert m.active_parameters() == active == 37_552_297_472
    assert m.num_parameters() == PRESETS["deepseek-v3"].num_parameters()
    # published (arXiv 2412.19437, abstract): 671B total, 37B activated. The multi-token
    # prediction module (num_nextn_predict_layers) is not part of the 671B and not counted.
    # "37B" rounds down: 37.55B with both embedding matrices, 36.6B without the input one.
    assert abs(total / B - 671) <= 0.5 and 0 <= active / B - 37 < 1.0


def test_mla_caches_the_latent_and_the_rope_key_per_token_and_layer():
    for name in ("deepseek-v2", "deepseek-v3"):
        m = get_model(name)
        assert m.kv_bytes_per_token("bf16") == (512 + 64) * 2  # 1152 bytes, for all 128 heads
        assert m.kv_bytes_per_token("fp32") == (512 + 64) * 4
        # against a 128-head MHA cache of the same head size (2 x 128 x 128 elements)
        assert 2 * 128 * 128 / (512 + 64) == pytest.approx(56.9, abs=0.05)
    # a dense layer's tensors differ from an expert layer's
    v3 = get_model("deepseek-v3")
    dense = {t.name for t in v3.layer_tensors(0)}
    assert "mlp.gate_proj.weight" in dense and not any(".experts." in n for n in dense)
    assert sum(".experts." in t.name for t in v3.layer_tensors(3)) == 3 * 256


def test_decoder_sparse_step_and_mlp_only_layers_make_dense_layers(tmp_path):
    c, _ = _load("qwen1.5-moe-a2.7b")
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**c, "decoder_sparse_step": 2, "mlp_only_layers": [1]}))
    m = ModelSpec.from_hf_config(p)
    # layer i has experts when i is not in mlp_only_layers and (i + 1) % 2 == 0
    assert m.dense_layers == tuple(i for i in range(24) if i % 2 == 0 or i == 1)
    assert m.dense_ffn_dim == 5632 and m.num_moe_layers == 11
    h = 2048
    dense_mlp = _mlp(h, 5632)
    sparse_mlp = 60 * h + _mlp(h, 5632) + h + 60 * _mlp(h, 1408)
    assert m.num_parameters() == _load("qwen1.5-moe-a2.7b")[1].num_parameters() - 13 * (sparse_mlp - dense_mlp)


@pytest.mark.parametrize("name,change,match", [
    ("qwen1.5-moe-a2.7b", {"moe_intermediate_size": None}, r"moe_intermediate_size must be an integer >= 0"),
    ("qwen1.5-moe-a2.7b", {"num_experts_per_tok": 61}, r"num_experts_per_tok 61 exceeds num_experts 60"),
    ("qwen1.5-moe-a2.7b", {"num_experts": 1}, r"num_experts 1 leaves no routed experts"),
    ("qwen1.5-moe-a2.7b", {"mlp_only_layers": [3, 24]}, r"mlp_only_layers must be a list of layer indices in 0..23"),
    ("qwen1.5-moe-a2.7b", {"decoder_sparse_step": 0}, r"decoder_sparse_step must be an integer >= 1, got 0"),
    ("deepseek-v2", {"first_k_dense_replace": 60}, r"leave no expert layer"),
    ("deepseek-v2", {"kv_lora_rank": "512"}, r"kv_lora_rank must be an integer >= 1, got '512'"),
    ("deepseek-v3", {"qk_rope_head_dim": 0}, r"qk_rope_head_dim must be an integer >= 1, got 0"),
    ("deepseek-v3", {"n_routed_experts": None}, r"n_routed_experts must be an integer"),
])
def test_moe_config_errors_are_one_line_and_name_the_key(tmp_path, name, change, match):
    c, _ = _load(name)
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**c, **change}))
    with pytest.raises(ModelError, match=match) as e:
        ModelSpec.from_hf_config(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_missing_moe_keys_are_named(tmp_path):
    c, _ = _load("deepseek-v3")
    del c["v_head_dim"]
    p = tmp_path / "config.json"
    p.write_text(json.dumps(c))
    with pytest.raises(ModelError, match=r"missing 'v_head_dim' \(required for model_type 'deepseek_v3'\)"):
        ModelSpec.from_hf_config(p)


def test_to_dict_round_trips_and_keeps_dense_models_unchanged():
    for name in ("qwen1.5-moe-a2.7b", "deepseek-v3", "mixtral-8x7b"):
        m = get_model(name)
        again = ModelSpec.from_dict(json.loads(json.dumps(m.to_dict())))
        assert again == m and again.num_parameters() == m.num_parameters()
        assert m.to_dict()["active_parameters"] == m.active_parameters()
    assert "active_parameters" not in get_model("llama-2-7b").to_dict()
    assert "kv_lora_rank" not in get_model("opt-1.3b").to_dict()


# ---------------------------------------------------------------------------- the touched-experts formula
def test_experts_touched_by_hand_and_at_its_limits():
    m = get_model("mixtral-8x7b")  # E = 8, k = 2
    assert moe.experts_touched(m, 1) == pytest.approx(2.0)
    assert moe.experts_touched(m, 4) == pytest.approx(8 * (1 - 0.75 ** 4))  # 5.47
    assert moe.experts_touched(m, 1000) == pytest.approx(8.0)
    assert moe.expert_tokens(m, 4) == pytest.approx(4 * 2 / (8 * (1 - 0.75 ** 4)))
    # expert parallelism over 4 replicas: 2 experts per GPU, the 4 replicas' tokens routed to them
    assert moe.experts_touched(m, 1, ep=4) == pytest.approx(2 * (1 - 0.75 ** 4))
    assert moe.expert_tokens(m, 1, ep=4) * moe.experts_touched(m, 1, ep=4) == pytest.approx(4 * 1 * 2 * 2 / 8)
    v3 = get_model("deepseek-v3")  # 256 experts, 8 per token: a decode batch of 32 touches 164
    assert moe.experts_touched(v3, 32) == pytest.approx(256 * (1 - (1 - 8 / 256) ** 32))
    assert 160 < moe.experts_touched(v3, 32) < 170


def test_experts_touched_is_the_mean_of_uniform_top_k_routing():
    """Monte Carlo: m tokens each choosing k distinct experts of E uniformly; the mean count
    of distinct experts over 4000 seeded trials is within 1% of the formula."""
    rng = np.random.default_rng(0)
    for E, k, m in ((8, 2, 3), (8, 2, 16), (64, 6, 20), (256, 8, 32)):
        spec = get_model("mixtral-8x7b").with_(num_experts=E, experts_per_token=k)
        trials = [len({int(e) for _ in range(m) for e in rng.choice(E, k, replace=False)}) for _ in range(4000)]
        assert np.mean(trials) == pytest.approx(float(moe.experts_touched(spec, m)), rel=0.01)


def test_one_formula_in_one_place():
    from simulator import ops
    assert ops.experts_touched is moe.experts_touched
    src = Path(moe.__file__).parent
    hits = [p.name for p in src.rglob("*.py") if "(1.0 - k / E)" in p.read_text() or "1 - k / E" in p.read_text()]
    assert hits == ["moe.py"]


# ---------------------------------------------------------------------------- expert parallelism
def test_all_to_all_alpha_beta_by_hand():
    # 4 GPUs, 1 MB each (own share included), 100 GB/s busbw, 10 us per step
    t = moe.all_to_all_time_s(1e6, 4, 100e9, 10e-6)
    assert t == pytest.approx(3 * 10e-6 + 0.75 * 1e6 / 100e9)
    assert moe.all_to_all_time_s(1e6, 1, 100e9, 10e-6) == 0.0
    m = get_model("mixtral-8x7b")
    assert moe.dispatch_bytes(m, 16, 2) == 16 * 2 * 4096 * 2


def test_expert_parallelism_splits_the_experts_and_pays_two_all_to_alls_per_layer():
    m, hw = get_model("mixtral-8x7b"), load_profile("dgx-h100-8x")
    wl = Workload(256, 16)
    base = Policy(gpu_batch_size=16, num_gpu_batches=1, dtype="bf16", dp=8)
    dp = estimate(m, hw, wl, base)
    ep = estimate(m, hw, wl, base.with_(expert_parallel=True))
    # weights per GPU: 7 of the 8 experts of every layer gone
    saved = m.num_layers * 7 * moe.expert_bytes(m, "bf16")
    assert dp.peak_memory_bytes["gpu"] - ep.peak_memory_bytes["gpu"] == pytest.approx(saved, rel=0.01)

    def comm(e, phase):
        return sum(r["time_s"] for r in e.breakdown if r["phase"] == phase and r["component"] == "communication")

    busbw, lat = hw.interconnect.intra_node_bytes_per_s, hw.interconnect.intra_node_latency_s
    per_layer = 2 * moe.all_to_all_time_s(moe.dispatch_bytes(m, 16 * 256, 2), 8, busbw, lat)
    assert comm(dp, "prefill") == 0.0
    assert comm(ep, "prefill") == pytest.approx(m.num_layers * float(per_layer), rel=1e-9)
    with pytest.raises(PolicyError, match=r"--expert-parallel .* needs --dp 2 or more"):
        base.with_(dp=1, expert_parallel=True)
    with pytest.raises(PolicyError, match=r"--dp 16 replicas exceed mixtral-8x7b's 8 experts"):
        moe.check_policy(m, hw, base.with_(dp=16, expert_parallel=True), "llmsim")


def test_expert_knobs_are_refused_where_they_do_not_apply():
    hw = load_profile("dgx-h100-8x")
    wl = Workload(128, 8)
    with pytest.raises(PolicyError, match=r"^--expert-offload: opt-1.3b has no experts"):
        estimate(get_model("opt-1.3b"), hw, wl, Policy(expert_offload="fetch"))
    with pytest.raises(PolicyError, match=r"^--expert-parallel: the zero-inference engine does not split"):
        estimate(get_model("mixtral-8x7b"), hw, wl, Policy(dp=2, expert_parallel=True, dtype="bf16"), "zero-inference")
    with pytest.raises(PolicyError, match=r"--expert-offload: 'gpu' is not one of prefetch, fetch, cpu"):
        Policy(expert_offload="gpu")
    no_cpu_bf16 = replace(hw, cpu=replace(hw.cpu, matmul_flop_per_s=(("fp32", 1e12),)))
    with pytest.raises(ProfileError, match=r"cpu.bf16_GFLOPs"):
        estimate(get_model("mixtral-8x7b"), no_cpu_bf16, wl, Policy(expert_offload="cpu", dtype="bf16"))
    assert Policy(expert_offload="cpu").to_dict()["expert_offload"] == "cpu"
    assert "expert_offload" not in Policy().to_dict() and "expert_parallel" not in Policy().to_dict()
    assert Policy.from_dict(Policy(dp=2, expert_parallel=True).to_dict()).expert_parallel


# ---------------------------------------------------------------------------- offloaded experts in the engine
MIX, H100 = get_model("mixtral-8x7b"), load_profile("h100-pcie5")
OFF = Placement(0.25, 0.75, 0.0)


def _rows(e, phase, component, resource) -> float:
    return sum(r["time_s"] for r in e.breakdown
               if (r["phase"], r["component"], r["resource"]) == (phase, component, resource))


def test_fetched_experts_are_the_touched_share_copied_serially():
    wl = Workload(64, 9)
    pol = Policy(gpu_batch_size=2, num_gpu_batches=2, weights=OFF, dtype="bf16", expert_offload="fetch")
    e = estimate(MIX, H100, wl, pol)
    # decode: each block pass touches E(1 - (1 - k/E)^(nb b)) experts per layer, their CPU share copied
    touched = float(moe.experts_touched(MIX, 4))
    per_step = MIX.num_layers * OFF.cpu_frac * touched * moe.expert_bytes(MIX, "bf16") / H100.links.h2d_bytes_per_s
    latency = MIX.num_layers * touched * H100.links.h2d_latency_s
    assert _rows(e, "decode", "weight_load", "sync") == pytest.approx((wl.gen_len - 1) * (per_step + latency), rel=1e-9)
    assert e.bottleneck == "sync"
    pre = estimate(MIX, H100, wl, pol.with_(expert_offload="prefetch"))
    assert _rows(pre, "decode", "weight_load", "sync") == 0.0
    # prefetched: every offloaded expert byte crosses the link, hidden behind compute
    assert _rows(pre, "decode", "weight_load", "h2d") > _rows(e, "decode", "weight_load", "h2d") * 10


def test_fetching_wins_small_decode_batches_and_prefetching_large_blocks():
    wl = Workload(128, 33)

    def decode_tok_s(b, nb, mode):
        p = Policy(gpu_batch_size=b, num_gpu_batches=nb, weights=OFF, dtype="bf16", expert_offload=mode)
        return estimate(MIX, H100, wl, p).decode_throughput_tok_s

    assert decode_tok_s(1, 1, "fetch") > 2 * decode_tok_s(1, 1, "prefetch")  # 2 of 8 experts per token
    assert decode_tok_s(64, 4, "prefetch") > decode_tok_s(64, 4, "fetch")  # 256 tokens touch all 8


def test_cpu_experts_compute_on_the_cpu_and_move_only_hidden_states():
    wl = Workload(32, 5)
    pol = Policy(gpu_batch_size=4, num_gpu_batches=1, weights=Placement(0, 1, 0), dtype="bf16", expert_offload="cpu")
    e = estimate(MIX, H100, wl, pol)
    streamed = estimate(MIX, H100, wl, pol.with_(expert_offload="prefetch"))
    cpu_mm = _rows(e, "decode", "matmul", "cpu")
    m = 4
    want = (wl.gen_len - 1) * MIX.num_layers * float(experts_matmul_time_s(MIX, H100.cpu, m, "bf16"))
    assert cpu_mm == pytest.approx(want, rel=1e-9)
    dense_bytes = MIX.layer_weight_bytes("bf16") - 8 * moe.expert_bytes(MIX, "bf16")
    copies = (MIX.num_layers + 1) * H100.links.h2d_latency_s  # one per layer and for the LM head (+ final norm)
    assert _rows(e, "decode", "weight_load", "h2d") == pytest.approx(
        (wl.gen_len - 1) * ((MIX.num_layers * dense_bytes + MIX.lm_head_tensor().nbytes("bf16") + 2 * MIX.hidden_size)
                            / H100.links.h2d_bytes_per_s + copies), rel=1e-9)
    io = (wl.gen_len - 1) * MIX.num_layers * moe.dispatch_bytes(MIX, m, 2) / H100.links.d2h_bytes_per_s
    assert _rows(e, "decode", "activation_store", "d2h") == pytest.approx(io, rel=1e-9)
    # the GPU no longer holds room for streamed experts
    assert e.peak_memory_bytes["gpu"] < streamed.peak_memory_bytes["gpu"] - moe.routed_bytes(MIX, "bf16")


def test_an_all_gpu_moe_is_the_same_in_every_offload_mode():
    wl = Workload(64, 8)
    pols = [Policy(gpu_batch_size=8, dtype="bf16", expert_offload=mode) for mode in ("prefetch", "fetch", "cpu")]
    times = [estimate(get_model("qwen1.5-moe-a2.7b"), H100, wl, p).total_latency_s for p in pols]
    assert times[0] == pytest.approx(times[1], rel=1e-12) and times[0] == pytest.approx(times[2], rel=1e-12)


def test_lp_objective_equals_estimate_for_each_expert_variant():
    """The search's LP is the cost model for the MoE variants too (relaxed policy, no step terms)."""
    hw = load_profile("h100-pcie5")
    hw = replace(hw, links=replace(hw.links, h2d_latency_s=0.0, d2h_latency_s=0.0),
                 device=replace(hw.device, launch_s=1e-15))
    wl = Workload(128, 8)
    for mode in ("prefetch", "fetch", "cpu"):
        sp = SearchSpace(gpu_batch_sizes=(4, 32), num_gpu_batches=(1, 4), compress_weights=(False,), dtype="bf16")
        plan = search(MIX, hw, wl, space=sp, compare=False)
        est = estimate(MIX, hw, wl, plan.relaxed_policy)
        assert est.total_latency_s == pytest.approx(plan.lp_objective_s, rel=1e-6)
    variants = set(zip(plan.candidates["expert_parallel"], plan.candidates["expert_offload"]))
    assert variants == {(False, "prefetch"), (False, "fetch"), (False, "cpu")}


def test_the_search_spreads_experts_over_gpus_when_that_is_faster():
    plan = search(MIX, load_profile("dgx-h100-8x"), Workload(512, 32), gpus=8, compare=False,
                  space=SearchSpace(gpu_batch_sizes=(32, 128), num_gpu_batches=(1, 2), compress_weights=(False,),
                                    compress_cache=(False,), dtype="bf16"))
    lay = plan.layouts()
    assert plan.policy.dp == 8 and plan.policy.expert_parallel
    with_ep = lay[(lay.dp == 8)]
    assert with_ep.expert_parallel.all()
    # the same policy without expert parallelism is slower (all 8 experts' weights read per GPU)
    same = estimate(MIX, load_profile("dgx-h100-8x"), Workload(512, 32), plan.policy.with_(expert_parallel=False))
    assert plan.estimate.throughput_tok_s > 1.1 * same.throughput_tok_s


def test_models_without_experts_search_as_before():
    hw = load_profile("t4-gcp")
    plan = search(get_model("opt-6.7b"), hw, Workload(256, 32), compare=False, space=SearchSpace(dtype="fp16"))
    assert "expert_parallel" not in plan.candidates and "expert_offload" not in plan.policy.to_dict()
    assert moe.search_variants(get_model("opt-6.7b"), hw, "llmsim", 4, "fp16") == [moe.NO_VARIANT]
    assert moe.search_variants(MIX, hw, "flexgen", 4, "fp16") == [moe.NO_VARIANT]
    assert len(moe.search_variants(MIX, load_profile("cpu-2core"), "llmsim", 2, "fp32")) == 6


def test_placement_order_offloads_both_kinds_alike():
    t = MIX.layer_tensors()
    names, sizes = [x.name for x in t], [x.nbytes("bf16") for x in t]
    routed = np.array([moe.is_routed_expert(n) for n in names])
    dense_total, expert_total = sum(np.array(sizes)[~routed]), sum(np.array(sizes)[routed])
    biggest_dense = max(np.array(sizes)[~routed])
    for u in (0.1, 0.25, 0.5, 0.8):
        tiers = moe.assign_layer_tensors(names, sizes, Placement(1 - u, u, 0))
        off = np.array([str(x.value) != "gpu" for x in tiers])
        assert abs(sum(np.array(sizes)[off & routed]) - u * expert_total) <= max(sizes)
        assert abs(sum(np.array(sizes)[off & ~routed]) - u * dense_total) <= biggest_dense
    # every option the rounding may ask for is realized as asked
    for asked, real in moe.weight_options(MIX, "bf16")[:50]:
        assert asked == real


# ---------------------------------------------------------------------------- invariants
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def moe_cases(draw):
    model = draw(st.sampled_from([MIX, get_model("qwen1.5-moe-a2.7b"), get_model("deepseek-v2")]))
    hw = draw(st.sampled_from([H100, load_profile("cpu-2core")]))
    g = draw(st.integers(0, 20))
    c = draw(st.integers(0, 20 - g))
    dtype = "bf16" if "bf16" in hw.device.dtypes and "bf16" in hw.cpu.dtypes else "fp32"
    pol = Policy(gpu_batch_size=draw(st.integers(1, 64)), num_gpu_batches=draw(st.integers(1, 4)),
                 weights=Placement(g / 20, c / 20, (20 - g - c) / 20), dtype=dtype,
                 expert_offload=draw(st.sampled_from(["prefetch", "fetch", "cpu"])), overlap=draw(st.booleans()))
    return model, hw, Workload(draw(st.integers(1, 256)), draw(st.integers(1, 16))), pol


@settings(max_examples=60, deadline=None)
@given(moe_cases(), st.floats(1.0, 10.0))
def test_more_link_bandwidth_never_slows_an_moe(case, k):
    model, hw, wl, pol = case
    fast = replace(hw, links=replace(hw.links, h2d_bytes_per_s=hw.links.h2d_bytes_per_s * k,
                                     d2h_bytes_per_s=hw.links.d2h_bytes_per_s * k,
                                     duplex_bytes_per_s=hw.links.duplex_bytes_per_s * k))
    a, b = estimate(model, hw, wl, pol), estimate(model, fast, wl, pol)
    assert b.prefill_latency_s <= a.prefill_latency_s * (1 + 1e-12)
    assert b.decode_latency_s <= a.decode_latency_s * (1 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(moe_cases())
def test_fetching_never_moves_more_expert_bytes_than_prefetching(case):
    model, hw, wl, pol = case

    def moved(mode):  # weight bytes over the link: busy seconds x rate, both resources the loads use
        e = estimate(model, hw, wl, pol.with_(expert_offload=mode))
        return sum(r["time_s"] for r in e.breakdown if r["component"] == "weight_load")

    fetch, pre = moved("fetch"), moved("prefetch")
    lat = (wl.gen_len + 1) * model.num_layers * model.num_experts * (hw.links.h2d_latency_s + 1e-12)
    assert fetch <= pre * (1 + 1e-9) + 2 * lat
