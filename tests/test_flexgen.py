"""The flexgen engine (simulator/engines/flexgen.py): FlexGen's placement rule, its prefetch
scope, its per-step syncs, what it refuses, and the published runs it must predict."""

from __future__ import annotations

import pytest

from helpers import run_cli
from simulator.cost import estimate
from simulator.engines import engine_names, get_engine
from simulator.engines.flexgen import flexgen_assign, flexgen_sublayer_tensors, realized_weights
from simulator.errors import PolicyError
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload

H100 = load_profile("h100-pcie5")
T4 = load_profile("t4-gcp")
OPT67 = get_model("opt-6.7b")
WL = Workload(512, 32)
C, G = Placement(0, 1, 0), Placement(1, 0, 0)


def test_registered_with_its_constants_sourced():
    eng = get_engine("flexgen")
    assert {"llmsim", "flexgen"} <= set(engine_names())
    assert eng.constants and all(c.source and c.unit for c in eng.constants)
    assert get_engine("flexgen", pin_weights=False) != eng and get_engine("flexgen", pin_weights=True) == eng
    with pytest.raises(PolicyError, match="unknown option 'pin'"):
        get_engine("flexgen", pin=1)


def test_midpoint_placement_follows_init_weight_list():
    """FlexGen orders tiers disk, CPU, GPU along each sub-layer's cumulative size: '20% on the
    GPU' of OPT-30B realizes as the attention's out_proj alone, 8.3% of the weights."""
    attn = [n for n, _ in flexgen_sublayer_tensors(get_model("opt-30b"))["attn"]]
    tiers = flexgen_assign(attn, Placement(0.2, 0.8, 0.0))
    assert tiers[6] == "gpu" and tiers[0] == tiers[2] == tiers[4] == "cpu"
    w = realized_weights(get_model("opt-30b"), Placement(0.2, 0.8, 0.0), compressed=False)
    assert w.gpu_frac == pytest.approx(0.083, abs=0.003) and w.disk_frac == 0.0
    # 50/50 splits every OPT sub-layer exactly in two (v, out / fc2 on the GPU)
    assert realized_weights(get_model("opt-13b"), Placement(0.5, 0.5, 0), False).gpu_frac == pytest.approx(0.5, abs=0.02)


def test_estimate_reports_the_realized_and_the_requested_placement():
    pol = Policy(gpu_batch_size=16, num_gpu_batches=2, weights=Placement(0.2, 0.8, 0), cache=C, activations=C,
                 cpu_attention=True)
    est = estimate(get_model("opt-30b"), T4, WL, pol, "flexgen")
    assert est.engine == "flexgen" and est.requested_policy["weights"]["gpu_frac"] == 0.2
    assert est.policy["weights"]["gpu_frac"] == pytest.approx(0.083, abs=0.003)


def test_prefetch_scope_makes_streamed_weights_slower_than_the_llmsim_executor():
    """FlexGen overlaps the next sub-layer's weights with GPU batch 0 only; llmsim's executor
    with the whole layer: with weights on the CPU and 4 GPU batches FlexGen is slower, and
    with one GPU batch the two schedules stream the same bytes."""
    pol = Policy(gpu_batch_size=32, num_gpu_batches=4, weights=C)
    fg, ll = estimate(OPT67, H100, WL, pol, "flexgen"), estimate(OPT67, H100, WL, pol, "llmsim")
    assert fg.decode_latency_s > 1.2 * ll.decode_latency_s
    assert fg.bottleneck == "h2d"


def test_every_step_pays_the_host_after_its_sync():
    """All on the GPU at batch 32 the H100 idles after each sync; the serial (no overlap) loop
    has no per-step syncs, so its decode is not slower than overlap's by the sync time."""
    est = estimate(OPT67, H100, WL, Policy(gpu_batch_size=32), "flexgen")
    sync = sum(r["time_s"] for r in est.breakdown if r["component"] == "synchronization")
    assert 0.25 * est.decode_latency_s < sync < 0.5 * est.decode_latency_s
    serial = estimate(OPT67, H100, WL, Policy(gpu_batch_size=32, overlap=False), "flexgen")
    assert serial.decode_latency_s < est.decode_latency_s


def test_unpinned_weights_relay_through_the_host_and_fewer_batch_times_the_first_step():
    pol = Policy(gpu_batch_size=16, num_gpu_batches=2, weights=C, cache=C, activations=C, cpu_attention=True)
    pinned = estimate(get_model("opt-30b"), T4, Workload(256, 32), pol, "flexgen")
    unpinned = estimate(get_model("opt-30b"), T4, Workload(256, 32), pol, get_engine("flexgen", pin_weights=False))
    assert unpinned.decode_latency_s > pinned.decode_latency_s
    # --debug fewer_batch: every decode step at the first step's (shortest) context
    fewer = estimate(get_model("opt-30b"), T4, Workload(256, 32), pol, get_engine("flexgen", decode_timing="fewer_batch"))
    assert fewer.decode_latency_s < pinned.decode_latency_s


def test_decompression_costs_what_the_h100_runs_measured():
    """The H100 file's 4-bit run (0.486 / 3.171 s) against the fp16 run (0.415 / 0.998 s): the
    prefill delta sets the constant, the decode delta (+2.17 s) checks it."""
    base = estimate(OPT67, H100, WL, Policy(gpu_batch_size=32), "flexgen")
    comp = estimate(OPT67, H100, WL, Policy(gpu_batch_size=32, compress_weights=True), "flexgen")
    assert comp.prefill_latency_s - base.prefill_latency_s == pytest.approx(0.071, rel=0.15)
    assert comp.decode_latency_s - base.decode_latency_s == pytest.approx(3.171 - 0.998, rel=0.15)


@pytest.mark.parametrize("model,policy,message", [
    ("llama-2-7b", Policy(), "runs OPT models only"),
    ("opt-6.7b", Policy(tp=2), "single-GPU runtime"),
    ("opt-6.7b", Policy(activations=Placement(0.5, 0.5, 0)), "wholly on one tier"),
    ("opt-6.7b", Policy(dtype="bf16"), "fp16 only"),
])
def test_what_flexgen_cannot_run_is_refused(model, policy, message):
    with pytest.raises(PolicyError, match=message):
        estimate(get_model(model), load_profile("dgx-h100-8x"), WL, policy, "flexgen")


def test_cli_engine_flag():
    code, out, err = run_cli("predict", "--engine", "flexgen", "--model", "opt-6.7b", "--hardware", "h100-pcie5",
                             "--weights", "100,0,0", "--cache", "100,0,0", "--activations", "100,0,0",
                             "--gpu-attention", "--gpu-batch-size", "32", "--num-gpu-batches", "1", "--json")
    assert code == 0, err
    import json
    d = json.loads(out)
    assert d["engine"] == "flexgen" and d["throughput_tok_s"] == pytest.approx(724.7, rel=0.15)
    code, out, err = run_cli("predict", "--engine", "vllm-classic")
    assert code == 2 and out == "" and err.count("\n") == 1 and "'vllm-classic' is not an engine" in err


def test_plan_searches_flexgens_own_policies():
    """search(engine="flexgen"): its LP is over FlexGen's terms; the rounded policy is one
    FlexGen can be asked for (integer percents, activations on one tier, a compressed cache
    on one tier) and its estimate is of FlexGen's realization of it."""
    from simulator.search import search
    plan = search(get_model("opt-30b"), T4, WL, engine="flexgen", compare=False)
    assert plan.feasible and plan.engine == "flexgen" and plan.policy.dtype == "fp16"
    pol = plan.policy
    assert all(abs(100 * v - round(100 * v)) < 1e-9 for v in pol.weights.as_tuple())
    assert sorted(pol.activations.as_tuple()) == [0.0, 0.0, 1.0]
    if pol.compress_cache:
        assert sorted(pol.cache.as_tuple()) == [0.0, 0.0, 1.0]
    est = estimate(get_model("opt-30b"), T4, WL, pol, "flexgen")
    assert est.throughput_tok_s == pytest.approx(plan.estimate.throughput_tok_s, rel=1e-12) and est.feasible
    # at least as good as the paper's own best policy for this case (48 x 3, 20/80 weights)
    paper = Policy(gpu_batch_size=48, num_gpu_batches=3, weights=Placement(0.2, 0.8, 0), cache=C, activations=C,
                   cpu_attention=True)
    assert est.throughput_tok_s >= estimate(get_model("opt-30b"), T4, WL, paper, "flexgen").throughput_tok_s


def test_plan_refuses_what_flexgen_cannot_run():
    from simulator.search import search
    with pytest.raises(PolicyError, match="runs OPT models only"):
        search(get_model("llama-2-7b"), T4, WL, engine="flexgen")
