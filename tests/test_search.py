"""The policy search: the LP is the cost model, rounding is executable, bounds and
engine comparison holds, and the answer beats a brute-force grid on small cases."""

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
    plan = search(m, h, Workload(512, 32), space=SearchSpace(dtype="fp16"), compare=False)
    est = estimate(m, h, Workload(512, 32), plan.relaxed_policy)
    assert est.total_latency_s == pytest.approx(plan.lp_objective_s, rel=1e-6)
    assert plan.feasible and est.feasible


@pytest.mark.parametrize("model,hw,gpus", [("opt-1.3b", "cpu-2core", 1), ("llama-2-13b", "dgx-a100-8x", 4)])
def test_lp_objective_equals_estimate_in_the_chosen_dtype_and_layout(model, hw, gpus):
    # The same identity when the search picks the dtype (bf16 on cpu-2core) and the layout.
    m, h = get_model(model), _no_step_terms(load_profile(hw))
    space = SearchSpace(gpu_batch_sizes=(4, 16, 64), num_gpu_batches=(1, 4))
    plan = search(m, h, Workload(256, 16), space=space, compare=False, gpus=gpus)
    assert len(plan.dtype_choice["searched"]) == 3
    est = estimate(m, h, Workload(256, 16), plan.relaxed_policy)
    blocks = est.num_blocks
    assert est.total_latency_s == pytest.approx(plan.lp_objective_s * blocks, rel=1e-6)
    assert plan.feasible and est.feasible


def test_lp_is_a_lower_bound_when_link_latency_is_measured():
    m, h = get_model("opt-30b"), load_profile("h100-pcie5")
    assert h.links.h2d_latency_s > 0
    wl = Workload(512, 32)
    plan = search(m, h, wl, space=SearchSpace(gpu_batch_sizes=(8, 32, 128), num_gpu_batches=(1, 4), dtype="fp16"),
                  compare=False)
    est = estimate(m, h, wl, plan.relaxed_policy)
    # Each latency term is paid at most once per (cell, transfer) and step.
    nb = plan.relaxed_policy.num_gpu_batches
    step = max(h.links.h2d_latency_s, h.device.launch_s * 4)
    worst = (m.num_layers + 1) * (1 + wl.gen_len - 1) * len(LATENCY_TERMS) * nb * step
    assert plan.lp_objective_s <= est.total_latency_s * (1 + 1e-8)  # solver tolerance
    assert est.total_latency_s <= plan.lp_objective_s + worst


def test_rounded_policy_is_executable_and_close_to_relaxed():
    m, h = get_model("opt-175b"), load_profile("t4-gcp")
    plan = search(m, h, Workload(512, 32), compare=False)
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


@pytest.mark.parametrize("model,hw", [("opt-30b", "t4-gcp"), ("opt-6.7b", "h100-pcie5"), ("llama-2-13b", "t4-gcp")])
def test_plan_compares_every_engine_on_the_same_inputs(model, hw):
    """plan = the chosen engine's best; Plan.engines = every other engine's best on the same
    model, machine and workload, each as its own search finds it (or the one-line reason it
    cannot run the case); the llmsim executor, which overlaps a layer's transfers with all of
    its compute, is never slower than Accelerate's serial hooks."""
    from simulator.engines import engine_names, get_engine
    m, h, wl = get_model(model), load_profile(hw), Workload(512, 32)
    plan = search(m, h, wl)
    assert plan.feasible and plan.engine == "llmsim"
    assert set(plan.engines) == {n for n in engine_names() if get_engine(n).in_comparison} - {"llmsim"}
    for name, other in plan.engines.items():
        assert other.engine == name
        if other.feasible:
            alone = search(m, h, wl, engine=name, compare=False)
            assert other.estimate.throughput_tok_s == pytest.approx(alone.estimate.throughput_tok_s, rel=1e-9)
        else:
            assert other.reason
    if m.is_opt:
        assert plan.engines["flexgen"].feasible
    else:
        assert "runs OPT models only" in plan.engines["flexgen"].reason
    acc = plan.engines["accelerate"]
    if acc.feasible:
        assert plan.estimate.throughput_tok_s >= acc.estimate.throughput_tok_s


def test_everything_on_the_gpu_when_it_fits():
    # OPT-6.7B fits the H100 at large batch: the plan keeps everything on the GPU and moves nothing.
    plan = search(get_model("opt-6.7b"), load_profile("h100-pcie5"), Workload(512, 32), compare=False)
    p = plan.policy
    assert p.weights.gpu_frac == 1.0 and p.cache.gpu_frac == 1.0 and p.activations.gpu_frac == 1.0
    assert not any(r["component"].endswith("_load") for r in plan.estimate.breakdown)


def test_objective_latency_and_bounds():
    m, h, wl = get_model("opt-13b"), load_profile("t4-gcp"), Workload(256, 16)
    thr = search(m, h, wl, space=SMALL, compare=False)
    lat = search(m, h, wl, objective="latency", space=SMALL, compare=False)
    assert lat.estimate.total_latency_s < thr.estimate.total_latency_s
    assert thr.estimate.throughput_tok_s > lat.estimate.throughput_tok_s
    # A latency bound between the two is respected and costs throughput.
    bound = (lat.estimate.total_latency_s + thr.estimate.total_latency_s) / 2
    mid = search(m, h, wl, max_latency_s=bound, space=SMALL, compare=False)
    assert mid.estimate.total_latency_s <= bound * (1 + 1e-9)
    assert lat.estimate.throughput_tok_s <= mid.estimate.throughput_tok_s <= thr.estimate.throughput_tok_s * (1 + 1e-9)
    floor = thr.estimate.throughput_tok_s * 0.5
    lo = search(m, h, wl, objective="latency", min_throughput_tok_s=floor, space=SMALL, compare=False)
    assert lo.estimate.throughput_tok_s >= floor * (1 - 1e-9)
    impossible = search(m, h, wl, max_latency_s=lat.estimate.total_latency_s * 0.5, space=SMALL, compare=False)
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
    ref = search(m, h, wl, space=SMALL, compare=False)
    monkeypatch.setattr(s, "SOLVERS", ("NO_SUCH_SOLVER", "CLARABEL", "HIGHS"))
    plan = search(m, h, wl, space=SMALL, compare=False)
    assert plan.solver_fallbacks and plan.solver_fallbacks[0].startswith("NO_SUCH_SOLVER")
    # Clarabel (interior point) and HiGHS (simplex) return different optima of a degenerate
    # LP; the roundings of different optima differ a little (measured 0.2%), never more than
    # the rounding's own loss.
    assert plan.estimate.throughput_tok_s == pytest.approx(ref.estimate.throughput_tok_s, rel=0.01)
    monkeypatch.setattr(s, "SOLVERS", ("NO_SUCH_SOLVER",))
    from simulator.errors import SearchError
    with pytest.raises(SearchError, match="every solver failed"):
        search(m, h, wl, space=SMALL, compare=False)


def test_search_beats_brute_force_grid_on_a_small_case():
    # Every candidate of a small space, each placement triple on a 10% grid, evaluated with
    # the cost model: the LP optimum must be at least as good within 0.5%; the rounded
    # (executable) plan loses what whole tensors cost on this 24-layer model.
    m = get_model("opt-1.3b")
    h = synthetic_profile(gpu={"memory_GiB": 2})
    wl = Workload(128, 8)
    space = SearchSpace(gpu_batch_sizes=(4, 16), num_gpu_batches=(1, 4), compress_weights=(False,),
                        compress_cache=(False,), dtype="fp16")
    plan = search(m, h, wl, space=space, compare=False)
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


# ------------------------------------------------------------------ the LP solvers
def _lp_cases(model="opt-30b", hw="t4-gcp", space=SMALL):
    """LPData of every candidate of a small search space, with its simplex bound."""
    from simulator.cost import build_terms, cell_weights
    from simulator.search import lp_data, shape_of
    m, h = get_model(model), load_profile(hw)
    cands = space.candidates()
    T = build_terms(m, h, Workload(512, 32), shape_of(cands), space.dtype or "fp16")
    cw = cell_weights(T)
    return [lp_data(T.chan_lin[p], T.mem[p], T.capacity_bytes, T.shared_host_pool, cw[p]) for p in range(len(cands))]


def test_direct_highs_and_the_cvxpy_formulation_reach_the_same_optimum():
    # HighsLP passes LPData to HiGHS itself; PlacementLP is the cvxpy formulation of record.
    # Same optimum (and the same infeasible ones) with and without a latency bound, with and
    # without fixed weights, against two cvxpy solvers.
    from simulator.search import HighsLP, placement_lp
    cases = _lp_cases()
    direct = HighsLP()
    both_feasible = infeasible = 0
    for k, d in enumerate(cases[::3]):
        for bound, fixed in ((None, None), (None, np.array([0.0, 0.5, 0.5])), (50.0, None)):
            st, sol = direct.solve(d, bound, fixed)
            for solver in ("CLARABEL", "HIGHS"):
                st2, sol2 = placement_lp(d.num_cells, bound is not None, fixed is not None).solve(d, bound, fixed,
                                                                                                 solver)
                assert st == st2, (k, bound, fixed, solver)
                if st == "optimal":
                    assert sol.value_s == pytest.approx(sol2.value_s, rel=1e-6)
            both_feasible += st == "optimal"
            infeasible += st == "infeasible"
    assert both_feasible >= 10 and infeasible >= 3  # the comparison covered both outcomes


def test_dual_certificate_is_tight_on_its_own_lp_and_a_lower_bound_on_others():
    from simulator.search import HighsLP
    cases = _lp_cases("opt-175b", "t4-gcp")
    direct = HighsLP()
    sols = [(d, direct.solve(d, None, None)[1]) for d in cases]
    sols = [(d, s) for d, s in sols if s is not None]
    assert len(sols) >= 20
    rng = np.random.default_rng(7)
    tight = 0
    for d, s in sols:
        # Strong duality: the LP's own duals give back its optimum.
        assert s.certificate.bound_s(d, s.certificate.scale_s) == pytest.approx(s.value_s, rel=1e-6)
        tight += 1
        # Weak duality: any other candidate's duals, at any memory scale, bound it from below.
        for j in rng.choice(len(sols), 5, replace=False):
            cert = sols[j][1].certificate
            for scale in (0.0, 1.0, cert.scale_s, 10 * cert.scale_s):
                assert cert.bound_s(d, scale) <= s.value_s * (1 + 1e-9)
    assert tight == len(sols)


def test_every_solver_failing_is_one_readable_line(monkeypatch):
    import simulator.search as s
    from simulator.errors import SearchError
    m, h, wl = get_model("opt-13b"), load_profile("t4-gcp"), Workload(256, 16)
    monkeypatch.setattr(s, "SOLVERS", ("NO_SUCH_SOLVER", "ALSO_MISSING"))
    with pytest.raises(SearchError) as e:
        search(m, h, wl, space=SMALL, compare=False)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300
    assert msg.startswith("every solver failed on the LP of batch ")
    assert msg.endswith(": NO_SUCH_SOLVER not installed, ALSO_MISSING not installed")
    assert "fp16" in msg and "cvxpy" not in msg.lower()


def test_a_highs_status_failure_falls_back_to_cvxpy(monkeypatch):
    import simulator.search as s
    m, h, wl = get_model("opt-13b"), load_profile("t4-gcp"), Workload(256, 16)
    ref = search(m, h, wl, space=SMALL, compare=False)
    monkeypatch.setattr(s.HighsLP, "solve", lambda self, *a, **k: ("status Solve error", None))
    monkeypatch.setattr(s, "SOLVERS", ("HIGHS", "CLARABEL"))
    plan = search(m, h, wl, space=SMALL, compare=False)
    assert plan.solver_fallbacks[0].startswith("HIGHS status Solve error on batch ")
    assert plan.solver_fallbacks[0].endswith("; CLARABEL answered")
    # Clarabel (interior point) and HiGHS (simplex) return different optima of a degenerate
    # LP; the roundings of different optima differ a little (measured 0.2%), never more than
    # the rounding's own loss.
    assert plan.estimate.throughput_tok_s == pytest.approx(ref.estimate.throughput_tok_s, rel=0.01)


# ------------------------------------------------------------------ dtypes
def test_search_chooses_bf16_where_the_profile_rates_it_fastest():
    # cpu-2core measured bf16 GEMMs (AMX) several times faster than fp32, and fp16 only has
    # a peak: the search must leave opt-125m's fp16 for bf16, and say why.
    from simulator.report import dtype_text
    m, h, wl = get_model("opt-125m"), load_profile("cpu-2core"), Workload(512, 32)
    assert m.dtype == "fp16"
    plan = search(m, h, wl, compare=False)
    assert plan.policy.dtype == "bf16" and plan.dtype == "bf16"
    d = plan.to_dict()
    assert d["dtype"] == "bf16" and d["policy"]["dtype"] == "bf16"
    per = plan.dtype_choice["per_dtype"]
    assert set(per) == {"fp16", "bf16", "fp32"} and plan.dtype_choice["searched"][0] == "fp16"
    for other in ("fp16", "fp32"):
        forced = search(m, h, wl, space=SearchSpace(dtype=other), compare=False)
        assert forced.policy.dtype == other
        assert plan.estimate.throughput_tok_s > 2 * forced.estimate.throughput_tok_s
        # What the report says about the loser is a bound on what forcing it gives.
        assert per[other]["bound_throughput_tok_s"] >= forced.relaxed_estimate.throughput_tok_s * (1 - 1e-9)
        assert per["bf16"]["gemm_flop_per_s"] > 2 * per[other]["gemm_flop_per_s"]
    assert per["bf16"]["gemm_source"] == "measured" and per["fp16"]["gemm_source"] == "peak"
    text = dtype_text(plan)
    assert text.startswith("dtype bf16, the best of fp16, bf16, fp32 here: layer GEMMs at batch ")
    assert "fp16 4" in text and "GFLOP/s (roofline on its 415 GFLOP/s peak)" in text
    assert d["dtype_choice"]["reason"] == text


def test_forced_dtype_must_be_rated_by_the_profile():
    from simulator.errors import PolicyError
    m, h = get_model("opt-125m"), load_profile("t4-gcp")
    with pytest.raises(PolicyError, match=r"^--dtype bf16: the t4-gcp profile has no gpu.bf16_TFLOPs "
                                          r"\(allowed here: fp16, fp32\)$"):
        search(m, h, Workload(64, 8), space=SearchSpace(dtype="bf16"))
    with pytest.raises(PolicyError, match=r"^--dtype: 'int8' is not one of fp16, bf16, fp32$"):
        search(m, h, Workload(64, 8), space=SearchSpace(dtype="int8"))


def test_search_dtypes_are_the_rated_compute_dtypes_model_first():
    from simulator.search import search_dtypes
    # t4-gcp rates int8 too: not searched, the executor has no int8 weights.
    assert search_dtypes(get_model("opt-30b"), load_profile("t4-gcp")) == ("fp16", "fp32")
    assert search_dtypes(get_model("opt-30b"), load_profile("cpu-2core")) == ("fp16", "bf16", "fp32")
    bf = get_model("opt-30b").with_(dtype="bf16")
    assert search_dtypes(bf, load_profile("dgx-h100-8x")) == ("bf16", "fp16", "fp32")


def test_dtypes_that_predict_alike_are_solved_once():
    from simulator.policy import Placement, Policy
    from simulator.search import same_prediction
    dgx, pcie = load_profile("dgx-h100-8x"), load_profile("h100-pcie5")
    assert same_prediction(dgx, "fp16", "bf16")
    assert not same_prediction(dgx, "fp16", "fp32")
    assert not same_prediction(pcie, "fp16", "bf16")  # 750 vs 798 TFLOP/s measured
    m, wl = get_model("llama-2-70b"), Workload(512, 32)
    for pol in (Policy(gpu_batch_size=8, num_gpu_batches=2, weights=Placement(0.3, 0.7, 0.0),
                       cache=Placement(0.5, 0.5, 0.0)),
                Policy(gpu_batch_size=32, compress_weights=True, cpu_attention=True, weights=Placement(0.2, 0.5, 0.3),
                       cache=Placement(0.0, 1.0, 0.0), tp=2, dp=2)):
        a, b = (estimate(m, dgx, wl, pol.with_(dtype=d)) for d in ("fp16", "bf16"))
        assert a.total_latency_s == pytest.approx(b.total_latency_s, rel=1e-12)
        assert a.peak_memory_bytes == b.peak_memory_bytes
    plan = search(m, dgx, wl, space=SearchSpace(gpu_batch_sizes=(8, 64), num_gpu_batches=(1, 4)), compare=False)
    assert plan.dtype_choice["per_dtype"]["bf16"]["same_as"] == "fp16"
    assert set(plan.candidates["dtype"]) == {"fp16", "fp32"}


def test_search_matches_the_grid_across_dtypes_and_layouts():
    # A GPU whose fp16 is slow: the grid over both dtypes and every 2-GPU layout and the
    # search must agree on the best (LP optimum within 0.5% of the grid's best).
    m = get_model("opt-1.3b")
    h = synthetic_profile(gpu={"memory_GiB": 2, "fp16_TFLOPs": 0.05, "count": 2},
                          interconnect={"intra_node_GBps": 50, "intra_node_link": "nvlink"})
    wl = Workload(128, 8)
    space = SearchSpace(gpu_batch_sizes=(4, 16), num_gpu_batches=(1, 4), compress_weights=(False,),
                        compress_cache=(False,))
    plan = search(m, h, wl, space=space, compare=False, gpus=2)
    g = grid_best(m, h, wl, space, steps=10, gpus=2)
    assert g["dtype"] == "fp32" and plan.policy.dtype == "fp32"
    assert plan.relaxed_estimate.throughput_tok_s >= g["throughput_tok_s"] * 0.995
    assert plan.estimate.throughput_tok_s >= g["throughput_tok_s"] * 0.97
    assert {(r["tp"], r["pp"], r["dp"]) for r in plan.to_dict()["layouts"]} == {(1, 1, 2), (1, 2, 1), (2, 1, 1)}


@pytest.mark.parametrize("model,hw,dtype", [("opt-30b", "t4-gcp", "fp16"), ("llama-2-13b", "t4-gcp", "fp32")])
def test_accelerate_candidates_skip_only_dominated_layer_splits(model, hw, dtype):
    # Accelerate's planner evaluates, per batch and GPU layer count, only the most CPU layers
    # that fit (and none); the best of every (k, j) whole-layer split must be the same policy.
    from simulator.engines import get_engine
    from simulator.policy import Placement, Policy
    eng = get_engine("accelerate")
    m, h, wl = get_model(model), load_profile(hw), Workload(512, 32)
    space = SearchSpace(gpu_batch_sizes=(1, 4, 16), dtype=dtype)
    fast = eng.candidate_policies(m, h, wl, space)
    L = m.num_layers
    every = [Policy(gpu_batch_size=b, weights=Placement(k / L, j / L, (L - k - j) / L), overlap=False, dtype=dtype)
             for b in space.gpu_batch_sizes for k in range(L + 1) for j in range(L - k + 1)]
    assert len(fast) <= 2 * (L + 1) * 3 < len(every)  # O(L) splits per batch, not O(L^2)

    def best(pols, objective):
        ests = [(p, estimate(m, h, wl, p, eng)) for p in pols]
        ok = [(p, e) for p, e in ests if e.feasible]
        key = (lambda pe: pe[1].throughput_tok_s) if objective == "throughput" else (lambda pe: -pe[1].total_latency_s)
        return max(ok, key=key)[0]

    for objective in ("throughput", "latency"):
        assert best(fast, objective) == best(every, objective)


def test_memory_certificates_only_reject_lps_without_a_feasible_point():
    # The joint memory checks of pass 1 (and the multipliers learned from an infeasible LP)
    # must never reject an LP that has a solution, and should reject the infeasible ones.
    from simulator.search import HighsLP, fits_under, memory_multipliers
    cases = _lp_cases("opt-175b", "h100-pcie5")
    h = load_profile("h100-pcie5")
    lams = memory_multipliers((h.device.usable_bytes, h.cpu.usable_bytes, h.disk.capacity_bytes))
    direct = HighsLP()
    feasible = rejected = infeasible = 0
    for d in cases:
        status, _ = direct.solve(d, None, None)
        ok = fits_under(d.M[None], d.room[None], lams)[0]
        if status == "optimal":
            feasible += 1
            assert ok
        else:
            assert status == "infeasible"
            infeasible += 1
            rejected += not ok
            if direct.farkas is not None:  # a learned multiplier proves exactly this LP infeasible
                assert not fits_under(d.M[None], d.room[None], direct.farkas[None])[0]
    assert feasible >= 10 and infeasible >= 10 and rejected >= 0.8 * infeasible
