"""The accelerate and zero-inference engines: registry, invariants of their schedules,
placement rules, refusals, and the published anchors (T4: FlexGen paper Table 2; A6000:
shared/data/zero_inference_a6000.csv)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from simulator.cost import estimate
from simulator.engines import ENGINES, engine_names, get_engine
from simulator.engines.accelerate import layer_counts, realized_weights
from simulator.engines.published import A6000_WORKLOAD, read_runs
from simulator.errors import PolicyError
from simulator.hardware import list_profiles, load_profile
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload

W = Workload(prompt_len=512, gen_len=32)
GPU, CPU, DISK = Placement(1, 0, 0), Placement(0, 1, 0), Placement(0, 0, 1)
CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "zero_inference_a6000.csv"


def busy(est, component, resource, phase=None) -> float:
    return sum(r["time_s"] for r in est.breakdown if r["component"] == component and r["resource"] == resource
               and (phase is None or r["phase"] == phase))


# ------------------------------------------------------------------ registry
@pytest.mark.parametrize("name", ["accelerate", "zero-inference"])
def test_engine_registered_listed_and_described(name):
    assert name in engine_names()
    eng = get_engine(name)
    assert eng is ENGINES[name] and eng.name == name
    d = eng.describe()
    assert d["name"] == name and d["source"]
    for c in d["constants"]:
        assert c["source"] and math.isfinite(c["value"])


def test_zero_inference_option_pin_memory():
    assert get_engine("zero-inference").pin_memory is False  # run_model.py --pin-memory defaults to 0
    assert get_engine("zero-inference", pin_memory=True).pin_memory is True
    with pytest.raises(PolicyError, match="unknown option 'prefetch'"):
        get_engine("zero-inference", prefetch=3)


GPU_PROFILES = [p for p in list_profiles() if not load_profile(p).device_is_host]


@pytest.mark.parametrize("profile", GPU_PROFILES)
@pytest.mark.parametrize("name,policy", [
    ("accelerate", Policy(gpu_batch_size=4, weights=Placement(0.5, 0.5, 0.0))),
    ("zero-inference", Policy(gpu_batch_size=8, weights=CPU)),
    ("zero-inference", Policy(gpu_batch_size=8, weights=CPU, cache=CPU, compress_weights=True)),
])
def test_estimate_on_shipped_profiles(profile, name, policy):
    hw = load_profile(profile)
    if "fp16" not in hw.device.dtypes:  # a TPU rates bf16 only
        policy = policy.with_(dtype="bf16")
    est = estimate(get_model("opt-1.3b"), hw, W, policy, engine=name)
    assert est.engine == name and est.feasible, est.reason
    assert 0 < est.prefill_latency_s < est.total_latency_s and math.isfinite(est.throughput_tok_s)


# ------------------------------------------------------------------ accelerate
@pytest.mark.parametrize("weights", [GPU, Placement(0.4, 0.6, 0), Placement(0.2, 0.3, 0.5), DISK])
def test_accelerate_never_overlaps_time_is_the_sum_of_its_parts(weights):
    m, hw = get_model("opt-6.7b"), load_profile("t4-gcp")
    for overlap in (True, False):
        est = estimate(m, hw, W, Policy(gpu_batch_size=2, weights=weights, overlap=overlap), engine="accelerate")
        parts = sum(r["time_s"] for r in est.breakdown)
        assert est.total_latency_s == pytest.approx(parts, rel=1e-9)
        assert est.policy["overlap"] is False


def test_accelerate_realize_gives_whole_layers_gpu_first_head_on_gpu():
    m = get_model("opt-30b")
    layer, head = m.layer_weight_bytes("fp16"), m.head_weight_bytes("fp16")
    total = m.num_layers * layer + head
    for w in (Placement(0.33, 0.47, 0.2), Placement(0.0, 1.0, 0.0), Placement(0.05, 0.05, 0.9), GPU):
        real = realized_weights(m, w, "fp16")
        n_g, n_c, n_d = layer_counts(m, w, "fp16")
        assert n_g + n_c + n_d == m.num_layers
        for frac, n in ((real.cpu_frac, n_c), (real.disk_frac, n_d)):
            assert frac * total / layer == pytest.approx(n, abs=1e-9)  # whole layers
        assert real.gpu_frac * total == pytest.approx(n_g * layer + head, rel=1e-9)  # the head stays on the GPU
        assert abs(n_g * layer + head - w.gpu_frac * total) <= layer / 2 + head  # the nearest whole layer
    est = estimate(m, load_profile("a6000-zero"), W, Policy(gpu_batch_size=4, weights=Placement(0.33, 0.47, 0.2)),
                   engine="accelerate")
    assert est.requested_policy is not None and est.policy["weights"]["cpu_frac"] * total / layer == \
        pytest.approx(round(0.47 * total / layer), abs=1e-6)


def test_accelerate_more_weights_on_the_gpu_never_slower():
    m, hw = get_model("opt-13b"), load_profile("a6000-zero")
    L = m.num_layers
    layer, head = m.layer_weight_bytes("fp16"), m.head_weight_bytes("fp16")
    total = L * layer + head
    for io in ("direct", "cached"):
        times = []
        for n_gpu in range(0, L + 1, 5):  # move layers from the disk (and CPU) to the GPU
            n_cpu = (L - n_gpu) // 2
            g, c = (n_gpu * layer + head) / total, n_cpu * layer / total
            pol = Policy(gpu_batch_size=4, weights=Placement(g, c, 1 - g - c), disk_io=io)
            times.append(estimate(m, hw, W, pol, engine="accelerate").total_latency_s)
        assert all(b <= a * (1 + 1e-12) for a, b in zip(times, times[1:])), times
        assert times[-1] < times[0] / 5


def test_accelerate_cpu_weights_move_at_the_pageable_rate():
    """Unpinned CPU weights: the profile's pageable rate when it has one, else memcpy + pinned in series."""
    m = get_model("opt-1.3b")
    cpu_share = Policy(gpu_batch_size=1, weights=realized_weights(m, CPU, "fp16"))
    moved = m.num_layers * m.layer_weight_bytes("fp16")
    h100 = load_profile("h100-pcie5")
    est = estimate(m, h100, W, cpu_share, engine="accelerate")
    latency = m.num_layers * len(m.layer_tensors()) * h100.links.h2d_latency_s  # one copy per tensor
    per_pass = moved / h100.links.h2d_pageable_bytes_per_s + latency
    assert h100.links.h2d_latency_s > 0
    assert busy(est, "weight_load", "h2d") == pytest.approx(W.gen_len * per_pass, rel=1e-9)
    t4 = load_profile("t4-gcp")
    assert t4.links.h2d_pageable_bytes_per_s is None
    est = estimate(m, t4, W, cpu_share, engine="accelerate")
    relay = moved / t4.memcpy_bytes_per_s + moved / t4.links.h2d_bytes_per_s + t4.links.h2d_latency_s
    assert busy(est, "weight_load", "h2d") == pytest.approx(W.gen_len * relay, rel=1e-9)


def test_accelerate_t4_anchor():
    """FlexGen paper Table 2: HF Accelerate, OPT-6.7B on one T4, batch 2, all on the GPU, prompt
    512 + 32: 25.12 tok/s. The run is memory-bound; t4-gcp's device memory rate is the one
    derived from FlexGen's fitted decode-attention rate (237 GB/s, not the datasheet's 320):
    predicted 23.1 tok/s, -8%. Tolerance: the issue's 15% for a single published figure."""
    est = estimate(get_model("opt-6.7b"), load_profile("t4-gcp"), W, Policy(gpu_batch_size=2), engine="accelerate")
    ratio = est.throughput_tok_s / 25.12
    assert est.feasible and 0.85 <= ratio <= 1.15, ratio


# ------------------------------------------------------------------ zero-inference
ZI_CASES = [("opt-30b", 24, False, False), ("opt-66b", 16, True, False), ("opt-30b", 64, False, True),
            ("llama-2-70b", 32, True, True)]


@pytest.mark.parametrize("model,b,q4,kv", ZI_CASES)
@pytest.mark.parametrize("pin", [False, True])
def test_zero_inference_nvme_never_faster_than_cpu(model, b, q4, kv, pin):
    """NVMe weights go disk -> pinned swap buffer -> GPU, never faster than from CPU memory -
    except against *pageable* CPU weights with KV offload: a pageable copy holds the host
    thread that also runs the CPU attention, while the NVMe reads run on the aio threads."""
    m, hw = get_model(model), load_profile("a6000-zero")
    eng = get_engine("zero-inference", pin_memory=pin)
    cache = CPU if kv else GPU
    on_cpu = estimate(m, hw, W, Policy(gpu_batch_size=b, weights=CPU, cache=cache, compress_weights=q4), engine=eng)
    on_disk = estimate(m, hw, W, Policy(gpu_batch_size=b, weights=DISK, cache=cache, compress_weights=q4), engine=eng)
    if pin or not kv:
        assert on_disk.total_latency_s >= on_cpu.total_latency_s * (1 - 1e-12)
    else:
        assert busy(on_cpu, "weight_load", "host") > 0 and busy(on_disk, "weight_load", "host") == 0


@pytest.mark.parametrize("model,b,q4,kv", ZI_CASES)
def test_zero_inference_pinned_never_slower_and_gpu_weights_fastest(model, b, q4, kv):
    m, hw = get_model(model), load_profile("a6000-zero")
    pol = Policy(gpu_batch_size=b, weights=CPU, cache=CPU if kv else GPU, compress_weights=q4)
    pageable = estimate(m, hw, W, pol, engine="zero-inference").total_latency_s
    pinned = estimate(m, hw, W, pol, engine=get_engine("zero-inference", pin_memory=True)).total_latency_s
    resident = estimate(m, hw, W, pol.with_(weights=GPU), engine="zero-inference").total_latency_s
    assert resident <= pinned <= pageable


def test_zero_inference_four_bit_moves_the_packed_bytes_and_dequantizes_every_forward():
    m, hw = get_model("opt-30b"), load_profile("a6000-zero")
    eng = get_engine("zero-inference", pin_memory=True)
    fp16 = estimate(m, hw, W, Policy(gpu_batch_size=8, weights=CPU), engine=eng)
    q4 = estimate(m, hw, W, Policy(gpu_batch_size=8, weights=CPU, compress_weights=True), engine=eng)
    ratio = busy(q4, "weight_load", "h2d") / busy(fp16, "weight_load", "h2d")
    assert ratio == pytest.approx(36 / 128, rel=0.01)  # 36 bytes per 64 values vs 128 in fp16 (biases are persistent)
    assert busy(fp16, "compression", "gpu") == 0.0
    # one dequantization of every matrix per forward: the decode share is (gen_len - 1) x the prefill's
    assert busy(q4, "compression", "gpu", "decode") == pytest.approx(
        (W.gen_len - 1) * busy(q4, "compression", "gpu", "prefill"), rel=1e-9)


def test_zero_inference_kv_offload_attends_on_the_cpu_over_an_fp32_cache():
    m, hw = get_model("opt-30b"), load_profile("a6000-zero")
    b = 16
    gpu_cache = estimate(m, hw, W, Policy(gpu_batch_size=b, weights=CPU), engine="zero-inference")
    kv = estimate(m, hw, W, Policy(gpu_batch_size=b, weights=CPU, cache=CPU), engine="zero-inference")
    assert kv.policy["cpu_attention"] is True and kv.requested_policy is not None  # realized
    assert busy(kv, "attention", "cpu", "decode") > 0 and busy(kv, "attention", "gpu", "decode") == 0
    assert busy(gpu_cache, "attention", "cpu") == 0 and busy(gpu_cache, "attention", "gpu", "decode") > 0
    fp16_cache = b * (W.prompt_len + W.gen_len - 1) * m.kv_bytes_per_token("fp16") * m.num_layers
    extra_cpu = kv.peak_memory_bytes["cpu"] - gpu_cache.peak_memory_bytes["cpu"]
    assert extra_cpu == pytest.approx(2 * fp16_cache, rel=1e-9)  # the host cache is fp32
    assert gpu_cache.peak_memory_bytes["gpu"] - kv.peak_memory_bytes["gpu"] > 0.9 * fp16_cache


# ------------------------------------------------------------------ refusals
REFUSED = [
    ("accelerate", dict(cache=Placement(0.5, 0.5, 0)), "--cache 50,50,0"),
    ("accelerate", dict(activations=CPU), "--activations 0,100,0"),
    ("accelerate", dict(num_gpu_batches=2), "--num-gpu-batches 2"),
    ("accelerate", dict(compress_weights=True), "--compress-weights"),
    ("accelerate", dict(compress_cache=True), "--compress-cache"),
    ("accelerate", dict(cpu_attention=True), "--cpu-attention"),
    ("accelerate", dict(tp=2), "tp 2"),
    ("zero-inference", dict(weights=Placement(0.5, 0.5, 0)), "--weights 50,50,0"),
    ("zero-inference", dict(cache=DISK), "--cache 0,0,100"),
    ("zero-inference", dict(cache=Placement(0.5, 0.5, 0)), "--cache 50,50,0"),
    ("zero-inference", dict(activations=CPU), "--activations 0,100,0"),
    ("zero-inference", dict(num_gpu_batches=4), "--num-gpu-batches 4"),
    ("zero-inference", dict(compress_cache=True), "--compress-cache"),
    ("zero-inference", dict(cpu_attention=True), "--cpu-attention"),
    ("zero-inference", dict(weights=DISK, disk_io="cached"), "--disk-io cached"),
    ("zero-inference", dict(pp=2), "pp 2"),
]


@pytest.mark.parametrize("name,changes,named", REFUSED)
def test_bad_policies_refused_in_one_line(name, changes, named):
    pol = Policy(gpu_batch_size=4, **changes)
    hw = load_profile("dgx-a100-8x" if ("tp" in changes or "pp" in changes) else "a6000-zero")
    with pytest.raises(PolicyError) as exc:
        estimate(get_model("opt-1.3b"), hw, W, pol, engine=name)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"--engine {name}: ") and named in msg


def test_zero_inference_kv_offload_only_for_the_forked_families():
    with pytest.raises(PolicyError, match="--engine zero-inference: --cache 0,100,0: KV offload exists for OPT"):
        estimate(get_model("mistral-7b"), load_profile("a6000-zero"), W, Policy(cache=CPU), engine="zero-inference")


# ------------------------------------------------------------------ the A6000 anchors
RUNS = read_runs(CSV) if CSV.is_file() else []
# Tolerances the numbers support (ratio predicted / measured), with their causes:
# - every feasible run within 45%: a6000-zero's link and host rates are estimates; the pinned
#   runs are ~30% optimistic (they imply ~19.5 GB/s of pinned H2D where the profile assumes 25),
#   the pageable ones in either direction (the memcpy + pinned bound gives 8.1 GB/s; the
#   OPT-175B 4-bit and OPT-66B KV-offload runs imply ~14);
# - Llama-2-70B with KV offload at batch 200: 2.2x optimistic - repeat_kv writes 8x the fp32
#   cache into fresh pages per layer and step, whose page faults the profile has no rate for;
# - FlexGen's NVMe run: its numpy weight files read at ~1.8 GB/s effective, not the disk's 5.6;
# - FlexGen's three "quant4, no KV offload" rows carry the batch sizes of the README's
#   "quant4 + KV offload" row (280, 96, 40): with the cache on the GPU they cannot fit, and the
#   engine must say so.
BOUNDS = {("zero-inference", "llama-2-70b", True, True): (1.5, 2.5), ("flexgen", "opt-175b", False, True): (2.0, 4.0)}
DEFAULT_BOUND = (0.55, 1.45)


@pytest.mark.skipif(not RUNS, reason="shared/data/zero_inference_a6000.csv not present")
@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.label.replace(" ", "-"))
def test_a6000_published_runs(run):
    est = estimate(run.model, load_profile("a6000-zero"), A6000_WORKLOAD, run.policy(), engine=run.engine())
    if run.engine_name == "flexgen" and run.quant4 and not run.kv_offload:
        assert not est.feasible and est.reason.startswith("gpu memory")
        return
    assert est.feasible, est.reason
    lo, hi = BOUNDS.get((run.engine_name, run.model_name, run.quant4, run.kv_offload), DEFAULT_BOUND)
    ratio = est.throughput_tok_s / run.measured_tok_s
    assert lo <= ratio <= hi, f"{run.label}: predicted {est.throughput_tok_s:.2f} vs {run.measured_tok_s}"


@pytest.mark.skipif(not RUNS, reason="shared/data/zero_inference_a6000.csv not present")
def test_a6000_zero_inference_median_error():
    errs = [abs(estimate(r.model, load_profile("a6000-zero"), A6000_WORKLOAD, r.policy(), engine=r.engine())
                .throughput_tok_s / r.measured_tok_s - 1) for r in RUNS if r.engine_name == "zero-inference"]
    assert len(errs) == 12 and float(np.median(errs)) <= 0.32


# ------------------------------------------------------------------ generate holds the decode cache twice
# The ZeRO-Inference README's batch sizes with the cache on the GPU (4-bit weights on the CPU) are
# the best of its batch sweep: OPT-30B 24, OPT-66B 16, OPT-175B 8 (microsoft/DeepSpeedExamples@83757d9
# inference/huggingface/zero_inference/README.md). Each fits; twice each does not, because generate
# keeps the previous step's cache alive through the next forward (hf_eager.previous_cache_bytes):
# with one layer's copy counted instead, OPT-66B at 32 and OPT-175B at 16 fitted.
@pytest.mark.parametrize("model,best", [("opt-30b", 24), ("opt-66b", 16), ("opt-175b", 8)])
def test_zero_inference_gpu_cache_fits_the_published_batch_and_not_twice_it(model, best):
    hw, eng = load_profile("a6000-zero"), get_engine("zero-inference")
    pol = Policy(gpu_batch_size=best, weights=CPU, compress_weights=True)
    assert estimate(get_model(model), hw, W, pol, engine=eng).feasible
    twice = estimate(get_model(model), hw, W, pol.with_(gpu_batch_size=2 * best), engine=eng)
    assert not twice.feasible and twice.reason.startswith("gpu memory")


def test_previous_cache_is_the_whole_cache_less_one_token():
    """The decode phase's extra GPU bytes over the prefill's cache are the previous step's
    whole cache: b x (s + n - 2) x 2 x hidden x 2 bytes x layers for OPT in fp16."""
    from simulator.engines.hf_eager import previous_cache_bytes
    from simulator.memory import memory_sizes
    from simulator.terms import BatchShape
    m = get_model("opt-30b")
    z = memory_sizes(m, W, BatchShape.one(24, 1, False, False, False, "direct"), "fp16")
    expect = 24 * (512 + 32 - 2) * 2 * m.hidden_size * 2 * m.num_layers
    assert float(np.asarray(previous_cache_bytes(z)).ravel()[0]) == pytest.approx(expect, rel=1e-12)
