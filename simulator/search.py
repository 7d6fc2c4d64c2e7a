"""Policy search: a placement LP per batch candidate, pruned, rounded, re-evaluated.

For each enumerated candidate (gpu_batch_size, num_gpu_batches, compress_weights,
compress_cache, cpu_attention) of each compute dtype and parallel layout, the nine
placement fractions are chosen by a linear program that is *the same model* as
``estimate()``:

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

The formulation of record is the cvxpy problem of ``PlacementLP``: built once per problem
structure with Parameters (DPP) and re-solved by setting their values. The same numbers
(``LPData``) are also handed straight to HiGHS (``HighsLP``), which skips cvxpy's
per-solve canonicalization; that is the first solver tried, and a test checks that both
reach the same optimum. The other ``SOLVERS`` run through cvxpy.

Branch and bound: candidates are visited best-bound-first and skipped when an upper bound
on their score cannot beat the best LP found in their layout. Two bounds, both lower
bounds on the LP's block time:

- the simplex bound: each channel at its minimum over the placement simplex, memory
  ignored (cheap, vectorized over all candidates);
- a Lagrangian bound from a solved LP's duals (``Certificate``): for any per-cell weights
  pi over the channels (pi >= 0, summing to 1 per cell) and memory multipliers lam >= 0,
  ``sum_cells w T >= sum_cells w sum_c pi_c channel_c(x) + lam . (M x - room)`` at every
  feasible x, and the right-hand side is linear in x, so its minimum over the placement
  simplices (a sum of per-triple minima) bounds the LP from below (Boyd & Vandenberghe,
  Convex Optimization, section 5.2). Duals of a similar candidate make it tight.

Candidates no placement fits are dropped before any LP: each tier at its minimum, and
every set of tiers together (``memory_multipliers``; Farkas' lemma, ``fits_under``), plus
the multipliers HiGHS's dual ray gives for an LP found infeasible.

Work is proportional to what survives: pass 1 builds every candidate's terms a chunk at a
time for the bounds only; pass 2 builds the LP data of the next few candidates in bound
order that may still win (``SOLVE_BATCH``), so memory stays small for thousands of
candidates (8 GPUs: 10 layouts x 3 dtypes x 780).

The LP solution is then rounded to what the executor can place (whole tensors per layer,
whole cache and activation rows; ``simulator.placement``) and re-evaluated.

Overlap is always on in the search: it is never slower (a tested invariant).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from simulator import moe
from simulator.cost import (CHANNELS, N_X, BatchShape, Estimate, Terms, build_terms, cell_weights, check_inputs,
                            estimate, evaluate)
from simulator.ops import layer_gemm_splits, layer_matmul_time_s
from simulator.engines import get_engine
from simulator.engines.base import DEFAULT_ENGINE
from simulator.errors import LlmsimError, PolicyError, SearchError
from simulator.hardware import HardwareProfile
from simulator.models import DTYPE_BYTES, ModelSpec
from simulator.policy import COMPUTE_DTYPES, Placement, Policy, Workload
from simulator.sweep import evaluate_arrays, feasible_mask, take
from simulator.units import GiB

GPU_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
NUM_GPU_BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
SOLVERS = ("HIGHS", "CLARABEL", "SCIPY")  # HIGHS: HighsLP (highspy); the others through cvxpy
OBJECTIVES = ("throughput", "latency")
ROUNDING_NEIGHBOURS = 6
ROUNDING_MAX_TRIES = 40  # achievable weight placements looked at, nearest first
ROUNDING_CANDIDATES = 11  # candidates whose LP optimum rounding tries, best first
CAPACITY_MARGIN = 1e-6  # of each tier's capacity, for the solvers' feasibility tolerance
TERMS_CHUNK = 128  # candidates whose terms are built at once for the bounds (bounded memory)
SOLVE_BATCH = 24  # candidates whose LP data are built together during branch and bound
TRAFFIC_CHANNELS = (0, 1, 3)  # h2d, d2h, disk: what the refining LP minimises


# ------------------------------------------------------------------ dtypes
def search_dtypes(model: ModelSpec, hw: HardwareProfile) -> tuple[str, ...]:
    """The compute dtypes the search chooses among: those of ``policy.COMPUTE_DTYPES``
    (fp16, bf16, fp32) that the profile rates on its compute device
    (``ComputeDevice.dtypes``: a ``<dtype>_TFLOPs`` / ``<dtype>_GFLOPs`` key, measured or
    datasheet), the model's own dtype first (its weights need no conversion, so it wins
    ties), then in ``COMPUTE_DTYPES`` order. Weights stored in another dtype are
    converted at load; bytes per element follow the compute dtype.

    int8 and fp8 are not searched even where a profile rates them (t4-gcp, a100-80g-sxm
    give int8_TFLOPs): the executor (validate/executor/) stores weights in fp16, bf16,
    fp32 or group-wise 4-bit (``compress_weights``) only, so an int8/fp8 plan could not be
    run or validated."""
    rated = set(hw.device.dtypes)
    out = [d for d in COMPUTE_DTYPES if d in rated]
    if model.dtype in out:
        out.remove(model.dtype)
        out.insert(0, model.dtype)
    return tuple(out)


def same_prediction(hw: HardwareProfile, a: str, b: str) -> bool:
    """True when dtypes a and b predict identically on ``hw``: the same bytes per element,
    the same kernel counts (``cost`` tells half precision from fp32) and the same device
    figures (peak and every measured GEMM curve, resident and staged). The cost model reads
    a dtype only through these; a test checks estimate() agrees for such a pair. The search
    then solves the first of the two only."""
    if DTYPE_BYTES[a] != DTYPE_BYTES[b] or (a == "fp32") != (b == "fp32"):
        return False
    dev = hw.device
    if dev.peak_flop_per_s(a) != dev.peak_flop_per_s(b):
        return False

    def curves(table, d):
        return sorted((c.k, c.n, c.m, c.time_s) for c in table if c.dtype == d)

    return all(curves(t, a) == curves(t, b) for t in (dev.matmul_curves, dev.staged_matmul_curves))


@dataclass(frozen=True)
class SearchSpace:
    """What the search enumerates. ``dtype`` None: every dtype of ``search_dtypes``; a
    name: that dtype only (``--dtype``)."""

    gpu_batch_sizes: tuple = GPU_BATCH_SIZES
    num_gpu_batches: tuple = NUM_GPU_BATCHES
    compress_weights: tuple = (False, True)
    compress_cache: tuple = (False, True)
    cpu_attention: tuple = (False, True)
    dtype: str | None = None

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

    def dtypes_for(self, model: ModelSpec, hw: HardwareProfile) -> tuple[str, ...]:
        """The dtypes to search on ``hw``; a forced dtype the profile does not rate raises
        PolicyError naming --dtype, the value and the dtypes allowed there."""
        allowed = search_dtypes(model, hw)
        if self.dtype is None:
            if not allowed:
                raise PolicyError(f"--dtype: the {hw.name} profile rates none of {', '.join(COMPUTE_DTYPES)} on its "
                                  f"compute device (it rates: {', '.join(hw.device.dtypes) or 'none'})")
            return allowed
        if self.dtype not in COMPUTE_DTYPES:
            raise PolicyError(f"--dtype: {self.dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
        if self.dtype not in allowed:
            unit = "GFLOPs" if hw.device.is_host else "TFLOPs"
            where = "cpu" if hw.device.is_host else "gpu"
            raise PolicyError(f"--dtype {self.dtype}: the {hw.name} profile has no {where}.{self.dtype}_{unit} "
                              f"(allowed here: {', '.join(allowed) or 'none'})")
        return (self.dtype,)


def shape_of(cands: list[tuple]) -> BatchShape:
    a = np.array(cands, dtype=float).reshape(-1, 5)
    return BatchShape(a[:, 0], a[:, 1], a[:, 4], a[:, 2], a[:, 3], np.zeros(len(cands)))


# ------------------------------------------------------------------ the LP
@dataclass
class LPData:
    """One candidate's LP in numbers: what ``PlacementLP``'s Parameters take and what
    ``HighsLP`` passes to HiGHS. Rows are channel-major (channel, cell); memory rows
    (phase, tier) are scaled by the tier's capacity so that bytes and seconds are O(1)."""

    A: np.ndarray  # (channel*cell, 9) channel seconds per unit of each fraction
    b: np.ndarray  # (channel*cell,) channel seconds at x = 0
    w: np.ndarray  # (cell,) cell weights: steps x (layers | 1) x pipeline stretch
    M: np.ndarray  # (6, 9) bytes per unit fraction / capacity
    room: np.ndarray  # (6,) (capacity - x-independent bytes) / capacity - CAPACITY_MARGIN

    @property
    def num_cells(self) -> int:
        return len(self.w)

    def traffic_weights(self) -> np.ndarray:
        """(channel*cell,) cell weights on the traffic channels (h2d, d2h, disk), else 0."""
        tw = np.zeros((len(CHANNELS), self.num_cells))
        tw[list(TRAFFIC_CHANNELS)] = self.w
        return tw.ravel()


def scaled_memory(mem: np.ndarray, capacity, shared_host_pool: bool) -> tuple[np.ndarray, np.ndarray]:
    """Memory rows of P candidates as LP rows: ``mem`` (P, 2, 3, 10) peak bytes per (phase,
    tier) affine in X -> (M (P, 6, 9), room (P, 6)) with ``M x <= room`` meaning every tier
    fits: bytes per unit fraction / capacity, and (capacity - x-independent bytes) /
    capacity - ``CAPACITY_MARGIN``. On a machine whose gpu tier is host RAM
    (``shared_host_pool``) the gpu and cpu tiers draw on one capacity."""
    M = np.array(mem, float).reshape(-1, 6, N_X)  # rows: (phase, tier)
    cap = np.tile(np.asarray(capacity, float), 2)
    if shared_host_pool:
        for ph in (0, 1):
            M[:, 3 * ph + 1] += M[:, 3 * ph]
            M[:, 3 * ph] = 0.0
    # The solvers' primal feasibility tolerance is ~1e-7 (scaled); keep that much room so
    # a solution on a capacity constraint is feasible in estimate() too.
    return M[:, :, 1:] / cap[:, None], (cap - M[:, :, 0]) / cap - CAPACITY_MARGIN


def memory_multipliers(capacity) -> np.ndarray:
    """(K, 6) multipliers lam >= 0 on the scaled memory rows worth trying on every candidate:
    for each phase and each non-empty set of tiers, its rows summed with weight 1 and with
    weight capacity (its tiers' bytes together against their capacities together)."""
    cap = np.asarray(capacity, float)
    out = []
    for ph in (0, 1):
        for mask in range(1, 8):
            tiers = [t for t in range(3) if mask >> t & 1]
            for weight in (np.ones(3), cap / cap.max()):
                lam = np.zeros(6)
                lam[[3 * ph + t for t in tiers]] = weight[tiers]
                out.append(lam)
    return np.unique(np.array(out), axis=0)


def fits_under(M: np.ndarray, room: np.ndarray, lams: np.ndarray) -> np.ndarray:
    """(P,) False where one of the multipliers ``lams`` (K, 6) proves that no placement meets
    ``M x <= room``: for lam >= 0 every feasible x has lam.M x <= lam.room, so a minimum of
    lam.M x over the placement simplices above lam.room is a certificate of infeasibility
    (Farkas' lemma). M (P, 6, 9), room (P, 6)."""
    c = np.einsum("kr,prl->pkl", lams, M)  # (P, K, 9)
    low = c[..., 0:3].min(axis=-1) + c[..., 3:6].min(axis=-1) + c[..., 6:9].min(axis=-1)
    return ~np.any(low > room @ lams.T + 1e-9 * lams.sum(axis=1), axis=1)


def lp_data(chan: np.ndarray, mem: np.ndarray, capacity, shared_host_pool: bool, cell_w: np.ndarray) -> LPData:
    """``chan`` (10, channel*cells) and ``mem`` (2, 3, 10) of one candidate (``cost.Terms``)
    as LP numbers (memory rows: ``scaled_memory``)."""
    M, room = scaled_memory(mem[None], capacity, shared_host_pool)
    return LPData(A=chan[1:].T, b=chan[0], w=np.asarray(cell_w, float), M=M[0], room=room[0])


@dataclass
class Certificate:
    """Dual weights of a solved LP, reusable as a lower bound for any candidate of the same
    structure (module docstring): ``pi`` (channel*cell,) sums to 1 over each cell's
    channels; ``lam`` (6,) >= 0 are the memory multipliers, in seconds of block time per
    unit of scaled capacity, at the block-time scale ``scale_s`` of the LP they came from."""

    pi: np.ndarray
    lam: np.ndarray
    scale_s: float

    def bound_s(self, d: LPData, scale_s: float) -> float:
        """A lower bound on the block time of LP ``d`` (its own simplex bound ``scale_s``
        rescales the memory multipliers; any lam >= 0 is valid): the larger of the bounds
        with lam and with lam = 0."""
        wr = d.w[np.arange(len(self.pi)) % d.num_cells] * self.pi
        lin = wr @ d.A
        base = float(wr @ d.b)
        lam = self.lam * (scale_s / self.scale_s if self.scale_s > 0 else 0.0)
        out = base + _triple_min(lin)
        if lam.any():
            out = max(out, base - float(lam @ d.room) + _triple_min(lin + lam @ d.M))
        return out


def _triple_min(c: np.ndarray) -> float:
    """min over x in three simplices (x >= 0, each triple sums to 1) of c . x."""
    return float(c[0:3].min() + c[3:6].min() + c[6:9].min())


@dataclass
class Solution:
    x: np.ndarray  # (9,) fractions, each triple renormalised to sum 1
    value_s: float  # LP objective (block time)
    certificate: Certificate | None = None


class PlacementLP:
    """The placement LP as a cvxpy problem for one structure (number of cells, bounded,
    weights fixed), built once; ``solve`` sets the candidate's Parameters and re-solves
    (DPP: Parameter x Variable products only). This is the formulation of record.

    Two objectives share the constraints: the block time, and - among block-time optima -
    the traffic (link and disk busy time). The LP is degenerate when transfers hide under
    compute: tiny offloads cost nothing in the LP but pay link latency in ``estimate()``
    and use host memory, so ``refine=True`` picks the optimum that moves least.
    """

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

    def _set(self, d: LPData, bound, fixed) -> None:
        self.A.value = d.A
        self.b.value = d.b
        self.w.value = d.w
        self.traffic_w.value = d.traffic_weights()
        self.M.value = d.M
        self.m_room.value = d.room
        if self.bound is not None:
            self.bound.value = bound
        if self.fixed is not None:
            self.fixed.value = fixed

    def _run(self, problem, solver: str) -> str:
        import warnings

        import cvxpy as cp
        try:
            with warnings.catch_warnings():  # "may be inaccurate": the status says so
                warnings.simplefilter("ignore", UserWarning)
                problem.solve(solver=solver, verbose=False)
        except Exception as e:  # solver errors vary by backend: reported as a status, never their text
            return "not installed" if solver not in cp.installed_solvers() else f"raised {type(e).__name__}"
        if problem.status in ("optimal", "optimal_inaccurate"):
            return "optimal"
        if problem.status in ("infeasible", "infeasible_inaccurate"):
            return "infeasible"
        return f"status {problem.status}"

    def solve(self, d: LPData, bound: float | None, fixed: np.ndarray | None, solver: str,
              refine: bool = False) -> tuple[str, Solution | None]:
        """(status, solution): status "optimal", "infeasible" or what went wrong."""
        self._set(d, bound, fixed)
        status = self._run(self.problem, solver)
        if status != "optimal":
            return status, None
        value = float(self.problem.value)
        x = np.asarray(self.x.value, float)
        if refine:
            self.optimum.value = value * (1 + 1e-9)
            if self._run(self.refine_problem, solver) == "optimal":
                x = np.asarray(self.x.value, float)
                value = float(self.objective.value)
        return "optimal", Solution(_normalised(x), value)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, float), 0.0, None)
    for k in range(3):
        x[3 * k:3 * k + 3] /= x[3 * k:3 * k + 3].sum()
    return x


@functools.lru_cache(maxsize=32)
def placement_lp(num_cells: int, bounded: bool, fix_weights: bool) -> PlacementLP:
    """The compiled cvxpy LP for a problem structure (cells = 3 x (1 + decode segments));
    every number that varies with the model, hardware, workload or candidate is a
    Parameter."""
    _silence_highs_banner()
    return PlacementLP(num_cells, bounded, fix_weights)


class HighsLP:
    """``PlacementLP``'s problem, from the same ``LPData``, passed to HiGHS directly.

    Variables: the nine fractions x >= 0 and one T per cell. Rows: ``A x - T_cell <= -b``
    for each (channel, cell) whose row depends on x; a row that does not (``A`` = 0) says
    ``T_cell >= b`` and becomes T's lower bound; ``M x <= room``; each triple sums to 1;
    optionally ``w . T <= bound``. Fixed weights are column bounds. The refining LP adds
    ``w . T <= optimum`` and minimises the traffic ``tw . (A x + b)``, warm-started from the
    first solve's basis. Dual simplex, no presolve (the LPs are small: 9 + cells columns)."""

    def __init__(self):
        import highspy
        _silence_highs_banner()
        self.hs = highspy
        self.h = highspy.Highs()
        self.farkas: np.ndarray | None = None  # memory multipliers proving the last LP infeasible
        for k, v in (("output_flag", False), ("presolve", "off"), ("solver", "simplex")):
            self.h.setOptionValue(k, v)

    def solve(self, d: LPData, bound: float | None, fixed: np.ndarray | None,
              refine: bool = False) -> tuple[str, Solution | None]:
        hs, h = self.hs, self.h
        inf = hs.kHighsInf
        ncell, nx = d.num_cells, N_X - 1
        cell = np.arange(len(d.b)) % ncell
        const = ~d.A.any(axis=1)
        t_low = np.full(ncell, -inf)
        np.maximum.at(t_low, cell[const], d.b[const])
        keep = np.flatnonzero(~const)
        nk, ncol = len(keep), nx + ncell
        nrow = nk + 9 + (bound is not None)
        D = np.zeros((nrow, ncol))
        D[:nk, :nx] = d.A[keep]
        D[np.arange(nk), nx + cell[keep]] = -1.0
        D[nk:nk + 6, :nx] = d.M
        for k in range(3):
            D[nk + 6 + k, 3 * k:3 * k + 3] = 1.0
        row_lo = np.concatenate([np.full(nk + 6, -inf), np.ones(3)])
        row_up = np.concatenate([-d.b[keep], d.room, np.ones(3)])
        if bound is not None:
            D[-1, nx:] = d.w
            row_lo, row_up = np.append(row_lo, -inf), np.append(row_up, bound)
        col_lo = np.concatenate([np.zeros(nx), t_low])
        col_up = np.full(ncol, inf)
        if fixed is not None:
            col_lo[:3] = col_up[:3] = fixed
        cost = np.concatenate([np.zeros(nx), d.w])
        cols, rows = np.nonzero(D.T)  # column-major nonzeros
        lp = hs.HighsLp()  # (the object form: the same call in every highspy >= 1.7)
        lp.num_col_, lp.num_row_ = ncol, nrow
        lp.col_cost_, lp.col_lower_, lp.col_upper_, lp.row_lower_, lp.row_upper_ = cost, col_lo, col_up, row_lo, row_up
        lp.a_matrix_.format_ = hs.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.searchsorted(cols, np.arange(ncol + 1)).astype(np.int32)
        lp.a_matrix_.index_, lp.a_matrix_.value_ = rows.astype(np.int32), D.T[cols, rows]
        h.clearModel()
        h.passModel(lp)
        status = self._run()
        self.farkas = None
        if status == "infeasible" and bound is None and fixed is None:
            self.farkas = self._farkas(d, nk)
        if status != "optimal":
            return status, None
        sol = h.getSolution()
        x = np.array(sol.col_value[:nx])
        value = float(h.getInfo().objective_function_value)
        cert = self._certificate(d, sol, keep, const, cell, nk, t_low, value)
        if refine:
            # Among the block-time optima, the one that moves least.
            h.addRow(-inf, value * (1 + 1e-9), ncell, np.arange(nx, ncol, dtype=np.int32), d.w)
            traffic = d.traffic_weights() @ d.A
            h.changeColsCost(ncol, np.arange(ncol, dtype=np.int32), np.concatenate([traffic, np.zeros(ncell)]))
            if self._run() == "optimal":
                col = np.array(h.getSolution().col_value)
                x, value = col[:nx], float(d.w @ col[nx:])
        return "optimal", Solution(_normalised(x), value, cert)

    def _run(self) -> str:
        hs = self.hs
        try:
            self.h.run()
        except Exception as e:  # noqa: BLE001  (reported as a status)
            return f"raised {type(e).__name__}"
        st = self.h.getModelStatus()
        if st == hs.HighsModelStatus.kOptimal:
            return "optimal"
        if st == hs.HighsModelStatus.kInfeasible:
            return "infeasible"
        return "status " + self.h.modelStatusToString(st)

    def _farkas(self, d: LPData, nk: int) -> np.ndarray | None:
        """Memory multipliers proving this LP infeasible, from HiGHS's dual ray (its memory
        rows; T is unbounded above, so the channel rows never cause infeasibility), checked
        with ``fits_under`` whatever the ray's sign convention; None when none checks."""
        try:
            _, has_ray, ray = self.h.getDualRay()
        except Exception:  # noqa: BLE001  (an optimisation only)
            return None
        if not has_ray:
            return None
        ray = np.asarray(ray, float)[nk:nk + 6]
        for lam in (np.clip(-ray, 0.0, None), np.clip(ray, 0.0, None)):
            if lam.any() and not fits_under(d.M[None], d.room[None], lam[None] / lam.max())[0]:
                return lam / lam.max()
        return None

    @staticmethod
    def _certificate(d: LPData, sol, keep, const, cell, nk, t_low, value) -> Certificate:
        """pi and lam from HiGHS's duals: a row ``A x - T <= -b`` at its upper bound has a
        non-positive dual (minimisation), so its weight is minus the dual; a cell whose T sits
        at the bound of a constant row puts T's reduced cost on that row."""
        nx = N_X - 1
        row_dual = np.asarray(sol.row_dual)
        pi = np.zeros(len(d.b))
        pi[keep] = np.clip(-row_dual[:nk], 0.0, None)
        red = np.clip(np.asarray(sol.col_dual)[nx:], 0.0, None)
        for j in np.flatnonzero(red > 0):
            rows = np.flatnonzero(const & (cell == j))
            if len(rows):
                pi[rows[np.argmax(d.b[rows])]] += red[j]
        per_cell = np.bincount(cell, weights=pi, minlength=d.num_cells)
        empty = per_cell <= 0
        if empty.any():  # no dual weight: the cell's largest constant (or any) row
            for j in np.flatnonzero(empty):
                rows = np.flatnonzero(cell == j)
                pi[rows[np.argmax(d.b[rows])]] = 1.0
            per_cell = np.bincount(cell, weights=pi, minlength=d.num_cells)
        pi /= per_cell[cell]
        lam = np.clip(-row_dual[nk:nk + 6], 0.0, None)
        return Certificate(pi, lam, value)


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


class Solvers:
    """Tries ``SOLVERS`` in order for one LP: "HIGHS" is ``HighsLP``, any other name is
    cvxpy's ``PlacementLP`` with that solver. A solver that fails (not installed, an error,
    a status other than optimal or infeasible) is recorded in ``fallbacks`` as one readable
    line and the next one runs; ``failures`` keeps the LPs on which every solver failed."""

    def __init__(self):
        self.fallbacks: list[str] = []
        self.failures: list[tuple[str, list[str]]] = []
        self._highs: HighsLP | None = None
        self.solves = 0
        self.infeasibility: list[np.ndarray] = []  # memory multipliers that proved an LP infeasible

    def solve(self, d: LPData, bound: float | None, fixed: np.ndarray | None, what: str,
              refine: bool = False) -> Solution | None:
        """The LP's solution, or None when it is infeasible or every solver failed."""
        self.solves += 1
        tried = []
        for solver in SOLVERS:
            if solver == "HIGHS":
                try:
                    if self._highs is None:
                        self._highs = HighsLP()
                    status, sol = self._highs.solve(d, bound, fixed, refine)
                    if self._highs.farkas is not None:
                        self.infeasibility.append(self._highs.farkas)
                except ImportError:
                    status, sol = "not installed", None
                except Exception as e:  # noqa: BLE001  (highspy raises its own types: reported, then fallback)
                    status, sol = f"raised {type(e).__name__}", None
            else:
                status, sol = placement_lp(d.num_cells, bound is not None, fixed is not None).solve(
                    d, bound, fixed, solver, refine)
            if status in ("optimal", "infeasible"):
                if tried:
                    self.fallbacks.append(f"{'; '.join(tried)} on {what}; {solver} answered")
                return sol
            tried.append(f"{solver} {status}")
        self.fallbacks.append(f"{'; '.join(tried)} on {what}")
        self.failures.append((what, tried))
        return None

    def error(self) -> SearchError:
        what, tried = self.failures[0]
        more = f" (and {len(self.failures) - 1} other LPs)" if len(self.failures) > 1 else ""
        return SearchError(f"every solver failed on the LP of {what}{more}: {', '.join(tried)}")


# ------------------------------------------------------------------ results
@dataclass
class Plan:
    """The search's answer. ``policy`` is executable (rounded); ``relaxed_policy`` is the
    LP's continuous optimum; both are evaluated with ``estimate()``. ``policy.dtype`` is the
    chosen compute dtype; ``dtype_choice`` says among which and why (``dtype_summary``)."""

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
    candidates: object  # pandas DataFrame, one row per candidate
    search_seconds: float
    candidates_total: int
    candidates_evaluated: int
    candidates_pruned: int
    solver_fallbacks: list = field(default_factory=list)
    constraints: dict = field(default_factory=dict)
    gpus: int = 1
    dtype_choice: dict = field(default_factory=dict)
    engine: str = DEFAULT_ENGINE
    engines: dict = field(default_factory=dict)  # other engines' best plans on the same inputs
    partition: dict = field(default_factory=dict)  # the layouts chosen per phase (simulator.layouts.Choice)

    def comparison(self) -> dict:
        """{engine: (policy, estimate, note)}: every other engine's best plan on the same inputs
        (``engines``), the note saying why one has none."""
        return {k: (p.policy, p.estimate, "" if p.feasible else p.reason) for k, p in self.engines.items()}

    @property
    def dtype(self) -> str | None:
        """The chosen compute dtype (None when nothing is feasible)."""
        return self.policy.dtype if self.policy else self.dtype_choice.get("chosen")

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
        from simulator.report import dtype_text
        cols = ["gpu_batch_size", "num_gpu_batches", "compress_weights", "compress_cache", "cpu_attention", "dtype",
                "throughput_tok_s", "total_latency_s"]
        has = self.candidates is not None and len(self.candidates)
        return {
            "model": self.model, "hardware": self.hardware, "workload": self.workload, "objective": self.objective,
            "constraints": self.constraints, "feasible": self.feasible, "reason": self.reason,
            "dtype": self.dtype,
            "dtype_choice": {**self.dtype_choice, "reason": dtype_text(self)} if self.dtype_choice else {},
            "policy": self.policy.to_dict() if self.policy else None,
            "estimate": self.estimate.to_dict() if self.estimate else None,
            "relaxed": {"policy": self.relaxed_policy.to_dict() if self.relaxed_policy else None,
                        "lp_objective_s": self.lp_objective_s,
                        "throughput_tok_s": self.relaxed_estimate.throughput_tok_s if self.relaxed_estimate else None,
                        "total_latency_s": self.relaxed_estimate.total_latency_s if self.relaxed_estimate else None},
            "engine": self.engine,
            "engines": {k: _engine_dict(v) for k, v in self.engines.items()},
            "pareto": self.pareto()[cols].to_dict("records") if has else [],
            "gpus": self.gpus,
            "layouts": self.layouts()[["tp", "pp", "dp", *cols]].to_dict("records") if has else [],
            "search_seconds": self.search_seconds, "candidates_total": self.candidates_total,
            "candidates_evaluated": self.candidates_evaluated, "candidates_pruned": self.candidates_pruned,
            "solver_fallbacks": self.solver_fallbacks,
            "partition": self.partition_summary(),
        }

    def partition_summary(self) -> dict:
        """The partition layout of each phase of the recommended policy (``simulator.layouts``):
        prefill, decode, attention, and what the choice evaluated (empty on one GPU)."""
        if self.policy is None:
            return dict(self.partition)
        p = self.policy
        return {**self.partition, "prefill": p.prefill_layout, "decode": p.decode_layout,
                "attention": p.attention_layout}


def _engine_dict(p: "Plan") -> dict:
    """Another engine's best plan, compact: its policy (as asked), estimate and why not."""
    est = p.estimate
    return {"feasible": p.feasible, "reason": p.reason, "policy": p.policy.to_dict() if p.policy else None,
            "throughput_tok_s": est.throughput_tok_s if est else None,
            "total_latency_s": est.total_latency_s if est else None,
            "bottleneck": est.bottleneck if est else None, "search_seconds": p.search_seconds}


def _engine_plans(model, hw, workload, objective, max_latency_s, min_throughput_tok_s, space, gpus, current,
                  progress=None) -> dict:
    """Every registered engine's best plan for the same model, machine, workload and bounds
    (the current engine's is the plan itself): what "which engine should I run" compares.
    An engine that cannot run the case says why (its one-line refusal)."""
    from simulator.engines import ENGINES
    out = {}
    for name, eng in ENGINES.items():
        if name == current.name or not eng.in_comparison:
            continue
        try:
            out[name] = search(model, hw, workload, objective, max_latency_s, min_throughput_tok_s, space,
                               gpus=gpus, engine=eng, compare=False, progress=progress)
        except LlmsimError as e:
            out[name] = Plan(model=model.name, hardware=hw.name, workload=workload.to_dict(), objective=objective,
                             feasible=False, reason=" ".join(str(e).split()), policy=None, estimate=None,
                             relaxed_policy=None, relaxed_estimate=None, lp_objective_s=None,
                             candidates=None, search_seconds=0.0, candidates_total=0, candidates_evaluated=0,
                             candidates_pruned=0, gpus=gpus, engine=name)
    return out




# ------------------------------------------------------------------ the search
def _simplex_min(chan: np.ndarray) -> np.ndarray:
    """Minimum over the placement simplex of each affine column: const + sum over the three
    triples of the smallest coefficient. chan (..., 10, K) -> (..., K)."""
    c = chan[..., 0, :]
    for k in range(3):
        c = c + chan[..., 1 + 3 * k:4 + 3 * k, :].min(axis=-2)
    return c


def _policy(cand: tuple, x: np.ndarray, dtype: str, layout=(1, 1, 1), experts=(False, "prefetch")) -> Policy:
    b, nb, cw, cc, ca = cand
    x = [float(v) for v in x]
    tp, pp, dp = layout
    return Policy(gpu_batch_size=int(b), num_gpu_batches=int(nb), weights=Placement(*x[0:3]),
                  cache=Placement(*x[3:6]), activations=Placement(*x[6:9]), cpu_attention=bool(ca),
                  compress_weights=bool(cw), compress_cache=bool(cc), overlap=True, dtype=dtype, tp=tp, pp=pp, dp=dp,
                  expert_parallel=bool(experts[0]), expert_offload=experts[1])


def _describe(cand: tuple, dtype: str, layout, experts=(False, "prefetch")) -> str:
    """A candidate in words, for messages: 'batch 16 x 4, 4-bit weights, fp16'."""
    b, nb, cw, cc, ca = cand
    parts = [f"batch {b} x {nb}"] + [name for on, name in ((cw, "4-bit weights"), (cc, "4-bit cache"),
                                                            (ca, "cpu attention")) if on] + [dtype]
    if tuple(layout) != (1, 1, 1):
        parts.append("tp {} pp {} dp {}".format(*layout))
    if experts != moe.NO_VARIANT:
        parts.append(moe.variant_text(*experts))
    return ", ".join(parts)


def layouts_for(model: ModelSpec, hw: HardwareProfile, gpus: int) -> list[tuple[int, int, int]]:
    """(tp, pp, dp) layouts for ``gpus`` GPUs: tensor degrees that divide the heads (powers
    of two), pipeline degrees up to the layers, and data-parallel replicas using the rest
    of the GPUs (a replica more never lowers throughput)."""
    total = hw.total_gpus
    if gpus < 1 or gpus > max(total, 1):
        raise PolicyError(f"--gpus {gpus}: {hw.name} has {total} GPU(s) ({hw.gpu_count} per node x "
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
class _Group:
    """The candidates of one (parallel layout, compute dtype)."""

    tp: int
    pp: int
    dp: int
    dtype: str
    layout_index: int
    cands: list
    offset: int  # index of this group's first candidate in the global arrays
    engine: object = DEFAULT_ENGINE
    experts: tuple = (False, "prefetch")  # (expert_parallel, expert_offload): simulator.moe.search_variants

    @property
    def layout(self) -> tuple[int, int, int]:
        return self.tp, self.pp, self.dp

    def shapes(self, local) -> BatchShape:
        return _with_experts(shape_of([self.cands[j] for j in local]), self.experts)

    def terms(self, model, hw, workload, local: np.ndarray) -> Terms:
        return build_terms(model, hw, workload, self.shapes(local), self.dtype, self.tp, self.pp, self.dp,
                           self.engine)


def _with_experts(shape: BatchShape, experts) -> BatchShape:
    """A batch shape with the mixture-of-experts switches of a search variant."""
    if experts == moe.NO_VARIANT:
        return shape
    from dataclasses import replace
    n = len(shape)
    return replace(shape, expert_parallel=np.full(n, float(experts[0])),
                   fetch_experts=np.full(n, float(experts[1] == "fetch")),
                   cpu_experts=np.full(n, float(experts[1] == "cpu")))


class _Batch:
    """LP data of a few candidates, built together (``build_terms`` per group), and their
    terms kept until the LP solutions are re-evaluated."""

    def __init__(self):
        self.data: dict[int, LPData] = {}  # global index -> its LP data
        self.terms: list[tuple[Terms, np.ndarray]] = []  # (terms, global index of each shape)


def search(model: ModelSpec, hw: HardwareProfile, workload: Workload, objective: str = "throughput",
           max_latency_s: float | None = None, min_throughput_tok_s: float | None = None,
           space: SearchSpace | None = None, gpus: int = 1, engine=DEFAULT_ENGINE, compare: bool = True,
           progress=None) -> Plan:
    """Find the best executable policy for ``objective`` under the optional bounds, on
    ``gpus`` GPUs (every (tp, pp, dp) layout of ``layouts_for``), over the compute dtypes of
    ``space.dtypes_for`` (default: every dtype the profile rates, ``search_dtypes``), for
    the policies ``engine`` can run (its ``search_space``; the LP is over the engine's own
    terms and the rounding uses its placement rules). ``compare``: also plan every other
    registered engine on the same inputs (``Plan.engines``). ``progress(text)`` hears of each
    stage (a long command shows it).

    ``Plan.search_seconds`` times the search proper (terms, bounds, LPs, rounding, the
    re-evaluation), not the imports (highspy, pandas; cvxpy loads only when a fallback
    solver runs) nor the other engines' plans."""
    import highspy  # noqa: F401  (imported before the clock starts: an import is not search time)
    import pandas as pd

    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise PolicyError(f"--objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    for flag, v in (("--max-latency", max_latency_s), ("--min-throughput", min_throughput_tok_s)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise PolicyError(f"{flag} must be a positive number, got {v!r}")
    eng = get_engine(engine)
    say = progress or (lambda text: None)
    space = eng.search_space(space or SearchSpace())
    dtypes = space.dtypes_for(model, hw)
    # Bad input fails before the first progress line (one line on stderr, nothing else).
    check_inputs(model, hw, workload, Policy(dtype=dtypes[0]), eng)
    layouts = layouts_for(model, hw, gpus)
    say(f"planning {eng.name}: {model.name} on {hw.name}")
    if eng.searcher == "enumerate":
        return _enumerated_search(model, hw, workload, objective, max_latency_s, min_throughput_tok_s, space, gpus,
                                  eng, compare, t0, say)
    same_as = {}
    for k, d in enumerate(dtypes):
        twin = next((e for e in dtypes[:k] if e not in same_as and same_prediction(hw, e, d)), None)
        if twin is not None:
            same_as[d] = twin
    solved_dtypes = [d for d in dtypes if d not in same_as]
    n = workload.gen_len

    # Every (layout, dtype) group's candidates, concatenated: global index = offset + local.
    groups: list[_Group] = []
    G = 0
    for li, (tp, pp, dp) in enumerate(layouts):
        cands = space.candidates()
        if workload.num_sequences is not None:
            cands = [c for c in cands if workload.num_sequences % (c[0] * c[1] * dp) == 0]
        for dt in solved_dtypes:
            for experts in moe.search_variants(model, hw, eng.name, dp, dt):
                if cands:
                    groups.append(_Group(tp, pp, dp, dt, li, cands, G, eng, experts))
                    G += len(cands)
    if not groups:
        raise PolicyError(f"--num-sequences {workload.num_sequences}: no candidate block size divides it")
    grp = np.concatenate([np.full(len(g.cands), k) for k, g in enumerate(groups)])
    loc = np.concatenate([np.arange(len(g.cands)) for g in groups])
    lay_of = np.array([groups[k].layout_index for k in grp])
    cands = [c for g in groups for c in g.cands]
    dp_of = np.array([groups[k].dp for k in grp], float)
    block = np.array([c[0] * c[1] for c in cands], float)
    N = np.full(G, float(workload.num_sequences)) if workload.num_sequences else block * dp_of
    blocks = N / (block * dp_of)  # blocks per replica, one after another
    tokens = block * dp_of * n  # tokens per block round over all replicas

    # Pass 1, cheap bounds of every candidate, from terms built a chunk at a time: each
    # channel at its simplex minimum bounds block time from below; memory at its minimum
    # per tier (and over all tiers together) tells what cannot fit at all.
    ncell = None
    cell_w = lb_block = mem_min3 = mem_all = None
    capacity, pooled = None, False
    for g in groups:
        for lo in range(0, len(g.cands), TERMS_CHUNK):
            local = np.arange(lo, min(lo + TERMS_CHUNK, len(g.cands)))
            T = g.terms(model, hw, workload, local)
            if ncell is None:
                ncell = T.num_cells
                cell_w, lb_block = np.empty((G, ncell)), np.empty(G)
                mem_min3, mem_all, joint_ok = np.empty((G, 3)), np.empty(G), np.empty(G, bool)
                capacity, pooled = np.asarray(T.capacity_bytes, float), T.shared_host_pool
                lams = memory_multipliers(capacity)
            idx = g.offset + local
            cw = cell_weights(T)
            cell_w[idx] = cw
            lb_block[idx] = (_simplex_min(T.chan_lin).reshape(len(local), len(CHANNELS), ncell).max(axis=1)
                             * cw).sum(axis=1)
            mm = _simplex_min(np.moveaxis(T.mem.reshape(len(local), 6, N_X), 1, 2))  # (chunk, 6)
            mem_min3[idx] = mm.reshape(len(local), 2, 3).max(axis=1)
            # Least bytes over all tiers together (the placement moves bytes between tiers).
            mem_all[idx] = _simplex_min(T.mem.sum(axis=2).transpose(0, 2, 1)).max(axis=1)
            joint_ok[idx] = fits_under(*scaled_memory(T.mem, capacity, pooled), lams)
    if pooled:
        mem_ok = (mem_min3[:, 0] + mem_min3[:, 1] <= capacity[1]) & (mem_min3[:, 2] <= capacity[2])
    else:
        mem_ok = np.all(mem_min3 <= capacity, axis=1)
    mem_ok &= joint_ok
    # Bound from --max-latency / --min-throughput on the block time.
    bound = np.full(G, np.inf)
    if max_latency_s is not None:
        bound = np.minimum(bound, max_latency_s / blocks)
    if min_throughput_tok_s is not None:
        bound = np.minimum(bound, tokens / min_throughput_tok_s)

    def score_of(i, block_s):
        return tokens[i] / block_s if objective == "throughput" else -block_s * blocks[i]

    ub_score = tokens / lb_block if objective == "throughput" else -lb_block * blocks
    order = np.argsort(-ub_score, kind="stable")

    # Pass 2, branch and bound per layout (the report compares each layout's best); the
    # overall best is the best of those. LP data are built a batch at a time, for the next
    # candidates in bound order that may still beat their layout's best.
    solvers = Solvers()
    solved = np.zeros(G, bool)
    pruned = np.zeros(G, bool)
    lp_obj = np.full(G, np.nan)
    xs = np.full((G, N_X - 1), np.nan)
    lay_best = np.full(len(layouts), -np.inf)
    lay_cert: dict[int, Certificate] = {}
    cls_cert: dict[tuple, Certificate] = {}
    best_score, best_i = -np.inf, None
    fetched = np.zeros(G, bool)
    tight_lb = lb_block.copy()  # the best lower bound on each candidate's block time known (dual bounds)
    live = mem_ok & (lb_block <= bound)
    # Every LP solution re-evaluated with the cost model (step terms included).
    thr = np.full(G, np.nan)
    lat = np.full(G, np.nan)
    feas = np.zeros(G, bool)

    def reevaluate(T: Terms, sel: np.ndarray, rows: np.ndarray) -> None:
        """Candidates ``sel`` (global), whose shapes are rows ``rows`` of ``T``."""
        ev = evaluate(take(T, rows), np.concatenate([np.ones((len(sel), 1)), xs[sel]], axis=1), True)
        total = ev.prefill_s + ev.decode_s
        thr[sel] = block[sel] * n / total * dp_of[sel]
        lat[sel] = total * blocks[sel]
        feas[sel] = feasible_mask(ev.mem.max(axis=1), capacity, pooled)

    def finish(batch: _Batch) -> None:
        """Re-evaluate a batch's solved candidates; its terms are dropped after."""
        for T, sel in batch.terms:
            ok = ~np.isnan(lp_obj[sel])
            if ok.any():
                reevaluate(T, sel[ok], np.flatnonzero(ok))
        batch.terms.clear()

    def fetch(pos: int, previous: _Batch) -> _Batch:
        """The next candidates from ``order[pos]`` on that are live, not yet fetched and may
        still beat their layout's best (``order[pos]`` first): their LP data."""
        finish(previous)  # every candidate of it comes before order[pos]
        rest = order[pos:]
        pick = rest[(live & ~fetched & (ub_score > lay_best[lay_of]))[rest]][:SOLVE_BATCH]
        fetched[pick] = True
        batch = _Batch()
        for k in np.unique(grp[pick]):
            sel = pick[grp[pick] == k]
            T = groups[k].terms(model, hw, workload, loc[sel])
            for j, i in enumerate(sel):
                batch.data[int(i)] = lp_data(T.chan_lin[j], T.mem[j], capacity, pooled, cell_w[i])
            batch.terms.append((T, sel))
        return batch

    batch = _Batch()
    for pos, i in enumerate(order):
        li = lay_of[i]
        if not live[i]:
            continue
        if ub_score[i] <= lay_best[li]:
            pruned[i] = True
            continue
        if int(i) not in batch.data:
            batch = fetch(pos, batch)
        d = batch.data[int(i)]  # fetch() picks i first: it is live, unfetched and may beat its layout
        g = groups[grp[i]]
        flags = (grp[i], *cands[i][2:])
        certs = [c for c in (lay_cert.get(li), cls_cert.get(flags)) if c is not None]
        dual_lb = max([lb_block[i]] + [c.bound_s(d, lb_block[i]) for c in certs])
        tight_lb[i] = dual_lb
        if dual_lb > bound[i] * (1 + 1e-9) or score_of(i, dual_lb) <= lay_best[li]:
            pruned[i] = True
            continue
        if solvers.infeasibility and not fits_under(d.M[None], d.room[None], np.array(solvers.infeasibility))[0]:
            continue  # no placement fits: proved by the multipliers of an infeasible LP seen before
        sol = solvers.solve(d, bound[i] if np.isfinite(bound[i]) else None, None,
                            _describe(cands[i], g.dtype, g.layout, g.experts))
        solved[i] = True
        if sol is None:
            continue
        xs[i], lp_obj[i] = sol.x, sol.value_s
        if sol.certificate is not None:
            sol.certificate.scale_s = lb_block[i]
            cls_cert[flags] = sol.certificate
        score = score_of(i, lp_obj[i])
        if score > lay_best[li]:
            lay_best[li] = score
            if sol.certificate is not None:
                lay_cert[li] = sol.certificate
        if score > best_score:
            best_score, best_i = score, i
    finish(batch)

    ok = ~np.isnan(lp_obj)
    df = pd.DataFrame(cands, columns=["gpu_batch_size", "num_gpu_batches", "compress_weights", "compress_cache",
                                      "cpu_attention"])
    df["dtype"] = [groups[k].dtype for k in grp]
    df["tp"] = [groups[k].tp for k in grp]
    df["pp"] = [groups[k].pp for k in grp]
    df["dp"] = dp_of.astype(int)
    if model.is_moe:
        df["expert_parallel"] = [groups[k].experts[0] for k in grp]
        df["expert_offload"] = [groups[k].experts[1] for k in grp]
    df["fits"] = mem_ok  # some placement may fit every tier (False: proved not to)
    df["solved"] = ok
    df["pruned"] = pruned
    df["lp_block_time_s"] = lp_obj
    df["bound_throughput_tok_s"] = tokens / lb_block
    df["throughput_tok_s"] = thr
    df["total_latency_s"] = lat
    df["feasible"] = feas
    for k, name in enumerate(("weights", "cache", "activations")):
        for j, tier in enumerate(("gpu", "cpu", "disk")):
            df[f"{name}_{tier}_frac"] = xs[:, 3 * k + j]

    constraints = {"max_latency_s": max_latency_s, "min_throughput_tok_s": min_throughput_tok_s}
    common = dict(model=model.name, hardware=hw.name, workload=workload.to_dict(), objective=objective,
                  candidates=df, candidates_total=G, constraints=constraints, gpus=gpus, engine=eng.name,
                  engines=_engine_plans(model, hw, workload, objective, max_latency_s, min_throughput_tok_s, space,
                                        gpus, eng, say) if compare else {})

    def single_terms(i) -> Terms:
        return groups[grp[i]].terms(model, hw, workload, np.array([loc[i]]))

    if best_i is None:
        if solvers.failures and not ok.any():
            raise solvers.error()
        if solved.sum() == 0 and not mem_ok.any():
            reason = _shortfall(mem_min3, mem_all, capacity, pooled)
        else:
            reason = "no candidate meets the bounds" if np.isfinite(bound).any() else \
                _shortfall(mem_min3, mem_all, capacity, pooled)
        part = None
        if gpus > 1 and getattr(eng, "partition_layouts", False):
            # No Megatron plan fits; a partition layout may (a batch-sharded multi-query cache).
            from simulator.layouts import choose
            part = choose(model, hw, workload, None, None, eng, objective, max_latency_s, min_throughput_tok_s,
                          gpus, _partition_batches(space))
        search_s = time.perf_counter() - t0
        if part is not None and part.improved:
            pol = part.policy
            choice = _dtype_choice(model, hw, df, dtypes, same_as, space.dtype is not None, objective, pol.dtype, pol)
            return Plan(feasible=True, reason="", policy=pol, estimate=part.estimate, relaxed_policy=None,
                        relaxed_estimate=None, lp_objective_s=None, search_seconds=search_s,
                        candidates_evaluated=solvers.solves, candidates_pruned=int(pruned.sum()),
                        solver_fallbacks=solvers.fallbacks, dtype_choice=choice, partition=part.describe(), **common)
        choice = _dtype_choice(model, hw, df, dtypes, same_as, space.dtype is not None, objective, None, None)
        return Plan(feasible=False, reason=reason, policy=None, estimate=None, relaxed_policy=None,
                    relaxed_estimate=None, lp_objective_s=None, search_seconds=search_s,
                    candidates_evaluated=solvers.solves, candidates_pruned=int(pruned.sum()),
                    solver_fallbacks=solvers.fallbacks, dtype_choice=choice, **common)

    # Among the winner's LP optima, the one that moves least (see PlacementLP).
    g = groups[grp[best_i]]
    T_best = single_terms(best_i)
    d = lp_data(T_best.chan_lin[0], T_best.mem[0], capacity, pooled, cell_w[best_i])
    refined = solvers.solve(d, bound[best_i] if np.isfinite(bound[best_i]) else None, None,
                            _describe(cands[best_i], g.dtype, g.layout, g.experts), refine=True)
    if refined is not None:
        xs[best_i], lp_obj[best_i] = refined.x, refined.value_s
        reevaluate(T_best, np.array([best_i]), np.array([0]))
        df.loc[best_i, "lp_block_time_s"] = lp_obj[best_i]
        for col, v in (("throughput_tok_s", thr), ("total_latency_s", lat), ("feasible", feas)):
            df.loc[best_i, col] = v[best_i]
        for k, name in enumerate(("weights", "cache", "activations")):
            for j, tier in enumerate(("gpu", "cpu", "disk")):
                df.loc[best_i, f"{name}_{tier}_frac"] = xs[best_i, 3 * k + j]

    relaxed = _policy(cands[best_i], xs[best_i], g.dtype, g.layout, g.experts)
    # Rounding, branch and bound again: the LP is a relaxation (continuous fractions, no step
    # terms), so a candidate's LP score bounds its every rounding. Candidates are rounded in
    # the order of that bound - solved ones by their LP optimum, the others (pruned by the LP
    # of a better candidate) by their cheap bound, their LP solved on the way - and the best
    # rounded policy wins once no remaining bound can beat it (at most ROUNDING_CANDIDATES
    # roundings: FlexGen's coarse placements can lose much to rounding, the executor's little).
    upper = np.array([score_of(i, lp_obj[i] if ok[i] else tight_lb[i]) for i in range(G)])
    queue = sorted((i for i in range(G) if live[i] and (ok[i] or not solved[i]) and i != best_i),
                   key=lambda i: -upper[i])
    rounded, best_est, best_sc, tried = None, None, -np.inf, 0
    for i in [best_i] + queue:
        if tried >= ROUNDING_CANDIDATES or upper[i] <= best_sc * (1 + 1e-9):
            break
        gi = groups[grp[i]]
        T_i = T_best if i == best_i else single_terms(i)
        if not ok[i]:
            sol = solvers.solve(lp_data(T_i.chan_lin[0], T_i.mem[0], capacity, pooled, cell_w[i]),
                                bound[i] if np.isfinite(bound[i]) else None, None,
                                _describe(cands[i], gi.dtype, gi.layout, gi.experts))
            solved[i] = True
            if sol is None:
                continue
            xs[i], lp_obj[i] = sol.x, sol.value_s
            if score_of(i, lp_obj[i]) <= best_sc:
                continue
        tried += 1
        rounder = _Rounder(model, hw, workload, T_i, gi.shapes([loc[i]]), capacity, gi.dtype, objective,
                           solvers, gi.layout, eng, gi.experts)
        pol = rounder.round(cands[i], 0, xs[i], bound[i], cell_w[i])
        if pol is None:
            continue
        est_i = estimate(model, hw, workload, pol, eng)
        sc = est_i.throughput_tok_s if objective == "throughput" else -est_i.total_latency_s
        if est_i.feasible and sc > best_sc:
            rounded, best_est, best_sc = pol, est_i, sc
    partition = {}
    if gpus > 1 and getattr(eng, "partition_layouts", False):
        # The layout of each phase (simulator.layouts, arXiv 2211.05102 section 3) for GPU-resident plans.
        say("choosing the partition layout of each phase")
        from simulator.layouts import choose
        part = choose(model, hw, workload, rounded, best_est, eng, objective, max_latency_s, min_throughput_tok_s,
                      gpus, _partition_batches(space))
        if part.improved:
            rounded, best_est = part.policy, part.estimate
        partition = part.describe()
    search_s = time.perf_counter() - t0
    est = best_est
    reason = ""
    if est is None:
        from simulator.report import policy_text
        reason = (f"the LP optimum ({policy_text(relaxed.to_dict())}) cannot be placed with whole tensors per "
                  "layer within capacity: every executable split near it overflows a tier")
    chosen = rounded or relaxed
    choice = _dtype_choice(model, hw, df, dtypes, same_as, space.dtype is not None, objective, chosen.dtype,
                           chosen)
    return Plan(feasible=est is not None and est.feasible, reason=reason,
                policy=rounded, estimate=est, relaxed_policy=relaxed,
                relaxed_estimate=_relaxed_estimate(model, hw, workload, relaxed, eng),
                lp_objective_s=float(lp_obj[best_i]),
                search_seconds=search_s,
                candidates_evaluated=solvers.solves, candidates_pruned=int(pruned.sum()),
                solver_fallbacks=solvers.fallbacks, dtype_choice=choice, partition=partition, **common)


def _partition_batches(space: SearchSpace) -> tuple:
    """Batch sizes the partition layouts are tried at: the space's, and with the default space
    the larger decode batches of arXiv 2211.05102 (``layouts.PARTITION_BATCH_SIZES``) too."""
    from simulator.layouts import PARTITION_BATCH_SIZES
    sizes = tuple(space.gpu_batch_sizes)
    return sizes + PARTITION_BATCH_SIZES if sizes == GPU_BATCH_SIZES else sizes


def _enumerated_search(model, hw, workload, objective, max_latency_s, min_throughput_tok_s, space, gpus, eng,
                       compare, t0, say=None) -> Plan:
    """The plan of an engine searched by enumeration (``Engine.searcher == "enumerate"``:
    Accelerate's whole-layer device maps, ZeRO-Inference's tiers and flags): every candidate
    policy the engine proposes, evaluated with ``estimate()``; the best feasible one within
    the bounds wins. Its continuous relaxation is not an LP of fractions (all weights on one
    tier, whole layers), so there is no LP optimum to report."""
    import pandas as pd

    cands = [p for p in eng.candidate_policies(model, hw, workload, space, gpus)
             if workload.num_sequences is None or workload.num_sequences % (p.block_size * p.dp) == 0]
    rows, best, best_sc, why = [], None, -np.inf, ""
    for pol in cands:
        try:
            est = estimate(model, hw, workload, pol, eng)
        except LlmsimError as e:
            why = why or " ".join(str(e).split())
            continue
        ok = est.feasible and (max_latency_s is None or est.total_latency_s <= max_latency_s) and \
            (min_throughput_tok_s is None or est.throughput_tok_s >= min_throughput_tok_s)
        rows.append({"gpu_batch_size": pol.gpu_batch_size, "num_gpu_batches": pol.num_gpu_batches,
                     "compress_weights": pol.compress_weights, "compress_cache": pol.compress_cache,
                     "cpu_attention": est.policy["cpu_attention"], "dtype": pol.dtype, "tp": 1, "pp": 1, "dp": pol.dp,
                     "fits": est.feasible, "solved": True, "pruned": False, "lp_block_time_s": np.nan,
                     "bound_throughput_tok_s": np.nan, "throughput_tok_s": est.throughput_tok_s,
                     "total_latency_s": est.total_latency_s, "feasible": bool(ok),
                     **{f"{k}_{t}_frac": est.policy[k][f"{t}_frac"] for k in ("weights", "cache", "activations")
                        for t in ("gpu", "cpu", "disk")}})
        sc = est.throughput_tok_s if objective == "throughput" else -est.total_latency_s
        if ok and sc > best_sc:
            best, best_sc = (pol, est), sc
    if not rows and why:
        raise PolicyError(why)
    if best:
        reason = ""
    elif any(r["fits"] for r in rows):
        reason = "no candidate meets the bounds"
    else:
        reason = f"nothing fits: no {eng.name} configuration of these batch sizes fits the machine's memory"
    pol, est = best or (None, None)
    return Plan(model=model.name, hardware=hw.name, workload=workload.to_dict(), objective=objective,
                feasible=best is not None, reason=reason, policy=pol, estimate=est, relaxed_policy=None,
                relaxed_estimate=None, lp_objective_s=None, candidates=pd.DataFrame(rows),
                search_seconds=time.perf_counter() - t0, candidates_total=len(cands), candidates_evaluated=len(rows),
                candidates_pruned=0, constraints={"max_latency_s": max_latency_s,
                                                  "min_throughput_tok_s": min_throughput_tok_s},
                gpus=gpus, engine=eng.name,
                engines=_engine_plans(model, hw, workload, objective, max_latency_s, min_throughput_tok_s, space,
                                      gpus, eng, say) if compare else {})


def _relaxed_estimate(model, hw, workload, relaxed: Policy, eng) -> Estimate | None:
    """``estimate()`` of the LP's continuous optimum, or None where the engine cannot run
    fractions like it (FlexGen keeps activations on one tier, for one)."""
    try:
        return estimate(model, hw, workload, relaxed, eng)
    except PolicyError:
        return None


def gemm_rate_flop_per_s(model: ModelSpec, hw: HardwareProfile, dtype: str, m: int, tp: int = 1) -> float:
    """Achieved FLOP/s of one layer's dense GEMMs for m tokens on one tensor-parallel rank,
    as the cost model times them (``cost.layer_matmul_time_s``: measured table or
    roofline): sum of 2 m k n over the layer's GEMMs / their time. Unit: FLOP/s."""
    flop = 0.0
    for k, n_, cnt, split in layer_gemm_splits(model):
        if split == "col":
            n_ = -(-n_ // tp)
        elif split == "row":
            k = -(-k // tp)
        flop += cnt * 2.0 * m * k * n_
    return flop / float(layer_matmul_time_s(model, hw.device, m, dtype, tp))


def _dtype_choice(model, hw, df, dtypes, same_as, forced, objective, chosen, policy) -> dict:
    """Why the plan runs in its dtype, from the numbers the search used: per dtype its best
    re-evaluated LP optimum (or, when every candidate was pruned, its best bound), and the
    layer-GEMM rate at the plan's decode batch (m = gpu_batch_size) on the compute device."""
    m = policy.gpu_batch_size if policy else 1
    tp = policy.tp if policy else 1
    per = {}
    for d in dtypes:
        src = same_as.get(d, d)
        rows = df[df["dtype"] == src]
        good = rows[rows["solved"] & rows["feasible"]]
        entry = {"same_as": same_as.get(d), "best_throughput_tok_s": None, "best_latency_s": None,
                 "bound_throughput_tok_s": float(rows.loc[rows["fits"], "bound_throughput_tok_s"].max())
                 if rows["fits"].any() else None,
                 "gemm_flop_per_s": gemm_rate_flop_per_s(model, hw, d, m, tp),
                 "gemm_source": "measured" if any(c.dtype == d for c in hw.device.matmul_curves) else "peak",
                 "peak_flop_per_s": hw.device.peak_flop_per_s(d)}
        if len(good):
            top = good.sort_values("throughput_tok_s" if objective == "throughput" else "total_latency_s",
                                   ascending=(objective != "throughput")).iloc[0]
            entry["best_throughput_tok_s"] = float(top["throughput_tok_s"])
            entry["best_latency_s"] = float(top["total_latency_s"])
        per[d] = entry
    return {"chosen": chosen, "searched": list(dtypes), "forced": forced, "objective": objective,
            "gemm_m": m, "device": hw.device.name, "per_dtype": per}


def _default_dtype(model: ModelSpec, hw: HardwareProfile) -> str:
    """The model's dtype where the profile rates it, else fp16, bf16 or fp32 (the dtype a
    search forced to one dtype used before it searched them; kept for callers that force)."""
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


class _Rounder:
    """Rounds an LP solution to an executable policy: the achievable whole-tensor weight
    placements nearest the optimum, each with the LP re-solved for cache and activations
    (weights fixed), then the nearby whole-row splits of cache and activations; the best
    feasible by the cost model (vectorized, latency terms included) wins."""

    def __init__(self, model, hw, workload, terms, shapes, capacity, dtype, objective, solvers: Solvers,
                 layout=(1, 1, 1), engine=DEFAULT_ENGINE, experts=(False, "prefetch")):
        self.model, self.hw, self.workload, self.terms, self.shapes = model, hw, workload, terms, shapes
        self.layout, self.engine, self.experts = layout, get_engine(engine), experts
        self.capacity, self.dtype, self.objective, self.solvers = capacity, dtype, objective, solvers
        self.lp_solves = 0

    def round(self, cand, i, x, bound, cell_w) -> Policy | None:
        b, nb, cw, cc, ca = cand
        fmt = "int4" if cw else self.dtype
        options = self.engine.weight_options(self.model, fmt)  # (asked, realized)
        options.sort(key=lambda o: float(np.abs(np.array(o[1].as_tuple()) - x[0:3]).sum()))
        bounded = bool(np.isfinite(bound))
        d = lp_data(self.terms.chan_lin[i], self.terms.mem[i], self.capacity, self.terms.shared_host_pool, cell_w)
        what = _describe(cand, self.dtype, self.layout, self.experts) + " (rounding)"
        X, asked = [], []
        found = 0
        for ask, wp in options[:ROUNDING_MAX_TRIES]:
            if found == ROUNDING_NEIGHBOURS:
                break
            w = np.array(wp.as_tuple())
            res = self.solvers.solve(d, bound if bounded else None, w, what, refine=True)
            self.lp_solves += 1
            if res is None:
                continue
            found += 1
            x2 = res.x
            cache_rows, cache_splits = self.engine.cache_splits(self.model, b, x2[3:6], bool(cc))
            for cg, cc_, cd in cache_splits:
                for hg, hc, hd in self.engine.activation_splits(b, x2[6:9]):
                    X.append([1.0, *w, cg / cache_rows, cc_ / cache_rows, cd / cache_rows, hg / b, hc / b, hd / b])
                    asked.append(ask)
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
        k = int(score.argmax())
        x = np.concatenate([asked[k].as_tuple(), X[k][4:]])  # the placement the engine is asked for
        return _policy(cand, x, self.dtype, self.layout, self.experts)
