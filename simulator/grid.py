"""Brute-force reference for the search: every placement on a regular grid (each fraction
in steps of 1/steps, every triple summing to 1), for every batch candidate of every
compute dtype and parallel layout the search considers, evaluated with the cost model.
Exact, but pruned:

- a candidate is skipped when a lower bound on its block time (each channel at its
  minimum over the placement simplex, memory ignored) shows it cannot beat the best point
  found so far;
- within a candidate, a (weights, cache) grid pair is skipped when the same bound with the
  activations at their per-column minimum cannot beat it, or when no activation split can
  meet every memory capacity;
- every point that survives is evaluated with ``cost.evaluate`` (latency terms included).

Lower bounds are valid because block time is a sum over cells of a max over channels of
affine functions, and dropping the (non-negative) latency terms only lowers it. So the
result is the grid's true best, as if all steps^... points had been evaluated. The grid
shares no pruning with the search (no LP, no duals, no dtype deduplication): it is the
independent reference the search is measured against.
"""

from __future__ import annotations

import numpy as np

from simulator.cost import CHANNELS, N_X, build_terms, cell_weights, check_inputs
from simulator.hardware import HardwareProfile
from simulator.models import ModelSpec
from simulator.policy import Policy, Workload
from simulator.search import TERMS_CHUNK, SearchSpace, layouts_for, shape_of
from simulator.sweep import evaluate_arrays


def simplex_grid(steps: int) -> np.ndarray:
    """All (g, c, d) with each a multiple of 1/steps summing to 1: (steps+1)(steps+2)/2 rows."""
    return np.array([(a / steps, b / steps, (steps - a - b) / steps)
                     for a in range(steps + 1) for b in range(steps + 1 - a)])


def _simplex_min(a):  # (10, K) -> (K,)
    return a[0] + sum(a[1 + 3 * k:4 + 3 * k].min(axis=0) for k in range(3))


def grid_best(model: ModelSpec, hw: HardwareProfile, workload: Workload, space: SearchSpace,
              steps: int = 20, gpus: int = 1) -> dict:
    """The grid's best throughput over ``space``'s candidates (overlap on, one block per
    replica) in every dtype of ``space.dtypes_for`` and every layout of
    ``search.layouts_for(gpus)``.

    Returns {throughput_tok_s, candidate, dtype, layout (tp, pp, dp), fractions (9),
    points (grid points per candidate), evaluated (points evaluated exactly),
    candidates_skipped, candidates}."""
    dtypes = space.dtypes_for(model, hw)
    check_inputs(model, hw, workload, Policy(dtype=dtypes[0]))
    tri = simplex_grid(steps)
    nt = len(tri)
    nch = len(CHANNELS)

    # Every (layout, dtype) group with its candidates' bounds (terms built a chunk at a time).
    groups = []
    for tp, pp, dp in layouts_for(model, hw, gpus):
        cands = space.candidates()
        if workload.num_sequences is not None:
            cands = [c for c in cands if workload.num_sequences % (c[0] * c[1] * dp) == 0]
        if not cands:
            continue
        shapes = shape_of(cands)
        tokens = shapes.gpu_batch_size * shapes.num_gpu_batches * workload.gen_len * dp
        for dt in dtypes:
            lb = np.empty(len(cands))
            for lo in range(0, len(cands), TERMS_CHUNK):
                sel = np.arange(lo, min(lo + TERMS_CHUNK, len(cands)))
                T = build_terms(model, hw, workload, shape_of([cands[i] for i in sel]), dt, tp, pp, dp)
                cw = cell_weights(T)
                ncell = T.num_cells
                lb[sel] = [(_simplex_min(T.chan_lin[j]).reshape(nch, ncell).max(axis=0) * cw[j]).sum()
                           for j in range(len(sel))]
            groups.append(((tp, pp, dp), dt, cands, shapes, tokens / lb))

    best_thr, best = 0.0, None
    evaluated = skipped = total = 0
    # Groups with the best bound first, so the incumbent prunes the others early.
    for (tp, pp, dp), dt, cands, shapes, ub in sorted(groups, key=lambda g: -g[4].max()):
        total += len(cands)
        if ub.max() <= best_thr:
            skipped += len(cands)
            continue
        terms = build_terms(model, hw, workload, shapes, dt, tp, pp, dp)
        ncell = terms.num_cells
        cw_all = cell_weights(terms)  # (P, cells)
        tokens = shapes.gpu_batch_size * shapes.num_gpu_batches * workload.gen_len * dp
        cap = np.asarray(terms.capacity_bytes, float)
        for p in np.argsort(-ub):
            if ub[p] <= best_thr:
                skipped += 1
                continue
            C = terms.chan_lin[p]  # (10, nch*ncell)
            cell_w = cw_all[p]
            Pw, Pc, Ph = tri @ C[1:4], tri @ C[4:7], tri @ C[7:10]
            M = terms.mem[p].reshape(6, N_X).copy()
            cap6 = np.tile(cap, 2)
            if terms.shared_host_pool:
                for ph in (0, 1):
                    M[3 * ph + 1] += M[3 * ph]
                    M[3 * ph] = 0.0
            Mw, Mc, Mh = tri @ M[:, 1:4].T, tri @ M[:, 4:7].T, tri @ M[:, 7:10].T  # (nt, 6)
            for iw in range(nt):
                base = C[0] + Pw[iw] + Pc  # (nt cache points, K)
                low = (base + Ph.min(axis=0)).reshape(nt, nch, ncell).max(axis=1) @ cell_w
                mem_low = M[:, 0] + Mw[iw] + Mc + Mh.min(axis=0)  # (nt, 6)
                ok = np.all(mem_low <= cap6, axis=1) & (tokens[p] / low > best_thr)
                for ic in np.flatnonzero(ok):
                    X = np.empty((nt, N_X))
                    X[:, 0] = 1.0
                    X[:, 1:4] = tri[iw]
                    X[:, 4:7] = tri[ic]
                    X[:, 7:10] = tri
                    ev = evaluate_arrays(model, hw, workload, shapes, np.full(nt, p), X, np.ones(nt, bool), dt,
                                         terms=terms)
                    evaluated += nt
                    thr = np.where(ev.feasible, ev.throughput_tok_s * dp, 0.0)
                    j = int(thr.argmax())
                    if thr[j] > best_thr:
                        best_thr, best = float(thr[j]), (cands[p], X[j, 1:].copy(), dt, (tp, pp, dp))
        del terms
    return {"throughput_tok_s": best_thr, "candidate": best[0] if best else None,
            "fractions": best[1] if best else None, "dtype": best[2] if best else None,
            "layout": best[3] if best else None, "points": nt ** 3, "evaluated": evaluated,
            "candidates_skipped": skipped, "candidates": total}
