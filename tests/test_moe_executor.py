"""The executor's Mixtral-style experts (validate/executor/moe.py): logits against an
independent pure-torch reference and transformers' MixtralForCausalLM, every placement and
offload mode computing the same logits, the bytes each mode moves (only the routed experts
when fetching), the routing against the touched-experts formula, tensor/pipeline-parallel
runs, the operation counts the cost model charges, and the refusals."""

from __future__ import annotations

import math
import re

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from simulator import moe  # noqa: E402
from simulator.engines import llmsim as contract  # noqa: E402
from simulator.models import PRESETS, ModelSpec  # noqa: E402
from simulator.policy import Placement, Policy, Workload  # noqa: E402
from simulator.vocabulary import Tier  # noqa: E402
from validate.executor import UnsupportedModelError, make_plan, run_policy, state_dict  # noqa: E402
from validate.executor.engine import Executor  # noqa: E402
from validate.executor.opcount import OpCounter  # noqa: E402

from helpers import rounding_tolerance  # noqa: E402

SPEC = ModelSpec(name="tiny-mixtral", family="mixtral", hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
                 ffn_dim=96, vocab_size=256, max_position_embeddings=64, rope_theta=5000.0, num_experts=4,
                 experts_per_token=2)
N, PROMPT, GEN = 8, 7, 5
WORKLOAD = Workload(PROMPT, GEN, N)
BASE = Policy(gpu_batch_size=4, num_gpu_batches=2, dtype="fp32", overlap=False)
PROMPTS = torch.randint(0, 256, (N, PROMPT), generator=torch.Generator().manual_seed(1))
FORCED = torch.randint(0, 256, (N, GEN), generator=torch.Generator().manual_seed(2))
SEQ = torch.cat([PROMPTS, FORCED[:, :-1]], dim=1)  # the tokens a teacher-forced run consumes
UNIT = 3 * SPEC.hidden_size * SPEC.ffn_dim * 4  # one expert's bytes in fp32


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _bytes(result, phase, component, resource) -> int:
    return sum(r["bytes"] for r in result.breakdown
               if (r["phase"], r["component"], r["resource"]) == (phase, component, resource))


@pytest.fixture(scope="module")
def resident():
    return run_policy(SPEC, WORKLOAD, BASE, prompt_ids=PROMPTS, force_tokens=FORCED, return_logits=True)


# ---------------------------------------------------------------------------- the math
def reference_logits(spec: ModelSpec, w: dict, seq: torch.Tensor) -> torch.Tensor:
    """Mixtral written out densely: every expert on every token, weighted by its routing
    weight (zero where not chosen), causal attention over the whole sequence at once.
    seq (N, T) -> logits (N, T, V) in fp32."""
    n, T = seq.shape
    h, nh, nkv, d, E, k = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.num_experts, \
        spec.experts_per_token

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + spec.norm_eps) * g

    inv = spec.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)  # (T, d/2)
    cos, sin = torch.cat([ang.cos()] * 2, -1).float(), torch.cat([ang.sin()] * 2, -1).float()

    def rope(t):  # (n, heads, T, d), rotate-half convention
        return t * cos + torch.cat([-t[..., d // 2:], t[..., :d // 2]], -1) * sin

    x = w["model.embed_tokens.weight"][seq]  # (n, T, h)
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        y = rms(x, w[p + "input_layernorm.weight"])
        q = (y @ w[p + "self_attn.q_proj.weight"].T).view(n, T, nh, d).transpose(1, 2)
        kk = (y @ w[p + "self_attn.k_proj.weight"].T).view(n, T, nkv, d).transpose(1, 2)
        v = (y @ w[p + "self_attn.v_proj.weight"].T).view(n, T, nkv, d).transpose(1, 2)
        q, kk = rope(q), rope(kk)
        kk, v = kk.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        att = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(d) + mask, -1)
        x = x + (att @ v).transpose(1, 2).reshape(n, T, nh * d) @ w[p + "self_attn.o_proj.weight"].T
        y = rms(x, w[p + "post_attention_layernorm.weight"])
        probs = torch.softmax(y @ w[p + "block_sparse_moe.gate.weight"].T, -1)  # (n, T, E)
        top_w, top_i = probs.topk(k, -1)
        top_w = top_w / top_w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(E):
            gate = (top_w * (top_i == e)).sum(-1, keepdim=True)  # (n, T, 1): 0 where e was not chosen
            pe = p + f"block_sparse_moe.experts.{e}."
            ye = (F.silu(y @ w[pe + "w1.weight"].T) * (y @ w[pe + "w3.weight"].T)) @ w[pe + "w2.weight"].T
            out = out + gate * ye
        x = x + out
    return rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


def test_parameter_count_equals_the_analytic_count():
    assert sum(t.numel() for t in state_dict(SPEC).values()) == SPEC.num_parameters()


def test_logits_equal_an_independent_torch_reference(resident):
    ref = reference_logits(SPEC, state_dict(SPEC), SEQ)[:, PROMPT - 1:]  # positions that predict
    assert resident.logits.shape == ref.shape
    assert _rel(resident.logits, ref) <= rounding_tolerance(SPEC)
    assert torch.equal(resident.logits.argmax(-1), torch.tensor(resident.tokens))


def test_logits_equal_transformers_mixtral(resident):
    pytest.importorskip("transformers")
    from validate.executor.hf import hf_model
    model = hf_model(SPEC)
    assert sum(p.numel() for p in model.parameters()) == SPEC.num_parameters()
    with torch.no_grad():
        ref = model(SEQ).logits[:, PROMPT - 1:]
    assert _rel(resident.logits, ref) <= rounding_tolerance(SPEC)


# ---------------------------------------------------------------------------- placements and modes
@pytest.mark.parametrize("mode", ["prefetch", "fetch", "cpu"])
@pytest.mark.parametrize("weights", [Placement(0, 1, 0), Placement(0.5, 0.25, 0.25), Placement(0, 0, 1)],
                         ids=["cpu", "mixed", "disk"])
@pytest.mark.parametrize("overlap", [False, True])
def test_every_placement_and_offload_mode_computes_the_resident_logits(mode, weights, overlap, resident, tmp_path):
    pol = BASE.with_(weights=weights, expert_offload=mode, overlap=overlap, cache=Placement(0.5, 0.5, 0))
    got = run_policy(SPEC, WORKLOAD, pol, prompt_ids=PROMPTS, force_tokens=FORCED, return_logits=True,
                     offload_dir=str(tmp_path))
    assert _rel(got.logits, resident.logits) <= 1e-6
    assert got.placement["weights"]["gpu_frac"] < weights.gpu_frac + 0.1
    assert got.experts["expert_offload"] == mode


def test_the_placement_splits_experts_and_the_rest_alike():
    plan = make_plan(SPEC, WORKLOAD, BASE.with_(weights=Placement(0.5, 0.5, 0)))
    dense = {t: plan.packs[t].nbytes for t in (Tier.GPU, Tier.CPU)}
    experts = {t: sum(u.nbytes for u in plan.experts[t].units) for t in (Tier.GPU, Tier.CPU)}
    # half of each kind on each tier, up to one tensor
    biggest = max(t.nbytes("fp32") for t in SPEC.layer_tensors())
    assert abs(experts[Tier.GPU] - experts[Tier.CPU]) <= biggest
    assert abs(dense[Tier.GPU] - dense[Tier.CPU]) <= biggest + 64
    assert plan.realized()["weights"].gpu_frac == pytest.approx(0.5, abs=0.05)


# ---------------------------------------------------------------------------- bytes moved
def test_fetching_moves_only_the_experts_a_batch_routes_to():
    """One sequence per block: a decode token picks exactly k = 2 of the 4 experts, so each
    layer fetches 2 experts per step - half of what prefetching moves."""
    wl = Workload(PROMPT, GEN, 2)
    pol = BASE.with_(gpu_batch_size=1, num_gpu_batches=1, weights=Placement(0, 1, 0), overlap=True)
    fetch = run_policy(SPEC, wl, pol.with_(expert_offload="fetch"))
    pre = run_policy(SPEC, wl, pol.with_(expert_offload="prefetch"))
    plan = make_plan(SPEC, wl, pol)
    steps = (GEN - 1) * 2  # decode steps of the two blocks
    dense = SPEC.num_layers * plan.packs[Tier.CPU].nbytes + SPEC.vocab_size * SPEC.hidden_size * 4
    assert _bytes(pre, "decode", "weight_load", "h2d") == steps * (dense + SPEC.num_layers * 4 * UNIT)
    assert _bytes(fetch, "decode", "weight_load", "h2d") == steps * (dense + SPEC.num_layers * 2 * UNIT)
    assert fetch.experts["per_phase"]["decode"] == {"experts_per_gpu_batch": 2.0,
                                                    "experts_fetched_per_layer_block": 2.0}


def test_fetched_bytes_are_the_fetched_experts_of_each_tier(tmp_path):
    pol = BASE.with_(weights=Placement(0, 0.5, 0.5), expert_offload="fetch", overlap=True, disk_io="cached")
    got = run_policy(SPEC, WORKLOAD, pol, offload_dir=str(tmp_path))
    plan = make_plan(SPEC, WORKLOAD, pol)
    stats = got.experts["per_phase"]
    for phase, passes in (("prefill", 1), ("decode", GEN - 1)):
        fetched = stats[phase]["experts_fetched_per_layer_block"] * SPEC.num_layers * passes * plan.num_blocks
        dense = passes * plan.num_blocks * (SPEC.num_layers * (plan.packs[Tier.CPU].nbytes + plan.packs[Tier.DISK].nbytes)
                                            + sum((m.counts[1] + m.counts[2]) * m.row_bytes for m in [plan.lm_head]))
        assert _bytes(got, phase, "weight_load", "h2d") == pytest.approx(dense + fetched * UNIT)
    # every expert lies whole on the CPU or the disk here (placement by tensor, 12 tensors per tier)
    assert _bytes(got, "decode", "weight_load", "disk_read") > 0


def test_cpu_experts_run_on_the_host_and_leave_their_weights_there(tmp_path):
    pol = BASE.with_(weights=Placement(0, 1, 0), expert_offload="cpu")
    got = run_policy(SPEC, WORKLOAD, pol)
    plan = make_plan(SPEC, WORKLOAD, pol)
    dense = SPEC.num_layers * plan.packs[Tier.CPU].nbytes + SPEC.vocab_size * SPEC.hidden_size * 4
    assert _bytes(got, "decode", "weight_load", "h2d") == (GEN - 1) * plan.num_blocks * dense
    assert sum(r["time_s"] for r in got.breakdown if (r["component"], r["resource"]) == ("matmul", "cpu")) > 0
    disk = run_policy(SPEC, WORKLOAD, pol.with_(weights=Placement(0, 0, 1), disk_io="cached"),
                      offload_dir=str(tmp_path))
    assert _bytes(disk, "decode", "weight_load", "disk_read") >= \
        disk.experts["per_phase"]["decode"]["experts_fetched_per_layer_block"] * SPEC.num_layers * (GEN - 1) * UNIT


def test_routing_touches_what_the_formula_expects():
    """Seeded random weights route close to uniformly: the experts a GPU batch computes and
    a block fetches are within 8% of ``simulator.moe.experts_touched``."""
    spec = SPEC.with_(name="tiny-mixtral-8", num_experts=8, num_layers=2)
    for b in (2, 4, 8):
        got = run_policy(spec, Workload(16, 6), BASE.with_(gpu_batch_size=b, weights=Placement(0, 1, 0),
                                                           expert_offload="fetch"))
        dec = got.experts["per_phase"]["decode"]
        assert dec["experts_per_gpu_batch"] == pytest.approx(float(moe.experts_touched(spec, b)), rel=0.08)
        assert dec["experts_fetched_per_layer_block"] == pytest.approx(float(moe.experts_touched(spec, 2 * b)),
                                                                       rel=0.08)


# ---------------------------------------------------------------------------- parallel runs
def test_tensor_and_pipeline_parallel_runs_equal_the_single_process_run(resident):
    from validate.executor.distributed import run_parallel
    free = run_policy(SPEC, WORKLOAD, BASE, prompt_ids=PROMPTS, return_logits=True)
    for tp, pp in ((2, 1), (2, 3)):
        got = run_parallel(SPEC, WORKLOAD, BASE.with_(tp=tp, pp=pp, overlap=True), prompt_ids=PROMPTS,
                           return_logits=True, threads_per_rank=1)
        assert _rel(got["logits"], free.logits) <= rounding_tolerance(SPEC)
        assert got["tokens"] == free.tokens


# ---------------------------------------------------------------------------- the cost model's contract
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_operation_counts_are_the_cost_models(dtype):
    """Per layer and GPU batch: the Llama layer's elementwise operators less the dense MLP's
    silu and multiply, the routing (MOE_ROUTER_KERNELS), and MOE_KERNELS_PER_EXPERT per
    expert computed."""
    spec = SPEC.with_(hidden_size=128, num_heads=2, num_kv_heads=1, ffn_dim=192, num_layers=2)
    ex = Executor(spec, Workload(4, 2), Policy(gpu_batch_size=2, num_gpu_batches=1, dtype=dtype))
    counter = OpCounter()
    ex.counter = counter
    with counter:
        got = ex.run()
    half = "fp32" if dtype == "fp32" else "half"
    labels = ("elementwise", "cache_rows", "cache_write", "routing", "expert_gather", "expert_combine", "expert")
    for phase in ("prefill", "decode"):
        per_layer = counter.total(phase, *labels) / spec.num_layers
        hit = got.experts["per_phase"][phase]["experts_per_gpu_batch"]
        want = contract.ELEMENTWISE_KERNELS[("llama", half)] + contract.MOE_ROUTER_KERNELS[half] \
            + contract.MOE_KERNELS_PER_EXPERT * hit
        assert per_layer == want, phase


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("model,changes,pattern", [
    (PRESETS["deepseek-v3"], {}, r"Mixtral-style experts only; deepseek_v3 .* is planned, not executed"),
    (PRESETS["qwen1.5-moe-a2.7b"], {}, r"Mixtral-style experts only; qwen2_moe"),
    (SPEC, {"compress_weights": True}, r"^--compress-weights: the executor does not compress the experts"),
    (SPEC, {"dp": 2, "expert_parallel": True}, r"^--expert-parallel: the executor runs every replica's experts"),
])
def test_refusals_are_one_typed_line(model, changes, pattern):
    from validate.executor.distributed import check_parallel
    for fn in (lambda p: run_policy(model, WORKLOAD, p), lambda p: check_parallel(model, WORKLOAD, p)):
        with pytest.raises(UnsupportedModelError) as e:
            fn(BASE.with_(**changes))
        assert re.search(pattern, str(e.value)) and "\n" not in str(e.value)
