"""The policy search: the LP is the cost model, rounding is executable, bounds and
baselines behave, and the answer beats a brute-force grid on small cases."""

import itertools

import numpy as np
import pytest

from conftest import synthetic_profile
from simulator.cost import estimate
from simulator.terms import LATENCY_TERMS
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.placement import achievable_tensor_placements
from simulator.policy import Workload
from simulator.grid import grid_best
from simulator.search import SearchSpace, search

SMALL = SearchSpace(gpu_batch_sizes=(1, 4, 16, 64), num_gpu_batches=(1, 2, 4), dtype="fp16")


def _no_step_terms(hw):
    """The profile with every step term gone: no link latency, (almost) free kernel launches."""
    import dataclasses
    return dataclasses.replace(hw, links=dataclasses.replace(hw.links, h2d_latency_s=0.0, d2h_latency_s=0.0),
                               device=dataclasses.replace(hw.device, launch_s=1e-15))


@pytest.mark.parametrize("model,hw", [("opt-30b", "t4-gcp"), ("opt-175b", "t4-gcp"), ("llama-2-70b", "a100-80g-sxm"),
                                      ("opt-30b", "h100-pcie5")])
def test_lp_objective_equals_estimate_at_its_solution(model, hw):
    # Without step terms (link latency, per-tier dequantization launches) estimate() is
    # linear in the fractions and the LP's block time must equal estimate() of the relaxed
    # policy (one block).
    m, h = get_model(model), _no_step_terms(load_profile(hw))
    plan = search(m, h, Workload(512, 32), space=SearchSpace(dtype="fp16"), baselines=False)
    est = estimate(m, h, Workload(512, 32), plan.relaxed_policy)
    assert est.total_latency_s == pytest.approx(plan.lp_objective_s, rel=1e-6)
    assert plan.feasible and est.feasible


def test_lp_is_a_lower_bound_when_link_latency_is_measured():
    m, h = get_model("opt-30b"), load_profile("h100-pcie5")
    assert h.links.h2d_latency_s > 0
    wl = Workload(512, 32)
    plan = search(m, h, wl, space=SearchSpace(gpu_batch_sizes=(8, 32, 128), num_gpu_batches=(1, 4), dtype="fp16"),
                  baselines=False)
    est = estimate(m, h, wl, plan.relaxed_policy)
    # Each latency term is paid at most once per (cell, transfer) and step.
    nb = plan.relaxed_policy.num_gpu_batches
    step = max(h.links.h2d_latency_s, h.device.launch_s * 4)
    worst = (m.num_layers + 1) * (1 + wl.gen_len - 1) * len(LATENCY_TERMS) * nb * step
    assert plan.lp_objective_s <= est.total_latency_s * (1 + 1e-8)  # solver tolerance
    assert est.total_latency_s <= plan.lp_objective_s + worst


def test_rounded_policy_is_executable_and_close_to_relaxed():
    m, h = get_model("opt-175b"), load_profile("t4-gcp")
    plan = search(m, h, Workload(512, 32), baselines=False)
    p = plan.policy
    fmt = "int4" if p.compress_weights else "fp16"
    sizes = [t.nbytes(fmt) for t in m.layer_tensors()]
    options = [o.as_tuple() for o in achievable_tensor_placements(sizes)]
    assert any(np.allclose(p.weights.as_tuple(), o, atol=1e-12) for o in options)
    rows = p.gpu_batch_size * m.num_kv_heads
    for f in p.cache.as_tuple():
        assert abs(f * rows - round(f * rows)) < 1e-9
    for f in p.activations.as_tuple():
        assert abs(f * p.gpu_batch_size - round(f * p.gpu_batch_size)) < 1e-9
    assert plan.estimate.feasible
    # Rounding costs little here (whole tensors of a 96-layer model are fine-grained).
    assert plan.estimate.throughput_tok_s >= 0.97 * plan.relaxed_estimate.throughput_tok_s
    assert plan.estimate.throughput_tok_s <= plan.relaxed_estimate.throughput_tok_s * (1 + 1e-9)


@pytest.mark.parametrize("model,hw", [("opt-30b", "t4-gcp"), ("opt-6.7b", "h100-pcie5"), ("opt-175b", "t4-gcp"),
                                      ("llama-2-13b", "t4-gcp")])
def test_plan_beats_or_matches_every_baseline(model, hw):
    m, h = get_model(model), load_profile(hw)
    plan = search(m, h, Workload(512, 32))
    assert plan.feasible
    for name, (pol, est, note) in plan.baselines.items():
        if est is not None:
            assert plan.estimate.throughput_tok_s >= est.throughput_tok_s * (1 - 1e-6), name


def test_all_gpu_baseline_is_found_when_it_is_best():
    # OPT-6.7B fits the H100 at large batch: the plan keeps everything on the GPU and moves nothing.
    plan = search(get_model("opt-6.7b"), load_profile("h100-pcie5"), Workload(512, 32))
    p = plan.policy
    assert p.weights.gpu_frac == 1.0 and p.cache.gpu_frac == 1.0
    assert plan.estimate.throughput_tok_s == pytest.approx(plan.baselines["all_gpu"][1].throughput_tok_s, rel=1e-9)


def test_objective_latency_and_bounds():
    m, h, wl = get_model("opt-13b"), load_profile("t4-gcp"), Workload(256, 16)
    thr = search(m, h, wl, space=SMALL, baselines=False)
    lat = search(m, h, wl, objective="latency", space=SMALL, baselines=False)
    assert lat.estimate.total_latency_s < thr.estimate.total_latency_s
    assert thr.estimate.throughput_tok_s > lat.estimate.throughput_tok_s
    # A latency bound between the two is respected and costs throughput.
    bound = (lat.estimate.total_latency_s + thr.estimate.total_latency_s) / 2
    mid = search(m, h, wl, max_latency_s=bound, space=SMALL, baselines=False)
    assert mid.estimate.total_latency_s <= bound * (1 + 1e-9)
    assert lat.estimate.throughput_tok_s <= mid.estimate.throughput_tok_s <= thr.estimate.throughput_tok_s * (1 + 1e-9)
    floor = thr.estimate.throughput_tok_s * 0.5
    lo = search(m, h, wl, objective="latency", min_throughput_tok_s=floor, space=SMALL, baselines=False)
    assert lo.estimate.throughput_tok_s >= floor * (1 - 1e-9)
    impossible = search(m, h, wl, max_latency_s=lat.estimate.total_latency_s * 0.5, space=SMALL, baselines=False)
    assert not impossible.feasible and "no candidate meets the bounds" in impossible.reason


def test_nothing_fits_reports_shortfall():
    # 4-bit OPT-175B weights alone are 98 GB; the three tiers hold 80 GB together.
    h = load_profile("t4-gcp").with_capacity(gpu_bytes=16e9, cpu_bytes=32e9, disk_bytes=32e9)
    plan = search(get_model("opt-175b"), h, Workload(512, 32), space=SMALL)
    assert not plan.feasible and plan.policy is None
    assert plan.reason.startswith("nothing fits: gpu+cpu+disk together short by at least")
    assert "has 74.51)" in plan.reason  # 80e9 bytes = 74.51 GiB
    # A GPU too small for even one batch's working set names the GPU.
    tiny = load_profile("t4-gcp").with_capacity(gpu_bytes=1e8)
    plan = search(get_model("opt-175b"), tiny, Workload(512, 32), space=SMALL)
    assert not plan.feasible and "gpu memory short by at least" in plan.reason


def test_rounding_that_cannot_fit_says_so():
    # 98 GB of 4-bit weights in 16 + 32 + 64 GB: the LP splits each layer about 10/31/59%, but
    # whole tensors (q, k, v, out at 1/12 of a layer, fc1 and fc2 at 4/12) offer no split
    # near it that fits every tier, so there is no executable policy - and the plan says why.
    h = load_profile("t4-gcp").with_capacity(gpu_bytes=16e9, cpu_bytes=32e9, disk_bytes=64e9)
    plan = search(get_model("opt-175b"), h, Workload(512, 32), space=SMALL)
    assert not plan.feasible and plan.policy is None
    assert plan.relaxed_estimate.feasible
    assert "cannot be placed with whole tensors per layer within capacity" in plan.reason


def test_rounding_finds_a_feasible_split_when_capacity_is_tight_but_placeable():
    # The same model with room for a whole-tensor split: rounding must land inside capacity.
    h = load_profile("t4-gcp").with_capacity(gpu_bytes=16e9, cpu_bytes=64e9, disk_bytes=64e9)
    plan = search(get_model("opt-175b"), h, Workload(512, 32), space=SMALL)
    assert plan.feasible and plan.estimate.feasible
    for tier, cap in (("gpu", h.device.usable_bytes), ("cpu", 64e9), ("disk", 64e9)):
        assert plan.estimate.peak_memory_bytes[tier] <= cap


def test_solver_failure_falls_back(monkeypatch):
    import simulator.search as s
    m, h, wl = get_model("opt-13b"), load_profile("t4-gcp"), Workload(256, 16)
    ref = search(m, h, wl, space=SMALL, baselines=False)
    monkeypatch.setattr(s, "SOLVERS", ("NO_SUCH_SOLVER", "CLARABEL", "HIGHS"))
    plan = search(m, h, wl, space=SMALL, baselines=False)
    assert plan.solver_fallbacks and plan.solver_fallbacks[0].startswith("NO_SUCH_SOLVER")
    assert plan.estimate.throughput_tok_s == pytest.approx(ref.estimate.throughput_tok_s, rel=1e-4)
    monkeypatch.setattr(s, "SOLVERS", ("NO_SUCH_SOLVER",))
    from simulator.errors import SearchError
    with pytest.raises(SearchError, match="every solver failed"):
        search(m, h, wl, space=SMALL, baselines=False)


def test_search_beats_brute_force_grid_on_a_small_case():
    # Every candidate of a small space, each placement triple on a 10% grid, evaluated with
    # the cost model: the LP optimum must be at least as good within 0.5%; the rounded
    # (executable) plan loses what whole tensors cost on this 24-layer model.
    m = get_model("opt-1.3b")
    h = synthetic_profile(gpu={"memory_GiB": 2})
    wl = Workload(128, 8)
    space = SearchSpace(gpu_batch_sizes=(4, 16), num_gpu_batches=(1, 4), compress_weights=(False,),
                        compress_cache=(False,), dtype="fp16")
    plan = search(m, h, wl, space=space, baselines=False)
    g = grid_best(m, h, wl, space, steps=10)
    assert g["throughput_tok_s"] > 0
    assert plan.relaxed_estimate.throughput_tok_s >= g["throughput_tok_s"] * 0.995
    assert plan.estimate.throughput_tok_s >= g["throughput_tok_s"] * 0.97


def test_grid_pruning_is_exact():
    # The pruned grid equals an unpruned evaluation of every point (small grid).
    from simulator.grid import simplex_grid
    from simulator.search import shape_of
    from simulator.sweep import evaluate_arrays
    m, h, wl = get_model("opt-1.3b"), synthetic_profile(gpu={"memory_GiB": 2}), Workload(64, 4)
    space = SearchSpace(gpu_batch_sizes=(4, 16), num_gpu_batches=(1, 2), compress_weights=(False,),
                        compress_cache=(False,), dtype="fp16")
    g = grid_best(m, h, wl, space, steps=4)
    tri = simplex_grid(4)
    idx = np.array(list(itertools.product(range(len(tri)), repeat=3)))
    X = np.concatenate([np.ones((len(idx), 1)), tri[idx[:, 0]], tri[idx[:, 1]], tri[idx[:, 2]]], axis=1)
    cands = space.candidates()
    shapes = shape_of(cands)
    best = 0.0
    for i in range(len(cands)):
        ev = evaluate_arrays(m, h, wl, shapes, np.full(len(X), i), X, np.ones(len(X), bool), "fp16")
        best = max(best, float(np.where(ev.feasible, ev.throughput_tok_s, 0).max()))
    assert g["throughput_tok_s"] == pytest.approx(best, rel=1e-12)
    assert g["evaluated"] < len(X) * len(cands)  # and it did prune
