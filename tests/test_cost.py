"""Hand-computed estimates for small cases; the arithmetic is written out in each test.

The synthetic profile (conftest.SYNTHETIC) has round numbers: h2d 10 GB/s, d2h 8 GB/s, both
directions 12 GB/s, disk 2 GB/s read (4 cached) / 1 GB/s write, CPU 20 GB/s and 100 GFLOP/s
(fp32), CPU operator overhead 2 us. "fast_gpu" makes GPU compute negligible so that a test
isolates transfers.
"""

import pytest

from conftest import synthetic_profile
from simulator.cost import estimate
from simulator.engines.llmsim import CPU_ATTENTION_OPS
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload
from simulator.units import GiB

OPT125 = get_model("opt-125m")
L = 12
W = 14_175_744  # one opt-125m layer in fp16: 7,087,872 parameters x 2 bytes
WH = 50272 * 768 * 2 + 2 * 768 * 2  # LM head (tied embedding) + final LayerNorm moved per pass
KV = 2 * 768 * 2  # K and V bytes per token per layer
GPU, CPU, DISK = Placement(1, 0, 0), Placement(0, 1, 0), Placement(0, 0, 1)


def fast_gpu(**over):
    # Compute a million times faster than any transfer: its share is < 1e-6 of each case.
    return synthetic_profile(gpu={"hbm_GBps": 1e9, "fp16_TFLOPs": 1e9, "kernel_launch_us": 1e-9}, **over)


def test_weight_streaming_decode_is_link_bound():
    wl = Workload(prompt_len=8, gen_len=5)
    est = estimate(OPT125, fast_gpu(), wl, Policy(gpu_batch_size=1, weights=CPU))
    per_pass = (L * W + WH) / 10e9  # every layer and the head cross the 10 GB/s link once
    assert est.prefill_latency_s == pytest.approx(per_pass, rel=1e-6)
    assert est.decode_latency_s == pytest.approx(4 * per_pass, rel=1e-6)
    assert est.throughput_tok_s == pytest.approx(1 * 5 / (5 * per_pass), rel=1e-6)
    assert est.decode_throughput_tok_s == pytest.approx(4 / (4 * per_pass), rel=1e-6)
    assert est.bottleneck == "h2d"
    rows = {(r["phase"], r["component"], r["resource"]): r["time_s"] for r in est.breakdown}
    assert rows[("decode", "weight_load", "h2d")] == pytest.approx(4 * per_pass)


def test_compute_bound_prefill_matches_model_flops():
    # HBM and launch negligible, 10 TFLOP/s: prefill = all FLOPs / peak.
    hw = synthetic_profile(gpu={"hbm_GBps": 1e9, "kernel_launch_us": 1e-9})
    b, s = 4, 64
    est = estimate(OPT125, hw, Workload(s, 1), Policy(gpu_batch_size=b))
    flop = b * L * OPT125.layer_flop_prefill(s) + b * OPT125.head_flop_per_token()
    h, f = 768, 3072
    assert flop == b * L * (2 * s * (4 * h * h + 2 * h * f) + 2 * s * (s + 1) * h) + b * 2 * h * 50272
    assert est.prefill_latency_s == pytest.approx(flop / 10e12, rel=1e-5)
    assert est.decode_latency_s == 0 and est.decode_throughput_tok_s is None
    assert est.bottleneck == "gpu"


def test_cpu_attention_decode_is_cpu_memory_bound():
    b, s, n = 4, 8, 5
    est = estimate(OPT125, fast_gpu(), Workload(s, n),
                   Policy(gpu_batch_size=b, cache=CPU, cpu_attention=True))
    # Per layer and step: the CPU reads b x ctx x KV bytes at 20 GB/s (memory-bound: 1 FLOP per
    # byte < 100 GFLOP/s / 20 GB/s) plus 4 operator calls of 2 us; ctx = s + t for t = 1..n-1.
    per_layer = [b * (s + t) * KV / 20e9 + CPU_ATTENTION_OPS * 2e-6 for t in range(1, n)]
    assert est.decode_latency_s == pytest.approx(L * sum(per_layer), rel=1e-5)  # + the GPU's ~1 ns
    assert est.bottleneck == "cpu"
    # Links carry only the new K/V and the queries (d2h) and attention outputs (h2d).
    rows = {(r["phase"], r["component"], r["resource"]): r["time_s"] for r in est.breakdown}
    assert rows[("decode", "attention_io", "h2d")] == pytest.approx((n - 1) * L * b * 768 * 2 / 10e9)
    assert rows[("decode", "cache_store", "d2h")] == pytest.approx((n - 1) * L * b * KV / 8e9)
    assert ("decode", "cache_load", "h2d") not in rows


def test_cache_on_cpu_without_cpu_attention_streams_the_cache():
    b, s, n = 2, 16, 3
    est = estimate(OPT125, fast_gpu(), Workload(s, n), Policy(gpu_batch_size=b, cache=CPU))
    # Each step loads the (ctx - 1) cached tokens of every layer over h2d; the new token's K/V goes
    # back over d2h (in parallel, smaller).
    loads = [L * b * (s + t - 1) * KV / 10e9 for t in range(1, n)]
    assert est.decode_latency_s == pytest.approx(sum(loads), rel=1e-5)


def test_no_overlap_adds_every_resource():
    b, s, n = 4, 8, 5
    pol = Policy(gpu_batch_size=b, cache=CPU, weights=Placement(0.5, 0.5, 0), cpu_attention=True, overlap=False)
    est = estimate(OPT125, synthetic_profile(), Workload(s, n), pol)
    busy = {ph: sum(r["time_s"] for r in est.breakdown if r["phase"] == ph) for ph in ("prefill", "decode")}
    assert est.prefill_latency_s == pytest.approx(busy["prefill"], rel=1e-12)
    assert est.decode_latency_s == pytest.approx(busy["decode"], rel=1e-12)
    overlapped = estimate(OPT125, synthetic_profile(), Workload(s, n), pol.with_(overlap=True))
    assert overlapped.total_latency_s < est.total_latency_s


def test_disk_weights_bound_by_disk_direct_or_cached():
    wl = Workload(8, 3)
    direct = estimate(OPT125, fast_gpu(), wl, Policy(weights=DISK))
    assert direct.decode_latency_s == pytest.approx(2 * (L * W + WH) / 2e9, rel=1e-6)  # 2 GB/s beats 10 GB/s h2d
    assert direct.bottleneck == "disk"
    cached = estimate(OPT125, fast_gpu(), wl, Policy(weights=DISK, disk_io="cached"))
    assert cached.decode_latency_s == pytest.approx(2 * (L * W + WH) / 4e9, rel=1e-6)
    assert direct.peak_memory_bytes["disk"] == pytest.approx(OPT125.weight_bytes("fp16"))


def test_both_link_directions_share_the_duplex_rate():
    # Prefill with activations and cache on the CPU: hidden states of A = s h 2 bytes cross
    # the L - 1 = 11 boundaries between layers, out (d2h) and back in (h2d); every layer
    # stores its new cache K = s KV (d2h). A steady layer: h2d A/10e9 = 1.2 us, d2h (A+K)/8e9
    # = 4.6 us, duplex (2A+K)/9e9 = 5.5 us -> duplex. The last layer only stores K: K/8e9.
    s = 8
    hw = fast_gpu(links={"duplex_pinned_GBps": 9})
    est = estimate(OPT125, hw, Workload(s, 1), Policy(cache=CPU, activations=CPU))
    A, K = s * 768 * 2, s * KV
    assert est.prefill_latency_s == pytest.approx(11 * (2 * A + K) / 9e9 + K / 8e9, rel=1e-5)
    assert est.bottleneck == "link_duplex"


def test_blocks_run_one_after_another():
    pol = Policy(gpu_batch_size=2, num_gpu_batches=2, weights=CPU)
    one = estimate(OPT125, synthetic_profile(), Workload(8, 4), pol)
    three = estimate(OPT125, synthetic_profile(), Workload(8, 4, num_sequences=12), pol)
    assert three.num_blocks == 3 and three.num_sequences == 12
    assert three.total_latency_s == pytest.approx(3 * one.total_latency_s)
    assert three.throughput_tok_s == pytest.approx(one.throughput_tok_s)


def test_compressed_weights_move_packed_bytes():
    est = estimate(OPT125, fast_gpu(), Workload(8, 3), Policy(weights=CPU, compress_weights=True))
    w4 = OPT125.layer_weight_bytes("int4")
    wh4 = 50272 * 12 * 36 + 2 * 768 * 2  # 768 / 64 = 12 groups of 36 bytes per row, + final LN
    rows = {(r["phase"], r["component"], r["resource"]): r["time_s"] for r in est.breakdown}
    assert rows[("decode", "weight_load", "h2d")] == pytest.approx(2 * (L * w4 + wh4) / 10e9, rel=1e-9)
    assert rows[("decode", "compression", "gpu")] > 0


def test_link_latency_charged_once_per_transfer():
    hw = fast_gpu(links={"h2d_latency_us": 100})
    est = estimate(OPT125, hw, Workload(8, 3), Policy(weights=CPU))
    assert est.decode_latency_s == pytest.approx(2 * (L * (W / 10e9 + 1e-4) + WH / 10e9 + 1e-4), rel=1e-6)
    resident = estimate(OPT125, hw, Workload(8, 3), Policy())
    assert resident.decode_latency_s < 1e-6  # nothing moves: no latency charged


def test_peak_memory_by_hand_all_on_gpu():
    b, s, n = 2, 8, 4
    est = estimate(OPT125, synthetic_profile(), Workload(s, n), Policy(gpu_batch_size=b))
    h, f, V = 768, 3072, 50272
    weights = L * W + (V * h + 2050 * h + 2 * h) * 2
    cache = b * (s + n - 1) * KV * L
    pre = (weights + cache + b * s * h * 2  # resident activations
           + b * s * (3 * h + 2 * h + 2 * h + f) * 2  # in-flight hidden, q/attn-out, k/v, MLP
           + b * s * 2 * h * 2 + b * V * 2)  # new K/V, logits
    dec = (weights + cache + b * h * 2 + b * (3 * h + 2 * h + 2 * h + f) * 2 + b * 2 * h * 2 + b * V * 2)
    # (attention is fused: no score matrix is materialised, on either phase)
    assert est.peak_memory_by_phase["prefill"]["gpu"] == pytest.approx(pre)
    assert est.peak_memory_by_phase["decode"]["gpu"] == pytest.approx(dec)
    assert est.peak_memory_bytes["cpu"] == 0 and est.peak_memory_bytes["disk"] == 0


def test_streaming_buffers_counted_on_gpu():
    est = estimate(OPT125, synthetic_profile(), Workload(8, 2), Policy(weights=CPU))
    resident = estimate(OPT125, synthetic_profile(), Workload(8, 2), Policy())
    # The GPU drops all weights but keeps two layers in flight and the streamed LM head.
    head_all = (50272 * 768 + 2050 * 768 + 2 * 768) * 2
    diff = resident.peak_memory_bytes["gpu"] - est.peak_memory_bytes["gpu"]
    assert diff == pytest.approx(L * W + head_all - 2 * W - 50272 * 768 * 2)
    assert est.peak_memory_bytes["cpu"] == pytest.approx(L * W + head_all)


def test_infeasible_names_tier_and_shortfall():
    est = estimate(get_model("opt-175b"), synthetic_profile(), Workload(128, 8), Policy())
    assert not est.feasible
    assert est.reason.startswith("gpu memory: needs ")
    assert "has 16.00 GiB (short by" in est.reason
    need = est.peak_memory_bytes["gpu"] / GiB
    assert f"needs {need:.2f} GiB" in est.reason


def test_cpu_only_machine_pools_gpu_and_cpu_tiers():
    hw = synthetic_profile(gpu=None, links=None, cpu={"memory_GiB": 1})
    wl = Workload(8, 2)
    half = Placement(0.5, 0.5, 0)
    est = estimate(get_model("opt-1.3b"), hw, wl, Policy(weights=half, dtype="fp32"))  # 5.3 GB > 1 GiB RAM
    assert not est.feasible
    assert est.reason.startswith("cpu (host RAM, shared with the gpu tier")
    # Moving data between the tiers is a memcpy at 5 GB/s.
    # Moving data between the tiers is a memcpy at 5 GB/s; the host computes in fp32.
    ok = estimate(OPT125, synthetic_profile(gpu=None, links=None), wl, Policy(weights=CPU, dtype="fp32"))
    rows = {(r["phase"], r["component"], r["resource"]): r["time_s"] for r in ok.breakdown}
    assert rows[("decode", "weight_load", "h2d")] == pytest.approx(2 * (L * W + WH) / 5e9)
    from simulator.errors import ProfileError
    with pytest.raises(ProfileError, match=r"cpu.fp16_GFLOPs is needed for fp16 compute"):
        estimate(OPT125, synthetic_profile(gpu=None, links=None), wl, Policy())


def test_context_longer_than_model_rejected():
    from simulator.errors import PolicyError
    with pytest.raises(PolicyError, match="exceeds opt-125m's max_position_embeddings 2048"):
        estimate(OPT125, synthetic_profile(), Workload(2000, 100), Policy())
