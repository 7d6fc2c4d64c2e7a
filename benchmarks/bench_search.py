"""Search speed and optimality against the exact grid search (issues 3 and 9).

For each (model, hardware, gpus) pair, prompt 512, gen 32, every dtype the profile rates:

- the search's time as ``Plan.search_seconds`` counts it (terms, bounds, LPs, rounding;
  not the imports nor the other engines' plans): the first search of the process and the fastest of
  ``--repeats`` more;
- the exact grid search (``simulator.grid``: each fraction in 5% steps, the same
  candidates, dtypes and layouts, evaluated with the cost model) timed in the same run, and
  the ratio grid time / search time;
- optimality: the search's LP optimum and its rounded (executable) plan over the grid's
  best (target: LP optimum >= 0.995 x grid best);
- the wall time of the whole ``llmsim plan --json`` command for the pair in a fresh
  process (imports, other engines' plans and output included).

Targets on the 2-core CI machine: opt-175b on t4-gcp <= 1 s and llama-2-70b on
dgx-h100-8x with 8 GPUs <= 3 s of search time. The machine may be shared: compare the
ratio to the grid, measured in the same run, rather than seconds across runs.

    python benchmarks/bench_search.py [--json] [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from simulator.grid import grid_best
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Workload
from simulator.search import SearchSpace, search

# (model, hardware, gpus, target search seconds or None)
PAIRS = (("opt-175b", "t4-gcp", 1, 1.0), ("llama-2-70b", "dgx-h100-8x", 8, 3.0),
         ("opt-6.7b", "t4-gcp", 1, None), ("opt-30b", "t4-gcp", 1, None),
         ("opt-6.7b", "h100-pcie5", 1, None), ("opt-30b", "h100-pcie5", 1, None),
         ("opt-175b", "h100-pcie5", 1, None), ("opt-125m", "cpu-2core", 1, None))
QUICK_PAIRS = PAIRS[:2]


def command_wall_s(model: str, hardware: str, gpus: int) -> tuple[float, float]:
    """(wall seconds of `llmsim plan ... --json` in a fresh process, its search_seconds)."""
    cmd = [sys.executable, "-m", "llmsim", "plan", "--model", model, "--hardware", hardware, "--gpus", str(gpus),
           "--json"]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t, json.loads(out)["search_seconds"]


def bench_pair(model: str, hardware: str, gpus: int, target_s, steps: int, repeats: int) -> dict:
    m, hw, wl = get_model(model), load_profile(hardware), Workload(512, 32)
    first = search(m, hw, wl, compare=False, gpus=gpus)
    again = [search(m, hw, wl, compare=False, gpus=gpus).search_seconds for _ in range(repeats)]
    t = time.perf_counter()
    g = grid_best(m, hw, wl, SearchSpace(), steps=steps, gpus=gpus)
    grid_s = time.perf_counter() - t
    wall_s, cmd_search_s = command_wall_s(model, hardware, gpus)
    gb = g["throughput_tok_s"] or float("nan")
    lp = first.relaxed_estimate.throughput_tok_s if first.relaxed_estimate else 0.0
    rounded = first.estimate.throughput_tok_s if first.feasible else 0.0
    best_s = min(again) if again else first.search_seconds
    return {"model": model, "hardware": hardware, "gpus": gpus, "target_s": target_s,
            "dtypes": first.dtype_choice["searched"], "dtype": first.dtype,
            "search_first_s": first.search_seconds, "search_s": best_s, "search_max_s": max(again or [best_s]),
            "lps_solved": first.candidates_evaluated, "candidates": first.candidates_total,
            "pruned": first.candidates_pruned, "grid_step": 1 / steps, "grid_s": grid_s,
            "grid_points_evaluated": g["evaluated"], "grid_over_search": grid_s / best_s,
            "grid_best_tok_s": gb, "search_lp_tok_s": lp, "search_rounded_tok_s": rounded,
            "lp_over_grid": lp / gb, "rounded_over_grid": rounded / gb, "command_wall_s": wall_s,
            "command_search_s": cmd_search_s, "pass": bool(lp / gb >= 0.995 and (target_s is None or best_s <= target_s))}


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="the two target pairs only, 10%% grid")
    ap.add_argument("--repeats", type=int, default=3, help="searches timed after the first (default 3)")
    args = ap.parse_args()
    import highspy  # noqa: F401  (import time is not search time)
    import pandas  # noqa: F401

    steps = 10 if args.quick else 20
    rows = []
    for model, hardware, gpus, target in (QUICK_PAIRS if args.quick else PAIRS):
        r = bench_pair(model, hardware, gpus, target, steps, args.repeats)
        rows.append(r)
        if not args.json:
            tgt = f" (target {r['target_s']:g} s)" if r["target_s"] else ""
            print(f"{model} on {hardware} x{gpus} [{', '.join(r['dtypes'])} -> {r['dtype']}]: search "
                  f"{r['search_s']:.3f} s{tgt} (first {r['search_first_s']:.3f}, up to {r['search_max_s']:.3f}; "
                  f"{r['lps_solved']} LPs, {r['pruned']} of {r['candidates']} candidates pruned) | grid "
                  f"{r['grid_s']:.1f} s = {r['grid_over_search']:.0f} x search | LP {r['lp_over_grid']:.4f} x grid, "
                  f"rounded {r['rounded_over_grid']:.4f} x grid ({r['grid_best_tok_s']:.4g} tok/s) | `llmsim plan` "
                  f"{r['command_wall_s']:.2f} s wall | {'ok' if r['pass'] else 'MISSED'}")
    if args.json:
        print(json.dumps({"pairs": rows}, indent=2))
    return {"pairs": rows}


if __name__ == "__main__":
    main()
