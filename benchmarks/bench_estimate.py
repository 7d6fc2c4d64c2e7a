"""Speed of the cost model: one estimate, and the vectorized path over many policies.

Targets (issue 2, on the 2-core CI machine): one estimate <= 200 us; the vectorized path
>= 100,000 policies per second. Each figure is printed with its ratio to the target and to
a reference measured in the same run (the scalar estimate() loop).

    python benchmarks/bench_estimate.py [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from simulator.cost import BatchShape, cached_terms, estimate
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload
from simulator.sweep import evaluate_arrays


def _best_of(fn, repeats: int, rounds: int = 5) -> float:
    """Median over rounds of the mean time per call (seconds)."""
    per = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        per.append((time.perf_counter() - t) / repeats)
    return float(np.median(per))


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--policies", type=int, default=100_000)
    args = ap.parse_args()

    model, hw, wl = get_model("opt-30b"), load_profile("t4-gcp"), Workload(512, 32)
    pol = Policy(gpu_batch_size=48, num_gpu_batches=4, weights=Placement(0.1, 0.9, 0), cache=Placement(0, 1, 0),
                 activations=Placement(0, 1, 0), cpu_attention=True)
    estimate(model, hw, wl, pol)
    warm = _best_of(lambda: estimate(model, hw, wl, pol), 500)

    def cold():
        cached_terms.cache_clear()
        estimate(model, hw, wl, pol)
    cold_s = _best_of(cold, 100)

    rng = np.random.default_rng(0)
    Q = args.policies
    bs = np.array([1, 2, 4, 8, 16, 32, 48, 64], float)
    nbs = np.array([1, 2, 4, 8, 12, 16], float)
    shapes = BatchShape(np.repeat(bs, len(nbs)), np.tile(nbs, len(bs)), np.ones(48), np.zeros(48), np.zeros(48),
                        np.zeros(48))
    idx = rng.integers(0, 48, Q)
    fr = rng.dirichlet(np.ones(3), size=(Q, 3)).reshape(Q, 9)
    X = np.concatenate([np.ones((Q, 1)), fr], axis=1)
    t = time.perf_counter()
    res = evaluate_arrays(model, hw, wl, shapes, idx, X, np.ones(Q, bool), "fp16")
    vec_s = time.perf_counter() - t
    per_s = Q / vec_s
    out = {
        "estimate_warm_us": warm * 1e6, "estimate_cold_us": cold_s * 1e6,
        "estimate_target_us": 200.0, "warm_over_target": warm * 1e6 / 200.0, "cold_over_target": cold_s * 1e6 / 200.0,
        "vectorized_policies": Q, "vectorized_batch_shapes": 48, "vectorized_seconds": vec_s,
        "vectorized_policies_per_s": per_s, "vectorized_target_per_s": 1e5, "vectorized_over_target": per_s / 1e5,
        "vectorized_speedup_vs_scalar_warm": warm * per_s,
        "feasible_share": float(res.feasible.mean()),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"one estimate (opt-30b, t4-gcp, 512+32): {warm * 1e6:7.1f} us with the batch shape's terms cached "
              f"({warm * 1e6 / 200:.2f} x the 200 us target)")
        print(f"                                         {cold_s * 1e6:7.1f} us cold, terms built "
              f"({cold_s * 1e6 / 200:.2f} x target)")
        print(f"vectorized: {Q:,} policies over 48 batch shapes in {vec_s:.3f} s = {per_s:,.0f} policies/s "
              f"({per_s / 1e5:.1f} x the 100,000/s target; {warm * per_s:.0f} x the scalar estimate loop)")
    return out


if __name__ == "__main__":
    main()
