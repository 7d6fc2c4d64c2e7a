"""The torch executor (validate/executor): equivalence with transformers, placement
invariance, compression tolerances, bytes moved vs the cost model, the offload directory."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from simulator import compression  # noqa: E402
from simulator.errors import LlmsimError, ModelError, PolicyError  # noqa: E402
from simulator.models import PRESETS, ModelSpec  # noqa: E402
from simulator.placement import assign_tensors, realized_placement, split_counts  # noqa: E402
from simulator.policy import Placement, Policy, Workload  # noqa: E402
from simulator.vocabulary import Component, Phase, Resource, Tier  # noqa: E402
from validate.executor import (ExecutorError, OffloadSpaceError, UnsupportedModelError, make_plan,  # noqa: E402
                               run_policy, state_dict)
from validate.executor import layers, storage  # noqa: E402
from validate.executor.hf import hf_model  # noqa: E402
from validate.executor.quant import dequantize, quantize  # noqa: E402
from validate.executor.weights import RandomWeights  # noqa: E402

from helpers import rounding_tolerance  # noqa: E402

OPT = ModelSpec(name="tiny-opt", family="opt", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2,
                ffn_dim=128, vocab_size=256, max_position_embeddings=64, tie_word_embeddings=True)
LLAMA = ModelSpec(name="tiny-llama", family="llama", hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
                  ffn_dim=96, vocab_size=256, max_position_embeddings=64, rope_theta=5000.0)
QWEN2 = LLAMA.with_(name="tiny-qwen2", family="qwen2", num_layers=2, tie_word_embeddings=True)
MODELS = {"opt": OPT, "llama": LLAMA, "qwen2": QWEN2}
P = Placement
N, PROMPT, GEN = 8, 7, 5
WORKLOAD = Workload(prompt_len=PROMPT, gen_len=GEN, num_sequences=N)
BASE = Policy(gpu_batch_size=4, num_gpu_batches=2, dtype="fp32", overlap=False)


def _ids(seed: int, shape) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


PROMPTS = _ids(1, (N, PROMPT))
FORCED = _ids(2, (N, GEN))  # teacher forcing: every step sees varied tokens


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return float((a - b).abs().max() / b.abs().max())


def _norm_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def reference():
    """The all-resident, serial fp32 run of each model: free-running and teacher-forced."""
    out = {}
    for key, spec in MODELS.items():
        free = run_policy(spec, WORKLOAD, BASE, prompt_ids=PROMPTS, return_logits=True)
        forced = run_policy(spec, WORKLOAD, BASE, prompt_ids=PROMPTS, force_tokens=FORCED, return_logits=True)
        out[key] = (free, forced)
    return out


# ---------------------------------------------------------------------------- the model itself
@pytest.mark.parametrize("key", MODELS)
def test_parameter_count_equals_the_analytic_count(key):
    spec = MODELS[key]
    weights = state_dict(spec)
    assert sum(t.numel() for t in weights.values()) == spec.num_parameters()
    assert sum(p.numel() for p in hf_model(spec).parameters()) == spec.num_parameters()


@pytest.mark.parametrize("key", MODELS)
def test_logits_equal_transformers(key, reference):
    """Every step's logits (prefill and decode with the cache) against one HF forward pass
    over prompt + forced tokens, same weights copied by name: <= 1e-4 relative in fp32."""
    spec = MODELS[key]
    _, forced = reference[key]
    seq = torch.cat([PROMPTS, FORCED[:, :-1]], dim=1)  # the tokens the executor consumed
    with torch.no_grad():
        ref = hf_model(spec)(seq).logits[:, PROMPT - 1:]  # (N, GEN, V): positions that predict
    assert forced.logits.shape == ref.shape
    assert _rel(forced.logits, ref) <= rounding_tolerance(spec)
    assert torch.equal(forced.logits.argmax(-1), torch.tensor(forced.tokens))


def test_greedy_tokens_equal_transformers_generate(reference):
    free, _ = reference["opt"]
    model = hf_model(OPT)
    with torch.no_grad():
        out = model.generate(PROMPTS, attention_mask=torch.ones_like(PROMPTS), max_new_tokens=GEN,
                             do_sample=False, pad_token_id=1)
    assert out[:, PROMPT:].tolist() == free.tokens


def test_checkpoint_folder_loads_by_name(tmp_path, reference):
    """A transformers save_pretrained folder (safetensors) loads by the HF names."""
    model = hf_model(LLAMA, seed=0)
    model.save_pretrained(tmp_path, safe_serialization=True)
    got = run_policy(LLAMA, WORKLOAD, BASE, prompt_ids=PROMPTS, checkpoint=str(tmp_path), seed=123,
                     return_logits=True)
    free, _ = reference["llama"]
    assert got.tokens == free.tokens
    assert _rel(got.logits, free.logits) <= rounding_tolerance(LLAMA)


def test_checkpoint_errors_name_the_tensor(tmp_path):
    from safetensors.torch import save_file

    weights = state_dict(OPT)
    weights.pop("model.decoder.layers.1.fc2.bias")
    save_file(weights, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelError, match="model.decoder.layers.1.fc2.bias"):
        run_policy(OPT, WORKLOAD, BASE, checkpoint=str(tmp_path / "missing.safetensors"))
    weights = state_dict(OPT)
    weights["model.decoder.final_layer_norm.weight"] = torch.zeros(65)
    save_file(weights, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ModelError, match=r"final_layer_norm.weight.*\(65,\)"):
        run_policy(OPT, WORKLOAD, BASE, checkpoint=str(tmp_path / "shape.safetensors"))
    with pytest.raises(ModelError, match="no such file"):
        run_policy(OPT, WORKLOAD, BASE, checkpoint=str(tmp_path / "nowhere"))


def test_random_weights_do_not_depend_on_order_or_placement():
    a, b = RandomWeights(LLAMA, seed=5), RandomWeights(LLAMA, seed=5)
    name = "model.layers.2.mlp.down_proj.weight"
    b.get("model.layers.0.self_attn.q_proj.weight", (64, 64))
    assert torch.equal(a.get(name, (64, 96)), b.get(name, (64, 96)))
    assert not torch.equal(a.get(name, (64, 96)), RandomWeights(LLAMA, seed=6).get(name, (64, 96)))


# ---------------------------------------------------------------------------- placements
PLACEMENTS = [
    # (label, policy changes)
    ("weights on cpu", dict(weights=P(0, 1, 0))),
    ("weights on disk", dict(weights=P(0, 0, 1))),
    ("weights split 3 ways", dict(weights=P(0.3, 0.4, 0.3))),
    ("cache on cpu", dict(cache=P(0, 1, 0))),
    ("cache on disk", dict(cache=P(0, 0, 1))),
    ("cache split 3 ways", dict(cache=P(0.25, 0.5, 0.25))),
    ("activations on cpu", dict(activations=P(0, 1, 0))),
    ("activations on disk", dict(activations=P(0, 0, 1))),
    ("activations split 3 ways", dict(activations=P(0.5, 0.25, 0.25))),
    ("cpu attention, cache on cpu", dict(cache=P(0, 1, 0), cpu_attention=True)),
    ("cpu attention, cache split", dict(cache=P(0.25, 0.5, 0.25), cpu_attention=True)),
    ("everything split, overlap", dict(weights=P(0.2, 0.5, 0.3), cache=P(0.25, 0.5, 0.25),
                                       activations=P(0.5, 0.25, 0.25), overlap=True)),
    ("everything split, overlap, cpu attention", dict(weights=P(0, 0.5, 0.5), cache=P(0, 0.75, 0.25),
                                                      activations=P(0, 0.5, 0.5), overlap=True,
                                                      cpu_attention=True)),
    ("1 x 8 batches, overlap", dict(gpu_batch_size=1, num_gpu_batches=8, weights=P(0, 1, 0),
                                    cache=P(0, 0.5, 0.5), activations=P(0, 1, 0), overlap=True)),
    ("8 x 1 batch, overlap", dict(gpu_batch_size=8, num_gpu_batches=1, weights=P(0.5, 0, 0.5),
                                  cache=P(0.5, 0.5, 0), activations=P(0, 0.5, 0.5), overlap=True)),
    ("2 x 2 blocks, page cache", dict(gpu_batch_size=2, num_gpu_batches=2, weights=P(0, 0, 1),
                                      cache=P(0, 0, 1), activations=P(0, 0, 1), disk_io="cached",
                                      overlap=True)),
]


@pytest.mark.parametrize("key", ["opt", "llama"])
@pytest.mark.parametrize("label,changes", PLACEMENTS, ids=[p[0] for p in PLACEMENTS])
def test_every_placement_generates_the_resident_tokens(key, label, changes, reference, tmp_path):
    spec = MODELS[key]
    free, _ = reference[key]
    got = run_policy(spec, WORKLOAD, BASE.with_(**changes), prompt_ids=PROMPTS, offload_dir=str(tmp_path),
                     return_logits=True)
    assert got.tokens == free.tokens
    assert _rel(got.logits, free.logits) <= rounding_tolerance(spec)
    assert not os.listdir(tmp_path)  # the offload directory is gone


def test_realized_placement_follows_the_shared_placement_functions():
    policy = BASE.with_(weights=P(0.3, 0.4, 0.3), cache=P(0.3, 0.5, 0.2), activations=P(0.4, 0.4, 0.2))
    got = run_policy(LLAMA, WORKLOAD, policy)
    sizes = [t.nbytes("fp32") for t in LLAMA.layer_tensors()]
    tiers = assign_tensors(sizes, policy.weights)
    row = LLAMA.hidden_size * 4
    head_rows = split_counts(LLAMA.vocab_size, policy.weights)  # embedding and LM head alike (untied)
    all_sizes = sizes * LLAMA.num_layers + [n * row for n in head_rows] * 2 + [row]  # + final norm (gpu)
    all_tiers = tiers * LLAMA.num_layers + [Tier.GPU, Tier.CPU, Tier.DISK] * 2 + [Tier.GPU]
    w = realized_placement(all_sizes, all_tiers)
    assert got.placement["weights"] == pytest.approx(
        {"gpu_frac": w.gpu_frac, "cpu_frac": w.cpu_frac, "disk_frac": w.disk_frac}, abs=1e-12)
    rows = split_counts(4 * LLAMA.num_kv_heads, policy.cache)  # 8 (sequence, kv head) rows per GPU batch
    assert got.placement["cache"] == pytest.approx(dict(zip(("gpu_frac", "cpu_frac", "disk_frac"),
                                                            [r / 8 for r in rows])))
    assert got.placement["activations"] == pytest.approx({"gpu_frac": 0.5, "cpu_frac": 0.25, "disk_frac": 0.25})


def test_multiple_blocks_run_one_after_another(reference):
    free, _ = reference["opt"]
    got = run_policy(OPT, WORKLOAD, BASE.with_(gpu_batch_size=2, num_gpu_batches=2, overlap=True),
                     prompt_ids=PROMPTS, return_logits=True)
    assert got.num_blocks == 2 and got.block_size == 4
    assert got.tokens == free.tokens
    with pytest.raises(PolicyError, match="multiple of the block size"):
        run_policy(OPT, Workload(PROMPT, GEN, num_sequences=6), BASE)


@pytest.mark.parametrize("prompt,gen", [(1, 3), (5, 1)])
def test_edge_lengths(prompt, gen):
    wl = Workload(prompt_len=prompt, gen_len=gen)
    policy = Policy(gpu_batch_size=2, dtype="fp32", cache=P(0, 1, 0), weights=P(0, 1, 0), overlap=False)
    got = run_policy(LLAMA, wl, policy, return_logits=True)
    ref = run_policy(LLAMA, wl, Policy(gpu_batch_size=2, dtype="fp32"), return_logits=True)
    assert got.tokens == ref.tokens and len(got.tokens[0]) == gen
    assert len(got.decode_step_s) == gen - 1
    assert (got.decode_throughput_tok_s is None) == (gen == 1)


def test_half_precision_stays_close_to_fp32(reference):
    _, forced = reference["llama"]
    for dtype, tol in (("fp16", 0.01), ("bf16", 0.05)):
        got = run_policy(LLAMA, WORKLOAD, BASE.with_(dtype=dtype, cache=P(0.5, 0.5, 0), cpu_attention=True),
                         prompt_ids=PROMPTS, force_tokens=FORCED, return_logits=True)
        assert _norm_rel(got.logits, forced.logits) <= tol, dtype


# ---------------------------------------------------------------------------- compression
def test_quantization_codec_layout_and_error_bound():
    x = torch.randn(3, 5, 130, generator=torch.Generator().manual_seed(0))
    p = quantize(x)
    assert p.dtype == torch.uint8 and p.shape == (3, 5, 3, 36)
    assert p.numel() == compression.packed_bytes(15, 130)
    y = dequantize(p, 130, torch.float32)
    # Each value is within half a quantization step (+ fp16 rounding of min and scale).
    scale = p[..., 34:36].contiguous().view(torch.float16).float()  # (3, 5, 3, 1)
    bound = torch.repeat_interleave(scale, 64, dim=-1).flatten(-2)[..., :130] * 0.5 + 2e-3 * x.abs() + 1e-3
    assert ((y - x).abs() <= bound).all()
    # Low nibble = element i, high nibble = element i + 32 of the group.
    codes = p[0, 0, 0, :32]
    q = torch.cat([codes & 15, codes >> 4])
    mn = p[0, 0, 0, 32:34].contiguous().view(torch.float16).float()
    assert torch.allclose(y[0, 0, :64], mn + q.float() * scale[0, 0, 0], atol=1e-3)
    const = dequantize(quantize(torch.full((2, 64), 0.75)), 64, torch.float32)
    assert torch.equal(const, torch.full((2, 64), 0.75))


def test_weight_compression_equals_the_dequantized_model():
    """A compressed-weights run computes exactly with the 4-bit weights: it matches HF
    holding the same quantized-then-dequantized matrices (<= 1e-4 relative)."""
    spec = OPT
    got = run_policy(spec, WORKLOAD, BASE.with_(compress_weights=True, weights=P(0.3, 0.4, 0.3)),
                     prompt_ids=PROMPTS, force_tokens=FORCED, return_logits=True)
    model = hf_model(spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(dequantize(quantize(p.float()), p.shape[1], torch.float32))
        ref = model(torch.cat([PROMPTS, FORCED[:, :-1]], dim=1)).logits[:, PROMPT - 1:]
    assert _rel(got.logits, ref) <= rounding_tolerance(spec)


# Group-wise 4-bit rounding of a Gaussian group of 64 (range ~ 4.8 sigma) leaves a relative
# RMS error of eps = (4.8 / 15) / sqrt(12) ~ 0.09 per value (the codec test measures 0.087).
# Independent errors add in quadrature, so logits drift by about eps x sqrt(number of
# quantized GEMMs on the path) for weights, and about eps for the cache (each attention
# output mixes K and V errors once). Bounds: 1.5x those figures. Token agreement is
# teacher-forced top-1 agreement; tiny random models have flat logits, so it is the weaker
# check (measured: cache 0.85-0.9, weights 0.52-0.73).
EPS_4BIT = 0.09


@pytest.mark.parametrize("key", ["opt", "llama"])
@pytest.mark.parametrize("what", ["cache", "weights", "both"])
def test_compressed_runs_stay_within_the_quantization_tolerance(key, what, reference, tmp_path):
    spec = MODELS[key]
    _, forced = reference[key]
    changes = {"cache": dict(compress_cache=True), "weights": dict(compress_weights=True),
               "both": dict(compress_cache=True, compress_weights=True, weights=P(0.3, 0.4, 0.3),
                            cache=P(0.25, 0.5, 0.25), activations=P(0, 0.5, 0.5), overlap=True)}[what]
    got = run_policy(spec, WORKLOAD, BASE.with_(**changes), prompt_ids=PROMPTS, force_tokens=FORCED,
                     return_logits=True, offload_dir=str(tmp_path))
    gemms = spec.num_layers * (5 if spec.is_opt else 6) + 1  # q, k|v, out, MLP (2 or 3), LM head
    if what == "cache":
        tol, agree = 1.5 * 2 * EPS_4BIT, 0.7
    else:
        tol, agree = 1.5 * EPS_4BIT * math.sqrt(gemms), 0.4
    err = _norm_rel(got.logits, forced.logits)
    assert 1e-3 < err <= tol  # compression really happened, and stayed within the bound
    assert (got.logits.argmax(-1) == forced.logits.argmax(-1)).float().mean() >= agree


def test_compressed_sizes_follow_the_compression_layout():
    policy = BASE.with_(compress_weights=True, compress_cache=True, weights=P(0, 1, 0), cache=P(0, 1, 0))
    got = run_policy(OPT, WORKLOAD, policy)
    plan = make_plan(OPT, WORKLOAD, policy)
    layer_int4 = OPT.layer_weight_bytes("int4")  # vectors counted at fp16 there, stored in fp32 here
    vectors_fp32 = sum(t.numel for t in OPT.layer_tensors() if not t.is_matrix) * 4
    assert plan.packs[Tier.CPU].nbytes == layer_int4 + vectors_fp32 // 2
    steps = GEN - 1
    weight_bytes = _bytes(got, "decode", Component.WEIGHT_LOAD, Resource.H2D) / steps
    assert weight_bytes == OPT.num_layers * (layer_int4 + vectors_fp32 // 2) + OPT.lm_head_tensor().nbytes("int4")
    kvc = OPT.kv_bytes_per_token(compressed=True)
    assert _bytes(got, "decode", Component.CACHE_STORE, Resource.D2H) == steps * N * kvc * OPT.num_layers


# ---------------------------------------------------------------------------- bytes moved vs the cost model
def _bytes(result, phase, component, resource) -> int:
    return sum(r["bytes"] for r in result.breakdown
               if (r["phase"], r["component"], r["resource"]) == (phase, component.value, resource.value))


def test_bytes_moved_are_the_cost_model_bytes():
    """Per layer and step the executor moves what simulator.cost charges: the offloaded
    weights once per block (one LM head load per step), the old cache per decode step, the
    new K/V, and the hidden states between layers (num_layers - 1 boundaries)."""
    spec, wl = LLAMA, WORKLOAD
    policy = BASE.with_(weights=P(0, 1, 0), cache=P(0, 1, 0), activations=P(0, 1, 0), overlap=True)
    got = run_policy(spec, wl, policy)
    L, e = spec.num_layers, 4
    kv = spec.kv_bytes_per_token("fp32")
    steps = wl.gen_len - 1
    per_block_weights = L * spec.layer_weight_bytes("fp32") + spec.lm_head_tensor().nbytes("fp32")
    blocks = got.num_blocks
    assert _bytes(got, "prefill", Component.WEIGHT_LOAD, Resource.H2D) == blocks * per_block_weights
    assert _bytes(got, "decode", Component.WEIGHT_LOAD, Resource.H2D) == blocks * steps * per_block_weights
    old = sum(N * (PROMPT + t - 1) * kv * L for t in range(1, wl.gen_len))
    assert _bytes(got, "decode", Component.CACHE_LOAD, Resource.H2D) == old
    assert _bytes(got, "prefill", Component.CACHE_STORE, Resource.D2H) == N * PROMPT * kv * L
    assert _bytes(got, "decode", Component.CACHE_STORE, Resource.D2H) == steps * N * kv * L
    hidden = spec.hidden_size * e
    assert _bytes(got, "prefill", Component.ACTIVATION_STORE, Resource.D2H) == (L - 1) * N * PROMPT * hidden
    assert _bytes(got, "decode", Component.ACTIVATION_LOAD, Resource.H2D) == (L - 1) * steps * N * hidden
    # CPU attention moves queries and outputs instead of the cache.
    catt = run_policy(spec, wl, policy.with_(cpu_attention=True))
    assert _bytes(catt, "decode", Component.CACHE_LOAD, Resource.H2D) == 0
    assert any(r["component"] == "attention" and r["resource"] == "cpu" and r["time_s"] > 0 for r in catt.breakdown)
    assert any(r["component"] == "attention_io" and r["resource"] == "d2h" for r in catt.breakdown)


def test_disk_reads_go_through_the_disk_lane(tmp_path):
    """Disk-resident weights cross the disk (whole aligned regions) and then the link."""
    policy = BASE.with_(weights=P(0, 0, 1), cache=P(0, 0, 1), activations=P(1, 0, 0))
    got = run_policy(OPT, WORKLOAD, policy, offload_dir=str(tmp_path))
    plan = make_plan(OPT, WORKLOAD, policy)
    layer, lm = plan.packs[Tier.DISK].nbytes, OPT.vocab_size * OPT.hidden_size * 4
    steps = GEN - 1
    assert _bytes(got, "decode", Component.WEIGHT_LOAD, Resource.H2D) == steps * (OPT.num_layers * layer + lm)
    assert _bytes(got, "decode", Component.WEIGHT_LOAD, Resource.DISK_READ) == \
        steps * (OPT.num_layers * storage.round_up(layer) + storage.round_up(lm))
    assert _bytes(got, "decode", Component.CACHE_STORE, Resource.DISK_WRITE) > 0
    assert _bytes(got, "decode", Component.CACHE_LOAD, Resource.DISK_READ) > 0
    assert got.peak_memory_bytes["disk"] == sum(plan.disk_bytes().values())


# ---------------------------------------------------------------------------- measurement and result
def test_result_is_json_ready_with_vocabulary_names(tmp_path):
    policy = BASE.with_(weights=P(0.5, 0.25, 0.25), cache=P(0.5, 0.5, 0), overlap=True)
    got = run_policy(OPT, WORKLOAD, policy, offload_dir=str(tmp_path),
                     bounds_bytes_per_s={"h2d": 10e9, "hbm": 100e9})
    d = json.loads(json.dumps(got.to_dict()))
    assert "logits" not in d
    components = {c.value for c in Component}
    assert {r["component"] for r in d["breakdown"]} <= components
    assert {r["resource"] for r in d["breakdown"]} <= {r.value for r in Resource}
    assert set(d["component_s"]) == {Phase.PREFILL.value, Phase.DECODE.value}
    for comp in ("weight_load", "cache_store", "matmul", "attention", "elementwise"):
        assert d["component_s"]["decode"][comp] > 0, comp
    assert d["component_s"]["decode"]["cache_load"] > 0
    assert len(d["decode_step_s"]) == GEN - 1 and all(s > 0 for s in d["decode_step_s"])
    assert d["decode_s"] == pytest.approx(sum(d["decode_step_s"]))
    assert d["total_s"] == pytest.approx(d["prefill_s"] + d["decode_s"])
    assert d["throughput_tok_s"] == pytest.approx(N * GEN / d["total_s"])
    assert d["decode_throughput_tok_s"] == pytest.approx(N * (GEN - 1) / d["decode_s"])
    assert d["peak_memory_bytes"]["disk"] > 0 and d["peak_memory_bytes"]["cpu"] > 0
    assert d["disk_io_mode_used"] in ("direct", "cached")
    assert d["compute_timing"] == "split"
    h2d = d["bandwidth"]["lanes"]["h2d"]
    assert h2d["achieved_bytes_per_s"] == pytest.approx(h2d["bytes_per_step"] / d["bandwidth"]["mean_decode_step_s"])
    assert h2d["bound_frac"] == pytest.approx(h2d["achieved_bytes_per_s"] / 10e9)
    assert "bound" in got.summary()
    coarse = run_policy(OPT, WORKLOAD, BASE, split_compute=False)
    assert set(coarse.component_s["decode"]) == {"compute"} and coarse.compute_timing == "coarse"


def test_disk_io_mode_is_reported(tmp_path, monkeypatch):
    policy = BASE.with_(weights=P(0, 0.5, 0.5))
    direct = run_policy(OPT, WORKLOAD, policy, offload_dir=str(tmp_path))
    assert direct.disk_io_mode_used == "direct" or any("O_DIRECT" in n for n in direct.notes)
    cached = run_policy(OPT, WORKLOAD, policy.with_(disk_io="cached"), offload_dir=str(tmp_path))
    assert cached.disk_io_mode_used == "cached" and not any("O_DIRECT" in n for n in cached.notes)
    real_open = os.open

    def no_direct(path, flags, *args, **kw):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(storage.os, "open", no_direct)
    fallback = run_policy(OPT, WORKLOAD, policy, offload_dir=str(tmp_path))
    assert fallback.disk_io_mode_used == "cached"
    assert any("O_DIRECT unavailable" in n and str(tmp_path) in n for n in fallback.notes)
    assert fallback.tokens == direct.tokens
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------- the offload directory
DISK_POLICY = BASE.with_(weights=P(0, 0.5, 0.5), cache=P(0, 0.5, 0.5), activations=P(0, 0.5, 0.5), overlap=True)


def _interrupt_at_layer(monkeypatch, exc, calls=5):
    real = layers.opt_layer
    seen = []

    def layer(*args, **kw):
        seen.append(1)
        if len(seen) == calls:
            if exc == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise exc
        return real(*args, **kw)

    monkeypatch.setattr(layers, "opt_layer", layer)


@pytest.mark.parametrize("exc,expect", [(RuntimeError("boom"), RuntimeError), (KeyboardInterrupt(), KeyboardInterrupt),
                                        ("sigterm", SystemExit)], ids=["exception", "ctrl-c", "sigterm"])
def test_offload_dir_is_removed_when_the_run_stops(exc, expect, tmp_path, monkeypatch):
    _interrupt_at_layer(monkeypatch, exc)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(expect):
        run_policy(OPT, WORKLOAD, DISK_POLICY, offload_dir=str(tmp_path))
    assert not os.listdir(tmp_path)
    assert signal.getsignal(signal.SIGTERM) == previous


def test_offload_dir_is_removed_after_success(tmp_path):
    got = run_policy(OPT, WORKLOAD, DISK_POLICY, offload_dir=str(tmp_path))
    assert got.peak_memory_bytes["disk"] > 0
    assert not os.listdir(tmp_path)


def test_too_small_offload_dir_is_refused_before_any_work(tmp_path, monkeypatch):
    class Usage:
        total, used, free = 10 ** 9, 10 ** 9 - 1000, 1000

    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: Usage)
    monkeypatch.setattr(RandomWeights, "get", lambda *a: pytest.fail("weights were generated"))
    need = sum(make_plan(OPT, WORKLOAD, DISK_POLICY).disk_bytes().values())
    with pytest.raises(OffloadSpaceError, match=rf"{tmp_path}.*{need} bytes.*only 1000 bytes"):
        run_policy(OPT, WORKLOAD, DISK_POLICY, offload_dir=str(tmp_path))
    assert not os.listdir(tmp_path)
    assert issubclass(OffloadSpaceError, LlmsimError)
    with pytest.raises(ExecutorError, match="not a directory"):
        run_policy(OPT, WORKLOAD, DISK_POLICY, offload_dir=str(tmp_path / "missing"))


# ---------------------------------------------------------------------------- refusals
def test_refusals_are_typed():
    with pytest.raises(UnsupportedModelError, match="Mixtral-style experts only") as e:
        run_policy(PRESETS["deepseek-v2"], WORKLOAD, BASE)
    assert isinstance(e.value, NotImplementedError)
    with pytest.raises(PolicyError, match="prompt_ids"):
        run_policy(OPT, WORKLOAD, BASE, prompt_ids=torch.zeros(N, PROMPT + 1, dtype=torch.long))
    with pytest.raises(PolicyError, match="max_position_embeddings"):
        run_policy(OPT, Workload(60, 10, N), BASE)
    if not torch.cuda.is_available():
        with pytest.raises(ExecutorError, match="CUDA is not available"):
            run_policy(OPT, WORKLOAD, BASE, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_matches_the_cpu_run(reference, tmp_path):
    free, _ = reference["llama"]
    for overlap in (False, True):
        got = run_policy(LLAMA, WORKLOAD, DISK_POLICY.with_(overlap=overlap, cpu_attention=True), device="cuda",
                         prompt_ids=PROMPTS, offload_dir=str(tmp_path), return_logits=True)
        assert _rel(got.logits, free.logits) <= 1e-3
        assert got.compute_timing == "coarse" and got.peak_memory_bytes["gpu"] > 0
