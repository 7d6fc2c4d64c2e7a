"""Policy search: a cvxpy placement LP per batch candidate, pruned, rounded, re-evaluated.

For each enumerated candidate (gpu_batch_size, num_gpu_batches, compress_weights,
compress_cache, cpu_attention) the nine placement fractions are chosen by a linear
program that is *the same model* as ``estimate()``:

    minimise    sum_cells  w_cell x T_cell                  (block time; w = steps x layers)
    subject to  T_cell >= channel_c(x)   for every channel c  (cost.CHANNELS, overlap on)
                peak_{phase,tier}(x) <= capacity_tier          (simulator.memory)
                each placement triple sums to 1, x >= 0
                [block time <= bound]    (--max-latency / --min-throughput)

Every ``channel_c`` and ``peak`` row is read from ``cost.Terms`` (``chan_lin``, ``mem``),
so at the LP's solution ``estimate()`` of that policy equals the LP objective. The one
part of ``estimate()`` that is not linear in the fractions is the per-transfer link
latency (``latency x [fraction > 0]``); the LP leaves it out, so its objective is a lower
bound, and every answer is re-evaluated with ``estimate()``.

The problem is built once per (model, hardware, workload, constraints) with cvxpy
Parameters (DPP) and re-solved per candidate by setting their values. Candidates are
visited best-bound-first and skipped when a cheap upper bound on their throughput (each
channel at its minimum over the placement simplex, memory ignored) cannot beat the
incumbent. The LP solution is then rounded to what the executor can place (whole tensors
per layer, whole cache and activation rows; ``simulator.placement``) and re-evaluated.

Overlap is always on in the search: it is never slower (a tested invariant).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from simulator.cost import CHANNELS, N_X, BatchShape, Estimate, build_terms, cell_weights, check_inputs, estimate
from simulator.errors import LlmsimError, PolicyError, SearchError
from simulator.hardware import HardwareProfile
from simulator.models import ModelSpec
from simulator.placement import achievable_tensor_placements, split_counts
from simulator.policy import Placement, Policy, Workload
from simulator.sweep import evaluate_arrays
from simulator.units import GiB

GPU_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
NUM_GPU_BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
SOLVERS = ("HIGHS", "CLARABEL", "SCIPY")
OBJECTIVES = ("throughput", "latency")
ROUNDING_NEIGHBOURS = 6
ROUNDING_MAX_TRIES = 40
LAYOUT_PROBES = 20  # LPs spent per otherwise-pruned layout so the report can compare layouts  # achievable weight placements looked at, nearest first
CAPACITY_MARGIN = 1e-6  # of each tier's capacity, for the solvers' feasibility tolerance


@dataclass(frozen=True)
class SearchSpace:
    gpu_batch_sizes: tuple = GPU_BATCH_SIZES
    num_gpu_batches: tuple = NUM_GPU_BATCHES
    compress_weights: tuple = (False, True)
    compress_cache: tuple = (False, True)
    cpu_attention: tuple = (False, True)
    dtype: str = "fp16"

    def candidates(self) -> list[tuple]:
        out = []
        for b in self.gpu_batch_sizes:
            for nb in self.num_gpu_batches:
                for cw in self.compress_weights:
                    for cc in self.compress_cache:
                        for ca in self.cpu_attention:
                            if ca and cc:
                                continue  # not supported (Policy rejects it)
                            out.append((b, nb, cw, cc, ca))
        return out


def shape_of(cands: list[tuple]) -> BatchShape:
    a = np.array(cands, dtype=float).reshape(-1, 5)
    return BatchShape(a[:, 0], a[:, 1], a[:, 4], a[:, 2], a[:, 3], np.zeros(len(cands)))


# ------------------------------------------------------------------ the LP
class PlacementLP:
    """The placement LP for one (model, hardware, workload), built once; ``solve`` sets the
    candidate's Parameters and re-solves (DPP: Parameter x Variable products only).

    Two objectives share the constraints: the block time, and - among block-time optima -
    the traffic (link and disk busy time). The LP is degenerate when transfers hide under
    compute: tiny offloads cost nothing in the LP but pay link latency in ``estimate()``
    and use host memory, so ``solve(..., refine=True)`` picks the optimum that moves least.
    Memory rows are scaled by their capacity so that bytes and seconds are both O(1).
    """

    TRAFFIC_CHANNELS = (0, 1, 3)  # h2d, d2h, disk

    def __init__(self, num_cells: int, bounded: bool, fix_weights: bool):
        import cvxpy as cp

        nch, nx = len(CHANNELS), N_X - 1
        self.num_cells = num_cells
        self.x = cp.Variable(nx, nonneg=True)
        self.T = cp.Variable(num_cells)
        self.A = cp.Parameter((nch * num_cells, nx))  # channel-major rows: (channel, cell)
        self.b = cp.Parameter(nch * num_cells)
        self.w = cp.Parameter(num_cells, nonneg=True)  # cell weights: steps x (layers | 1)
        self.M = cp.Parameter((6, nx))
        self.m_room = cp.Parameter(6)  # (capacity - x-independent part) / capacity
        chan = cp.Variable(nch * num_cells)  # channel times per cell (DPP: traffic_w @ chan)
        cons = [chan == self.A @ self.x + self.b, cp.hstack([self.T] * nch) >= chan, self.M @ self.x <= self.m_room,
                cp.sum(self.x[0:3]) == 1, cp.sum(self.x[3:6]) == 1, cp.sum(self.x[6:9]) == 1]
        self.objective = self.w @ self.T
        self.bound = None
        if bounded:
            self.bound = cp.Parameter(nonneg=True)
            cons.append(self.objective <= self.bound)
        self.fixed = None
        if fix_weights:
            self.fixed = cp.Parameter(3, nonneg=True)
            cons.append(self.x[0:3] == self.fixed)
        self.problem = cp.Problem(cp.Minimize(self.objective), cons)
        self.optimum = cp.Parameter(nonneg=True)
        self.traffic_w = cp.Parameter(nch * num_cells, nonneg=True)  # cell weights on traffic channels
        self.refine_problem = cp.Problem(cp.Minimize(self.traffic_w @ chan), cons + [self.objective <= self.optimum])
        assert self.problem.is_dcp(dpp=True) and self.refine_problem.is_dcp(dpp=True), "the LPs must be DPP"

    def _set(self, chan, mem, capacity, shared_host_pool, bound, fixed, cell_weights):
        ncell = self.num_cells
        self.A.value = chan[1:].T  # (channel*cell, 9)
        self.b.value = chan[0]
        self.w.value = cell_weights
        tw = np.zeros((len(CHANNELS), ncell))
        tw[list(self.TRAFFIC_CHANNELS)] = cell_weights
        self.traffic_w.value = tw.ravel()
        M = mem.reshape(6, N_X).copy()  # rows: (phase, tier)
        cap = np.tile(np.asarray(capacity, float), 2)
        if shared_host_pool:  # gpu and cpu tiers share host RAM
            for ph in (0, 1):
                M[3 * ph + 1] += M[3 * ph]
                M[3 * ph] = 0.0
        self.M.value = M[:, 1:] / cap[:, None]
        # The solvers' primal feasibility tolerance is ~1e-7 (scaled); keep that much room so
        # a solution on a capacity constraint is feasible in estimate() too.
        self.m_room.value = (cap - M[:, 0]) / cap - CAPACITY_MARGIN
        if self.bound is not None:
            self.bound.value = bound
        if self.fixed is not None:
            self.fixed.value = fixed

    def _run(self, problem, fallbacks) -> str | None:
        import warnings
        for solver in SOLVERS:
            try:
                with warnings.catch_warnings():  # "may be inaccurate": the status says so, handled below
                    warnings.simplefilter("ignore", UserWarning)
                    problem.solve(solver=solver, verbose=False)
            except Exception as e:  # solver errors vary by backend; record and fall back
                fallbacks.append(f"{solver}: {type(e).__name__}: {' '.join(str(e).split())[:120]}")
                continue
            if problem.status in ("optimal", "optimal_inaccurate"):
                return "optimal"
            if problem.status in ("infeasible", "infeasible_inaccurate"):
                return "infeasible"
            fallbacks.append(f"{solver}: status {problem.status}")
        return None

    def solve(self, chan: np.ndarray, mem: np.ndarray, capacity, shared_host_pool: bool, bound: float | None,
              fixed: np.ndarray | None, fallbacks: list, cell_weights: np.ndarray,
              refine: bool = False) -> tuple[np.ndarray, float] | None:
        """``chan`` (10, channel*cells) and ``mem`` (2, 3, 10) of one candidate. Returns
        (x, block time) or None when infeasible; solver failures fall back to the next solver
        and are recorded in ``fallbacks``."""
        self._set(chan, mem, capacity, shared_host_pool, bound, fixed, cell_weights)
        if self._run(self.problem, fallbacks) != "optimal":
            return None
        value = float(self.problem.value)
        x = np.asarray(self.x.value, float)
        if refine:
            self.optimum.value = value * (1 + 1e-9)
            if self._run(self.refine_problem, fallbacks) == "optimal":
                x = np.asarray(self.x.value, float)
                value = float(self.objective.value)
        x = np.clip(x, 0.0, None)
        for k in range(3):
            x[3 * k:3 * k + 3] /= x[3 * k:3 * k + 3].sum()
        return x, value


@functools.lru_cache(maxsize=1)
def _silence_highs_banner() -> None:
    """highspy prints a copyright banner on stdout (from C++, not through sys.stdout) the
    first time a solver is created in a process; it would corrupt ``--json`` output. Create
    that first instance with file descriptor 1 pointed at /dev/null."""
    import os
    import sys
    try:
        import highspy
    except ImportError:
        return
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


@functools.lru_cache(maxsize=32)
def placement_lp(num_cells: int, bounded: bool, fix_weights: bool) -> PlacementLP:
    """The compiled LP for a problem structure (cells = 2 x (1 + decode segments)); every
    number that varies with the model, hardware, workload or candidate is a Parameter."""
    _silence_highs_banner()
    return PlacementLP(num_cells, bounded, fix_weights)


# ------------------------------------------------------------------ results
@dataclass
class Plan:
    """The search's answer. ``policy`` is executable (rounded); ``relaxed_policy`` is the
    LP's continuous optimum; both are evaluated with ``estimate()``."""

    model: str
    hardware: str
    workload: dict
    objective: str
    feasible: bool
    reason: str
    policy: Policy | None
    estimate: Estimate | None
    relaxed_policy: Policy | None
    relaxed_estimate: Estimate | None
    lp_objective_s: float | None
    baselines: dict
    candidates: object  # pandas DataFrame, one row per candidate
    search_seconds: float
    candidates_total: int
    candidates_evaluated: int
    candidates_pruned: int
    solver_fallbacks: list = field(default_factory=list)
    constraints: dict = field(default_factory=dict)
    gpus: int = 1

    def layouts(self):
        """The best solved candidate of each (tp, pp, dp) layout (LP optimum, re-evaluated)."""
        df = self.candidates
        df = df[df["solved"] & df["feasible"]]
        if df.empty:
            return df
        col = "throughput_tok_s" if self.objective == "throughput" else "total_latency_s"
        best = df.sort_values(col, ascending=(self.objective != "throughput")).groupby(["tp", "pp", "dp"]).head(1)
        return best.sort_values(["tp", "pp", "dp"])

    def pareto(self):
        """Candidates on the throughput-vs-latency frontier (feasible, not dominated)."""
        df = self.candidates
        df = df[df["feasible"] & df["solved"]].sort_values(["total_latency_s", "throughput_tok_s"],
                                                           ascending=[True, False])
        keep, best = [], -math.inf
        for i, row in df.iterrows():
            if row["throughput_tok_s"] > best * (1 + 1e-9):
                keep.append(i)
                best = row["throughput_tok_s"]
        return df.loc[keep]

    def to_dict(self) -> dict:
        return {
            "model": self.model, "hardware": self.hardware, "workload": self.workload, "objective": self.objective,
            "constraints": self.constraints, "feasible": self.feasible, "reason": self.reason,
            "policy": self.policy.to_dict() if self.policy else None,
            "estimate": self.estimate.to_dict() if self.estimate else None,
            "relaxed": {"policy": self.relaxed_policy.to_dict() if self.relaxed_policy else None,
                        "lp_objective_s": self.lp_objective_s,
                        "throughput_tok_s": self.relaxed_estimate.throughput_tok_s if self.relaxed_estimate else None,
                        "total_latency_s": self.relaxed_estimate.total_latency_s if self.relaxed_estimate else None},
            "baselines": {k: _baseline_dict(v) for k, v in self.baselines.items()},
            "pareto": self.pareto()[["gpu_batch_size", "num_gpu_batches", "compress_weights", "compress_cache",
                                     "cpu_attention", "throughput_tok_s", "total_latency_s"]].to_dict("records")
            if self.candidates is not None and len(self.candidates) else [],
            "gpus": self.gpus,
            "layouts": self.layouts()[["tp", "pp", "dp", "gpu_batch_size", "num_gpu_batches", "compress_weights",
                                       "compress_cache", "cpu_attention", "throughput_tok_s", "total_latency_s"]]
            .to_dict("records") if self.candidates is not None and len(self.candidates) else [],
            "search_seconds": self.search_seconds, "candidates_total": self.candidates_total,
            "candidates_evaluated": self.candidates_evaluated, "candidates_pruned": self.candidates_pruned,
            "solver_fallbacks": self.solver_fallbacks,
        }


def _baseline_dict(b) -> dict:
    pol, est, note = b
    return {"policy": pol.to_dict() if pol else None, "estimate": est.to_dict() if est else None, "note": note}


# ------------------------------------------------------------------ the search
def _simplex_min(chan: np.ndarray) -> np.ndarray:
    """Minimum over the placement simplex of each affine column: const + sum over the three
    triples of the smallest coefficient. chan (..., 10, K) -> (..., K)."""
    c = chan[..., 0, :]
    for k in range(3):
        c = c + chan[..., 1 + 3 * k:4 + 3 * k, :].min(axis=-2)
    return c


def _policy(cand: tuple, x: np.ndarray, dtype: str, layout=(1, 1, 1)) -> Policy:
    b, nb, cw, cc, ca = cand
    x = [float(v) for v in x]
    tp, pp, dp = layout
    return Policy(gpu_batch_size=int(b), num_gpu_batches=int(nb), weights=Placement(*x[0:3]),
                  cache=Placement(*x[3:6]), activations=Placement(*x[6:9]), cpu_attention=bool(ca),
                  compress_weights=bool(cw), compress_cache=bool(cc), overlap=True, dtype=dtype, tp=tp, pp=pp, dp=dp)


def layouts_for(model: ModelSpec, hw: HardwareProfile, gpus: int) -> list[tuple[int, int, int]]:
    """(tp, pp, dp) layouts for ``gpus`` GPUs: tensor degrees that divide the heads (powers
    of two), pipeline degrees up to the layers, and data-parallel replicas using the rest
    of the GPUs (a replica more never lowers throughput)."""
    from simulator.errors import PolicyError as _PE
    total = hw.total_gpus
    if gpus < 1 or gpus > max(total, 1):
        raise _PE(f"--gpus {gpus}: {hw.name} has {total} GPU(s) ({hw.gpu_count} per node x "
                  f"{hw.interconnect.nodes} node(s))")
    out = []
    tp = 1
    while tp <= gpus:
        if model.num_heads % tp == 0:
            for pp in range(1, gpus // tp + 1):
                if pp <= model.num_layers and gpus % (tp * pp) == 0:
                    out.append((tp, pp, gpus // (tp * pp)))
        tp *= 2
    return out


@dataclass
class _Layout:
    """One parallel layout's candidates and their terms."""

    tp: int
    pp: int
    dp: int
    terms: object
    shapes: BatchShape
    offset: int  # index of this layout's first candidate in the global arrays


def search(model: ModelSpec, hw: HardwareProfile, workload: Workload, objective: str = "throughput",
           max_latency_s: float | None = None, min_throughput_tok_s: float | None = None,
           space: SearchSpace | None = None, baselines: bool = True, gpus: int = 1) -> Plan:
    """Find the best executable policy for ``objective`` under the optional bounds, on
    ``gpus`` GPUs (every (tp, pp, dp) layout of ``layouts_for``).

    ``Plan.search_seconds`` times the search proper (bounds, LPs, rounding; the compile of
    the LP on the first search of a process included), not the import of cvxpy nor the
    baselines."""
    import cvxpy  # noqa: F401  (imported before the clock starts: an import is not search time)
    import pandas as pd

    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise PolicyError(f"--objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    for flag, v in (("--max-latency", max_latency_s), ("--min-throughput", min_throughput_tok_s)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise PolicyError(f"{flag} must be a positive number, got {v!r}")
    space = space or SearchSpace(dtype=_default_dtype(model, hw))
    check_inputs(model, hw, workload, Policy(dtype=space.dtype))
    layouts = layouts_for(model, hw, gpus)
    n = workload.gen_len

    # Every layout's candidates, concatenated: global index = layout offset + candidate.
    lays: list[_Layout] = []
    rows = []
    for tp, pp, dp in layouts:
        cands = space.candidates()
        if workload.num_sequences is not None:
            cands = [c for c in cands if workload.num_sequences % (c[0] * c[1] * dp) == 0]
        if not cands:
            continue
        shapes = shape_of(cands)
        terms = build_terms(model, hw, workload, shapes, space.dtype, tp, pp, dp)
        lays.append(_Layout(tp, pp, dp, terms, shapes, len(rows)))
        rows += [(c, len(lays) - 1, p) for p, c in enumerate(cands)]
    if not rows:
        raise PolicyError(f"--num-sequences {workload.num_sequences}: no candidate block size divides it")
    G = len(rows)
    cands = [r[0] for r in rows]
    lay_of = np.array([r[1] for r in rows])
    loc = np.array([r[2] for r in rows])
    dp_of = np.array([lays[li].dp for li in lay_of], float)
    block = np.array([c[0] * c[1] for c in cands], float)
    N = np.full(G, float(workload.num_sequences)) if workload.num_sequences else block * dp_of
    blocks = N / (block * dp_of)  # blocks per replica, one after another
    tokens = block * dp_of * n  # tokens per block round over all replicas
    cell_w = np.concatenate([cell_weights(L.terms) for L in lays])  # (G, cells)
    capacity = np.asarray(lays[0].terms.capacity_bytes, float)
    pooled = lays[0].terms.shared_host_pool
    chan = lambda i: lays[lay_of[i]].terms.chan_lin[loc[i]]  # noqa: E731
    mem = lambda i: lays[lay_of[i]].terms.mem[loc[i]]  # noqa: E731

    # Cheap bounds: each channel at its simplex minimum gives a lower bound on block time.
    ncell = lays[0].terms.num_cells
    chan_all = np.concatenate([L.terms.chan_lin for L in lays])
    mem_all_terms = np.concatenate([L.terms.mem for L in lays])
    lb_cells = _simplex_min(chan_all).reshape(G, len(CHANNELS), ncell).max(axis=1)
    lb_block = (lb_cells * cell_w).sum(axis=1)
    mem_min = _simplex_min(np.moveaxis(mem_all_terms.reshape(G, 6, N_X), 1, 2))  # (G, 6)
    mem_min3 = mem_min.reshape(G, 2, 3).max(axis=1)
    # Least bytes over all tiers together (the placement moves bytes between tiers, not away).
    mem_all = _simplex_min(mem_all_terms.sum(axis=2).transpose(0, 2, 1)).max(axis=1)  # (G,)
    if pooled:
        mem_ok = (mem_min3[:, 0] + mem_min3[:, 1] <= capacity[1]) & (mem_min3[:, 2] <= capacity[2])
    else:
        mem_ok = np.all(mem_min3 <= capacity, axis=1)
    # Bound from --max-latency / --min-throughput on the block time.
    bound = np.full(G, np.inf)
    if max_latency_s is not None:
        bound = np.minimum(bound, max_latency_s / blocks)
    if min_throughput_tok_s is not None:
        bound = np.minimum(bound, tokens / min_throughput_tok_s)
    ub_score = np.where(objective == "throughput", tokens / lb_block, -lb_block * blocks)
    order = np.argsort(-ub_score, kind="stable")

    lp = placement_lp(ncell, bool(np.isfinite(bound).any()), False)
    fallbacks: list[str] = []
    solved = np.zeros(G, bool)
    pruned = np.zeros(G, bool)
    lp_obj = np.full(G, np.nan)
    xs = np.full((G, N_X - 1), np.nan)
    # Branch and bound per layout (the report compares each layout's best); the overall
    # best is the best of those.
    best_score, best_i = -np.inf, None
    lay_best = np.full(len(lays), -np.inf)
    for i in order:
        li = lay_of[i]
        if not mem_ok[i] or lb_block[i] > bound[i]:
            continue
        if ub_score[i] <= lay_best[li]:
            pruned[i] = True
            continue
        res = lp.solve(chan(i), mem(i), capacity, pooled, bound[i] if np.isfinite(bound[i]) else 1e30, None,
                       fallbacks, cell_w[i])
        solved[i] = True
        if res is None:
            continue
        xs[i], lp_obj[i] = res
        score = tokens[i] / lp_obj[i] if objective == "throughput" else -lp_obj[i] * blocks[i]
        lay_best[li] = max(lay_best[li], score)
        if score > best_score:
            best_score, best_i = score, i

    # Every LP solution re-evaluated with the cost model (step terms included).
    ok = ~np.isnan(lp_obj)
    df = pd.DataFrame(cands, columns=["gpu_batch_size", "num_gpu_batches", "compress_weights", "compress_cache",
                                      "cpu_attention"])
    df["tp"] = [lays[li].tp for li in lay_of]
    df["pp"] = [lays[li].pp for li in lay_of]
    df["dp"] = dp_of.astype(int)
    df["solved"] = ok
    df["pruned"] = pruned
    df["lp_block_time_s"] = lp_obj
    df["bound_throughput_tok_s"] = tokens / lb_block
    df["throughput_tok_s"] = np.nan
    df["total_latency_s"] = np.nan
    df["feasible"] = False

    def reevaluate(idx: np.ndarray) -> None:
        for li, L in enumerate(lays):
            sel = idx[lay_of[idx] == li]
            if not len(sel):
                continue
            X = np.concatenate([np.ones((len(sel), 1)), xs[sel]], axis=1)
            ev = evaluate_arrays(model, hw, workload, L.shapes, loc[sel], X, np.ones(len(sel), bool), space.dtype,
                                 terms=L.terms)
            df.loc[sel, "throughput_tok_s"] = ev.throughput_tok_s * dp_of[sel]
            df.loc[sel, "total_latency_s"] = ev.total_s * blocks[sel]
            df.loc[sel, "feasible"] = ev.feasible
            df.loc[sel, "lp_block_time_s"] = lp_obj[sel]
            for k, name in enumerate(("weights", "cache", "activations")):
                for j, tier in enumerate(("gpu", "cpu", "disk")):
                    df.loc[sel, f"{name}_{tier}_frac"] = xs[sel, 3 * k + j]

    reevaluate(np.flatnonzero(ok))
    constraints = {"max_latency_s": max_latency_s, "min_throughput_tok_s": min_throughput_tok_s}
    common = dict(model=model.name, hardware=hw.name, workload=workload.to_dict(), objective=objective,
                  candidates=df, candidates_total=G, constraints=constraints, gpus=gpus)
    if best_i is None:
        if solved.sum() == 0 and not mem_ok.any():
            reason = _shortfall(mem_min3, mem_all, capacity, pooled)
        elif fallbacks and not ok.any():
            raise SearchError("every solver failed: " + "; ".join(fallbacks[:3]))
        else:
            reason = "no candidate meets the bounds" if np.isfinite(bound).any() else \
                _shortfall(mem_min3, mem_all, capacity, pooled)
        search_s = time.perf_counter() - t0
        return Plan(feasible=False, reason=reason, policy=None, estimate=None, relaxed_policy=None,
                    relaxed_estimate=None, lp_objective_s=None, search_seconds=search_s,
                    baselines=_baselines(model, hw, workload, space, objective, gpus) if baselines else {},
                    candidates_evaluated=int(solved.sum()), candidates_pruned=int(pruned.sum()),
                    solver_fallbacks=fallbacks, **common)

    # Among the winner's LP optima, the one that moves least (see PlacementLP).
    refined = lp.solve(chan(best_i), mem(best_i), capacity, pooled,
                       bound[best_i] if np.isfinite(bound[best_i]) else 1e30, None, fallbacks, cell_w[best_i],
                       refine=True)
    if refined is not None:
        xs[best_i], lp_obj[best_i] = refined
        reevaluate(np.array([best_i]))

    def lay_tuple(i):
        L = lays[lay_of[i]]
        return L.tp, L.pp, L.dp

    relaxed = _policy(cands[best_i], xs[best_i], space.dtype, lay_tuple(best_i))
    rounded = None
    col = "throughput_tok_s" if objective == "throughput" else "total_latency_s"
    ranked = [best_i] + [i for i in df[df["solved"] & df["feasible"]].sort_values(
        col, ascending=(objective != "throughput")).index[:10] if i != best_i]
    rounders = {}
    for i in ranked:  # rounding can lose feasibility: then the next-best solved candidates
        li = lay_of[i]
        if li not in rounders:
            L = lays[li]
            rounders[li] = _Rounder(model, hw, workload, L.terms, L.shapes, capacity, space.dtype, objective,
                                    fallbacks, (L.tp, L.pp, L.dp))
        rounded = rounders[li].round(cands[i], loc[i], xs[i], bound[i])
        if rounded is not None:
            break
    search_s = time.perf_counter() - t0
    est = estimate(model, hw, workload, rounded) if rounded else None
    reason = ""
    if est is None:
        from simulator.report import policy_text
        reason = (f"the LP optimum ({policy_text(relaxed.to_dict())}) cannot be placed with whole tensors per "
                  "layer within capacity: every executable split near it overflows a tier")
    return Plan(feasible=est is not None and est.feasible, reason=reason,
                policy=rounded, estimate=est, relaxed_policy=relaxed,
                relaxed_estimate=estimate(model, hw, workload, relaxed), lp_objective_s=float(lp_obj[best_i]),
                search_seconds=search_s,
                baselines=_baselines(model, hw, workload, space, objective, gpus) if baselines else {},
                candidates_evaluated=int(solved.sum()) + sum(r.lp_solves for r in rounders.values()),
                candidates_pruned=int(pruned.sum()), solver_fallbacks=fallbacks, **common)


def _default_dtype(model: ModelSpec, hw: HardwareProfile) -> str:
    dts = hw.device.dtypes
    if model.dtype in dts:
        return model.dtype
    return "fp16" if "fp16" in dts else ("bf16" if "bf16" in dts else "fp32")


def _shortfall(mem_min3: np.ndarray, mem_all: np.ndarray, capacity: np.ndarray, pooled: bool) -> str:
    """Why nothing fits: the smallest shortfall per tier over all candidates (each tier at
    its own minimum), or, when every tier could fit alone, the shortfall of all tiers
    together (the least bytes any candidate needs against the sum of the capacities)."""
    need = mem_min3.min(axis=0)
    names = ("gpu", "cpu", "disk")
    if pooled:
        need = np.array([0.0, (mem_min3[:, 0] + mem_min3[:, 1]).min(), need[2]])
    parts = [f"{names[t]} memory short by at least {(need[t] - capacity[t]) / GiB:.2f} GiB "
             f"(needs {need[t] / GiB:.2f}, has {capacity[t] / GiB:.2f})"
             for t in range(3) if need[t] > capacity[t]]
    total_cap = capacity[1] + capacity[2] if pooled else capacity.sum()
    least = float(mem_all.min())
    if least > total_cap:
        parts.append(f"gpu+cpu+disk together short by at least {(least - total_cap) / GiB:.2f} GiB "
                     f"(needs {least / GiB:.2f}, has {total_cap / GiB:.2f})")
    return "nothing fits: " + ("; ".join(parts) if parts else "no placement satisfies every tier at once")


def _row_options(n_rows: int, frac: np.ndarray) -> list[tuple[int, int, int]]:
    """Integer row splits (gpu, cpu, disk) near the fractions: floor/ceil of gpu and cpu."""
    out = set()
    for g in {math.floor(frac[0] * n_rows + 1e-9), math.ceil(frac[0] * n_rows - 1e-9)}:
        for c in {math.floor(frac[1] * n_rows + 1e-9), math.ceil(frac[1] * n_rows - 1e-9)}:
            g2, c2 = max(0, min(g, n_rows)), max(0, min(c, n_rows - max(0, min(g, n_rows))))
            out.add((g2, c2, n_rows - g2 - c2))
    out.add(split_counts(n_rows, Placement(*frac)))
    return sorted(out)


class _Rounder:
    """Rounds an LP solution to an executable policy: the achievable whole-tensor weight
    placements nearest the optimum, each with the LP re-solved for cache and activations
    (weights fixed), then the nearby whole-row splits of cache and activations; the best
    feasible by the cost model (vectorized, latency terms included) wins."""

    def __init__(self, model, hw, workload, terms, shapes, capacity, dtype, objective, fallbacks, layout=(1, 1, 1)):
        self.model, self.hw, self.workload, self.terms, self.shapes = model, hw, workload, terms, shapes
        self.layout = layout
        self.capacity, self.dtype, self.objective, self.fallbacks = capacity, dtype, objective, fallbacks
        self.cell_w = cell_weights(terms)
        self.lp_solves = 0

    def lp(self, bounded: bool) -> PlacementLP:
        return placement_lp(self.terms.num_cells, bounded, True)

    def round(self, cand, i, x, bound) -> Policy | None:
        b, nb, cw, cc, ca = cand
        fmt = "int4" if cw else self.dtype
        sizes = [t.nbytes(fmt) for t in self.model.layer_tensors()]
        options = achievable_tensor_placements(sizes)
        options.sort(key=lambda p: float(np.abs(np.array(p.as_tuple()) - x[0:3]).sum()))
        bounded = bool(np.isfinite(bound))
        cache_rows = b * self.model.num_kv_heads
        X = []
        found = 0
        for wp in options[:ROUNDING_MAX_TRIES]:
            if found == ROUNDING_NEIGHBOURS:
                break
            w = np.array(wp.as_tuple())
            res = self.lp(bounded).solve(self.terms.chan_lin[i], self.terms.mem[i], self.capacity,
                                         self.terms.shared_host_pool, bound if bounded else None, w,
                                         self.fallbacks, self.cell_w[i], refine=True)
            self.lp_solves += 1
            if res is None:
                continue
            found += 1
            x2 = res[0]
            for cg, cc_, cd in _row_options(cache_rows, x2[3:6]):
                for hg, hc, hd in _row_options(b, x2[6:9]):
                    X.append([1.0, *w, cg / cache_rows, cc_ / cache_rows, cd / cache_rows, hg / b, hc / b, hd / b])
        if not X:
            return None
        X = np.array(X)
        ev = evaluate_arrays(self.model, self.hw, self.workload, self.shapes, np.full(len(X), i), X,
                             np.ones(len(X), bool), self.dtype, terms=self.terms)
        dp = self.layout[2]
        blocks = (self.workload.num_sequences or b * nb * dp) / (b * nb * dp)
        ok = ev.feasible & (ev.total_s <= bound * (1 + 1e-9))
        if not ok.any():
            return None
        score = np.where(ok, ev.throughput_tok_s if self.objective == "throughput" else -ev.total_s * blocks, -np.inf)
        return _policy(cand, X[int(score.argmax())][1:], self.dtype, self.layout)


# ------------------------------------------------------------------ baselines
def _best_of(model, hw, workload, dtype, objective, rows: list[tuple], overlap: bool):
    """The best feasible of policies given as rows (b, w_g, w_c, w_d, c_g, c_c, c_d, h_g,
    h_c, h_d), num_gpu_batches 1, no compression, no CPU attention: (Policy, Estimate)."""
    if not rows:
        return None
    a = np.asarray(rows, float)
    bs = np.unique(a[:, 0])
    shapes = BatchShape(bs, np.ones(len(bs)), np.zeros(len(bs)), np.zeros(len(bs)), np.zeros(len(bs)),
                        np.zeros(len(bs)))
    idx = np.searchsorted(bs, a[:, 0])
    X = np.concatenate([np.ones((len(a), 1)), a[:, 1:]], axis=1)
    ev = evaluate_arrays(model, hw, workload, shapes, idx, X, np.full(len(a), overlap), dtype)
    if not ev.feasible.any():
        return None
    blocks = (workload.num_sequences / a[:, 0]) if workload.num_sequences else 1.0
    score = np.where(ev.feasible, ev.throughput_tok_s if objective == "throughput" else -ev.total_s * blocks,
                     -np.inf)
    r = a[int(score.argmax())]
    r = [float(v) for v in r]
    pol = Policy(gpu_batch_size=int(r[0]), weights=Placement(*r[1:4]), cache=Placement(*r[4:7]),
                 activations=Placement(*r[7:10]), overlap=overlap, dtype=dtype)
    return pol, estimate(model, hw, workload, pol)


def _baselines(model, hw, workload, space: SearchSpace, objective: str, gpus: int = 1) -> dict:
    """Strategies of other systems, evaluated by the same cost model, each at its best batch:

    - ``all_gpu``: everything on the GPU;
    - ``accelerate``: Hugging Face Accelerate's device_map offload: whole layers on the GPU,
      then the CPU, then the disk; weights moved in on use without overlap; one batch at a
      time (num_gpu_batches 1); cache and activations on the GPU;
    - ``zero_inference``: DeepSpeed ZeRO-Inference: all weights streamed from the CPU (or
      NVMe when the CPU cannot hold them) with prefetch (overlap); cache on the GPU; the
      largest batch that fits.
    On ``gpus`` > 1 each runs as ``gpus`` data-parallel replicas (what these systems do
    with more GPUs and no model parallelism of their own).
    Values: (policy, estimate, note) or (None, None, why not).
    """
    dt, L = space.dtype, model.num_layers
    bsz = [b for b in space.gpu_batch_sizes if workload.num_sequences is None or workload.num_sequences % b == 0]
    g = (1.0, 0.0, 0.0)
    out = {}
    best = _best_of(model, hw, workload, dt, objective, [(b, *g, *g, *g) for b in bsz], True)
    out["all_gpu"] = (*best, "") if best else (None, None, "does not fit on the GPU at any batch size")
    rows = []
    for b in bsz:
        for k in range(L + 1):
            for j in range(L - k + 1):
                rows.append((b, k / L, j / L, (L - k - j) / L, *g, *g))
    best = _best_of(model, hw, workload, dt, objective, rows, False)
    out["accelerate"] = (*best, "") if best else (None, None, "no whole-layer placement fits")
    note = "weights on CPU"
    best = None
    for w, why in (((0.0, 1.0, 0.0), "weights on CPU"), ((0.0, 0.0, 1.0), "weights on NVMe")):
        feasible_b = []
        for b in bsz:
            r = _best_of(model, hw, workload, dt, objective, [(b, *w, *g, *g)], True)
            if r:
                feasible_b.append(r)
        if feasible_b:
            best, note = feasible_b[-1], why  # the largest batch that fits
            break
    out["zero_inference"] = (*best, note) if best else (None, None, "no batch fits with the cache on the GPU")
    if gpus > 1:
        for name, (pol, est, note) in list(out.items()):
            if pol is None:
                continue
            rep = pol.with_(dp=gpus)
            try:
                out[name] = (rep, estimate(model, hw, workload, rep), (note + "; " if note else "") + f"{gpus} replicas")
            except LlmsimError:
                out[name] = (None, None, f"does not divide into {gpus} replicas")
    return out
