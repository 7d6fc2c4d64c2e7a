"""Speed of ``llmsim sweep`` on a local Dask cluster, and how it scales with workers.

The same cut of the example spec (examples/sweep-5gpus-8models.yaml: OPT-30B and
Llama-3-8B on its 5 profiles, the ``short`` batch on the 4 planner engines and the request
stream on vLLM: 50 cells) runs with 1 and then 2 local worker processes, each into a fresh folder
(nothing reused from a checkpoint). Printed: cells per second over the whole run (cluster
start included) and over the compute alone, and their ratio 2 workers / 1 worker (the
reference measured in the same run; at most 2 on 2 cores, less when other processes hold
the CPUs). Then the full example (360 cells) with 2 workers: its wall time.

    python benchmarks/bench_sweep.py [--json] [--no-full]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

import yaml

from llmsim.sweep_command import dask_compute
from simulator.sweeps import Sweep, load_sweep, parse_spec, plan_sweep, run_sweep

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "sweep-5gpus-8models.yaml"


def cut() -> Sweep:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["models"] = ["opt-30b", "llama-3-8b"]
    doc["workloads"] = [w for w in doc["workloads"] if w.get("name") in ("short", "chat-2rps")]
    return plan_sweep(parse_spec(doc, f"cut of {EXAMPLE.name}", EXAMPLE.parent))


def timed_run(sweep, workers: int) -> dict:
    timing: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as d:
        outcome = run_sweep(sweep, d, dask_compute(None, workers, timing))
    n = outcome.computed
    return {"workers": workers, "cells": n, "wall_s": outcome.wall_s, "cluster_start_s": timing["cluster_start_s"],
            "compute_s": timing["compute_s"], "cells_per_s": n / outcome.wall_s,
            "compute_cells_per_s": n / timing["compute_s"], "failed": outcome.counts()["failed"]}


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-full", action="store_true", help="Skip the full example's run.")
    args = ap.parse_args()

    sweep = cut()
    one, two = timed_run(sweep, 1), timed_run(sweep, 2)
    out = {"cut": {"cells": len(sweep.cells), "one_worker": one, "two_workers": two,
                   "speedup_2_vs_1": two["cells_per_s"] / one["cells_per_s"],
                   "compute_speedup_2_vs_1": two["compute_cells_per_s"] / one["compute_cells_per_s"]}}
    if not args.no_full:
        full = load_sweep(EXAMPLE)
        out["full"] = {"spec": str(EXAMPLE.name), **timed_run(full, 2)}
    if args.json:
        print(json.dumps(out, indent=2))
        return out
    c = out["cut"]
    print(f"sweep cut ({c['cells']} cells of {EXAMPLE.name}) on a local Dask cluster:")
    for r in (one, two):
        print(f"  {r['workers']} worker(s): {r['cells_per_s']:.2f} cells/s ({r['wall_s']:.1f} s, cluster start "
              f"{r['cluster_start_s']:.1f} s), compute alone {r['compute_cells_per_s']:.2f} cells/s")
    print(f"  2 workers / 1 worker: {c['speedup_2_vs_1']:.2f}x (compute alone {c['compute_speedup_2_vs_1']:.2f}x)")
    if "full" in out:
        f = out["full"]
        print(f"full example ({f['cells']} cells, 2 workers): {f['wall_s']:.1f} s, {f['cells_per_s']:.2f} cells/s")
    return out


if __name__ == "__main__":  # the guard matters: Dask's workers start by spawning this module
    main()
