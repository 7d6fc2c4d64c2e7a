"""Vectorized evaluation of many policies (sweeps, the brute-force grid, the search's pruning).

The formulas are those of ``simulator.cost``: this module only groups policies by batch
shape, builds each shape's ``Terms`` once (vectorized over shapes) and evaluates all
fraction vectors of a shape with one matrix product (``cost.evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.cost import BatchShape, Terms, build_terms, check_inputs, evaluate, fraction_vector
from simulator.hardware import HardwareProfile
from simulator.models import ModelSpec
from simulator.policy import Policy, Workload


@dataclass
class SweepResult:
    """Per-policy arrays (length Q). Latencies cover one block (``block_size`` sequences)."""

    prefill_s: np.ndarray
    decode_s: np.ndarray
    total_s: np.ndarray
    throughput_tok_s: np.ndarray
    peak_bytes: np.ndarray  # (Q, 3): gpu, cpu, disk (max over phases)
    feasible: np.ndarray


def take(terms: Terms, p) -> Terms:
    """The terms of batch shape p alone (P = 1), or of the shapes of an index array p (in
    that order)."""
    return terms.take(p)


def feasible_mask(peak: np.ndarray, capacity, shared_host_pool: bool) -> np.ndarray:
    """Vectorized ``cost.memory_verdict``: peak (Q, 3) bytes against the tier capacities."""
    cap = np.asarray(capacity, dtype=float)
    if shared_host_pool:
        return (peak[:, 0] + peak[:, 1] <= cap[1]) & (peak[:, 2] <= cap[2])
    return np.all(peak <= cap, axis=1)


def evaluate_arrays(model: ModelSpec, hw: HardwareProfile, workload: Workload, shapes: BatchShape,
                    shape_index: np.ndarray, X: np.ndarray, overlap: np.ndarray, dtype: str,
                    terms: Terms | None = None) -> SweepResult:
    """Evaluate Q policies given as arrays: ``shape_index[q]`` picks a row of ``shapes``,
    ``X[q]`` is its fraction vector [1, w_g, ..., h_d], ``overlap[q]`` its switch.

    Equals ``cost.estimate`` policy by policy (a test checks it) at a fraction of the cost.
    """
    X = np.asarray(X, dtype=float)
    Q = X.shape[0]
    shape_index = np.asarray(shape_index)
    overlap = np.broadcast_to(np.asarray(overlap, bool), (Q,))
    if terms is None:
        terms = build_terms(model, hw, workload, shapes, dtype)
    prefill, decode = np.empty(Q), np.empty(Q)
    peak = np.empty((Q, 3))
    for p in np.unique(shape_index):
        sel = np.flatnonzero(shape_index == p)
        ev = evaluate(take(terms, int(p)), X[sel], overlap[sel])
        prefill[sel], decode[sel] = ev.prefill_s, ev.decode_s
        peak[sel] = ev.mem.max(axis=1)
    total = prefill + decode
    block = (shapes.gpu_batch_size * shapes.num_gpu_batches)[shape_index]
    thr = block * workload.gen_len / total
    return SweepResult(prefill, decode, total, thr, peak, feasible_mask(peak, terms.capacity_bytes,
                                                                        terms.shared_host_pool))


def evaluate_policies(model: ModelSpec, hw: HardwareProfile, workload: Workload, policies: list[Policy]):
    """A tidy DataFrame with one row per policy: its fields, latencies, throughput, peak
    memory per tier and feasibility. All policies must share one dtype."""
    import pandas as pd

    policies = list(policies)
    if not policies:
        return pd.DataFrame()
    dtypes = {p.dtype for p in policies}
    if len(dtypes) != 1:
        from simulator.errors import PolicyError
        raise PolicyError(f"evaluate_policies: policies mix dtypes {sorted(dtypes)}; sweep one dtype at a time")
    for p in policies:
        check_inputs(model, hw, Workload(workload.prompt_len, workload.gen_len), p)
    keys = [(p.gpu_batch_size, p.num_gpu_batches, p.cpu_attention, p.compress_weights, p.compress_cache,
             p.disk_io, p.expert_parallel, p.expert_offload == "fetch", p.expert_offload == "cpu") for p in policies]
    uniq = list(dict.fromkeys(keys))
    index = {k: i for i, k in enumerate(uniq)}
    shapes = BatchShape(*(np.array([k[j] for k in uniq], float) for j in range(5)),
                        np.array([k[5] == "cached" for k in uniq], float),
                        *(np.array([k[j] for k in uniq], float) for j in (6, 7, 8)))
    X = np.stack([fraction_vector(p) for p in policies])
    res = evaluate_arrays(model, hw, workload, shapes, np.array([index[k] for k in keys]), X,
                          np.array([p.overlap for p in policies]), dtypes.pop())
    rows = []
    for i, p in enumerate(policies):
        d = p.to_dict()
        for name in ("weights", "cache", "activations"):
            for tier, v in d.pop(name).items():
                d[f"{name}_{tier}"] = v
        rows.append(d)
    df = pd.DataFrame(rows)
    df["prefill_latency_s"] = res.prefill_s
    df["decode_latency_s"] = res.decode_s
    df["total_latency_s"] = res.total_s
    df["throughput_tok_s"] = res.throughput_tok_s
    for k, tier in enumerate(("gpu", "cpu", "disk")):
        df[f"peak_{tier}_bytes"] = res.peak_bytes[:, k]
    df["feasible"] = res.feasible
    return df
