"""Invariants of the cost model, checked on random cases with hypothesis."""

import dataclasses

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.cost import estimate
from simulator.engines.llmsim import DEQUANT_KERNELS_PER_TIER
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload

MODELS = [get_model(n) for n in ("opt-1.3b", "opt-13b", "llama-2-7b", "llama-2-70b", "mixtral-8x7b")]
PROFILES = [load_profile(n) for n in ("t4-gcp", "a100-80g-sxm", "h100-pcie5")]


@st.composite
def placements(draw):
    a = draw(st.integers(0, 20))
    b = draw(st.integers(0, 20 - a))
    return Placement(a / 20, b / 20, (20 - a - b) / 20)


@st.composite
def cases(draw):
    model = draw(st.sampled_from(MODELS))
    hw = draw(st.sampled_from(PROFILES))
    cpu_att = draw(st.booleans())
    policy = Policy(
        gpu_batch_size=draw(st.integers(1, 64)), num_gpu_batches=draw(st.integers(1, 8)),
        weights=draw(placements()), cache=draw(placements()), activations=draw(placements()),
        cpu_attention=cpu_att, compress_weights=draw(st.booleans()),
        compress_cache=draw(st.booleans()) and not cpu_att, overlap=draw(st.booleans()),
        dtype="bf16" if model.dtype == "bf16" and "bf16" in hw.device.dtypes else "fp16")
    wl = Workload(draw(st.integers(1, 1024)), draw(st.integers(1, 64)))
    return model, hw, wl, policy


def _scaled_links(hw, k):
    links = dataclasses.replace(hw.links, h2d_bytes_per_s=hw.links.h2d_bytes_per_s * k,
                                d2h_bytes_per_s=hw.links.d2h_bytes_per_s * k,
                                duplex_bytes_per_s=hw.links.duplex_bytes_per_s * k)
    return dataclasses.replace(hw, links=links)


@settings(max_examples=150, deadline=None)
@given(cases(), st.floats(1.0, 20.0))
def test_more_link_bandwidth_never_slower(case, k):
    model, hw, wl, pol = case
    base = estimate(model, hw, wl, pol)
    fast = estimate(model, _scaled_links(hw, k), wl, pol)
    assert fast.prefill_latency_s <= base.prefill_latency_s * (1 + 1e-12)
    assert fast.decode_latency_s <= base.decode_latency_s * (1 + 1e-12)


@settings(max_examples=150, deadline=None)
@given(cases(), st.floats(0.0, 1.0))
def test_moving_weights_from_gpu_to_cpu_never_faster(case, share):
    """Holds for every move that leaves weights on the GPU. Emptying the GPU tier of
    compressed weights drops that tier's dequantization launches (a real step the executor
    skips), which test_emptying_the_gpu_tier_drops_its_dequant_launches pins exactly."""
    model, hw, wl, pol = case
    w = pol.weights
    if pol.compress_weights:
        share = min(share, 0.95)
    moved = share * w.gpu_frac
    pol2 = pol.with_(weights=Placement(w.gpu_frac - moved, w.cpu_frac + moved, w.disk_frac))
    a, b = estimate(model, hw, wl, pol), estimate(model, hw, wl, pol2)
    assert b.decode_latency_s >= a.decode_latency_s * (1 - 1e-12)
    assert b.prefill_latency_s >= a.prefill_latency_s * (1 - 1e-12)


def test_emptying_the_gpu_tier_drops_its_dequant_launches():
    # OPT-1.3B, 4-bit weights: half on the GPU and half on the CPU is two source tiers, all on
    # the CPU is one. The dequantized bytes are the same; only the GPU tier's launches go,
    # once per layer pass and head pass (24 + 1), per prefill and per decode step (3).
    model, hw = get_model("opt-1.3b"), load_profile("h100-pcie5")
    wl = Workload(prompt_len=64, gen_len=4)
    base = Policy(gpu_batch_size=4, num_gpu_batches=2, compress_weights=True, overlap=False)

    def compression_s(placement):
        e = estimate(model, hw, wl, base.with_(weights=placement))
        return {r["phase"]: r["time_s"] for r in e.breakdown if r["component"] == "compression"}

    two, one = compression_s(Placement(0.5, 0.5, 0)), compression_s(Placement(0, 1, 0))
    pass_s = (model.num_layers + 1) * DEQUANT_KERNELS_PER_TIER * hw.device.launch_s
    assert two["prefill"] - one["prefill"] == pytest.approx(pass_s, rel=1e-9)
    assert two["decode"] - one["decode"] == pytest.approx((wl.gen_len - 1) * pass_s, rel=1e-9)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_overlap_never_slower(case):
    model, hw, wl, pol = case
    on = estimate(model, hw, wl, pol.with_(overlap=True))
    off = estimate(model, hw, wl, pol.with_(overlap=False))
    assert on.total_latency_s <= off.total_latency_s * (1 + 1e-12)
    assert on.peak_memory_bytes == off.peak_memory_bytes


@settings(max_examples=150, deadline=None)
@given(cases(), st.integers(1, 64))
def test_peak_memory_monotone_in_batch_size(case, extra):
    model, hw, wl, pol = case
    small = estimate(model, hw, wl, pol)
    big = estimate(model, hw, wl, pol.with_(gpu_batch_size=pol.gpu_batch_size + extra))
    for phase in ("prefill", "decode"):
        for tier in ("gpu", "cpu", "disk"):
            assert big.peak_memory_by_phase[phase][tier] >= small.peak_memory_by_phase[phase][tier] * (1 - 1e-12)


@settings(max_examples=100, deadline=None)
@given(cases())
def test_latencies_positive_and_throughput_consistent(case):
    model, hw, wl, pol = case
    e = estimate(model, hw, wl, pol)
    assert e.prefill_latency_s > 0 and e.decode_latency_s >= 0
    assert e.total_latency_s == e.prefill_latency_s + e.decode_latency_s
    assert abs(e.throughput_tok_s * e.total_latency_s - e.num_sequences * wl.gen_len) < 1e-6 * e.num_sequences * wl.gen_len
    assert e.feasible == (e.reason == "")
