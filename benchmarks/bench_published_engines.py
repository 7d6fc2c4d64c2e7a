"""Accuracy of the engines against published runs: ZeRO-Inference and FlexGen on one A6000
(``shared/data/zero_inference_a6000.csv``, profile ``a6000-zero``) and HF Accelerate on one T4
(FlexGen paper Table 2, profile ``t4-gcp``). Prints predicted and measured throughput and the
error of each run; a run the engine finds infeasible is printed with the tier that is short.
Then the planner check of the A6000 rows (``simulator.engines.published.planner_best``): the
best predicted throughput of each engine under the row's published constraints over the
batch sizes that fit, with the batch it chose, against the row's figure (the README's
"best observed throughput from a batch size sweep").

    python benchmarks/bench_published_engines.py [--csv PATH] [--json]
        [--what-if H2D_PINNED,H2D_PAGEABLE,CPU_MEMORY]   (GB/s; a diagnostic, never a profile)

``--what-if`` re-runs the A6000 rows with those three rates of a6000-zero replaced, to show how
much of each miss the profile's estimated link and host rates explain.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from simulator.cost import estimate
from simulator.engines.published import A6000_WORKLOAD, planner_best, read_runs
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Policy, Workload

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "zero_inference_a6000.csv"
T4_ANCHOR = ("opt-6.7b", 2, 25.12)  # FlexGen paper Table 2: Accelerate, all weights on the GPU, prompt 512 + 32


def what_if(hw, text: str):
    """a6000-zero with its pinned and pageable H2D and its host memory rate replaced (GB/s)."""
    from dataclasses import replace
    pinned, pageable, cpu_mem = (float(v) * 1e9 for v in text.split(","))
    links = replace(hw.links, h2d_bytes_per_s=pinned, h2d_pageable_bytes_per_s=pageable,
                    d2h_pageable_bytes_per_s=pageable)
    return replace(hw, links=links, cpu=replace(hw.cpu, mem_bytes_per_s=cpu_mem))


def a6000(override: str | None = None):
    """The a6000-zero profile, with ``--what-if`` rates when given."""
    hw = load_profile("a6000-zero")
    return what_if(hw, override) if override else hw


def rows(csv_path, override: str | None = None) -> list[dict]:
    hw = a6000(override)
    out = []
    for run in read_runs(csv_path):
        est = estimate(run.model, hw, A6000_WORKLOAD, run.policy(), engine=run.engine())
        out.append({"run": run.label, "predicted_tok_s": est.throughput_tok_s, "measured_tok_s": run.measured_tok_s,
                    "error_frac": est.throughput_tok_s / run.measured_tok_s - 1.0, "feasible": est.feasible,
                    "reason": est.reason, "bottleneck": est.bottleneck})
    model, b, measured = T4_ANCHOR
    est = estimate(get_model(model), load_profile("t4-gcp"), Workload(512, 32), Policy(gpu_batch_size=b),
                   engine="accelerate")
    out.append({"run": f"accelerate {model} bsz {b} gpu (t4-gcp)", "predicted_tok_s": est.throughput_tok_s,
                "measured_tok_s": measured, "error_frac": est.throughput_tok_s / measured - 1.0,
                "feasible": est.feasible, "reason": est.reason, "bottleneck": est.bottleneck})
    return out


def planner_rows(csv_path, override: str | None = None) -> list[dict]:
    hw = a6000(override)
    out = []
    for run in read_runs(csv_path):
        b, est = planner_best(run, hw)
        pred = est.throughput_tok_s if est is not None else float("nan")
        out.append({"run": run.label, "published_batch": run.batch_size, "planner_batch": b,
                    "predicted_tok_s": pred, "measured_tok_s": run.measured_tok_s,
                    "error_frac": pred / run.measured_tok_s - 1.0})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", default=str(DEFAULT_CSV))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--what-if", default=None)
    args = ap.parse_args()
    out = rows(args.csv, args.what_if)
    plan = planner_rows(args.csv, args.what_if)
    if args.json:
        print(json.dumps({"policies": out, "planner": plan}, indent=2))
        return
    print(f"{'run':48s} {'predicted':>9s} {'measured':>9s} {'error':>8s}  bound")
    for r in out:
        tail = r["bottleneck"] if r["feasible"] else "INFEASIBLE: " + r["reason"]
        print(f"{r['run']:48s} {r['predicted_tok_s']:9.2f} {r['measured_tok_s']:9.2f} {100 * r['error_frac']:+7.1f}%  {tail}")
    print()
    print("planner check (best predicted throughput under the published constraints, over the batch sizes that fit)")
    print(f"{'run':48s} {'batch':>5s} {'planner':>7s} {'predicted':>9s} {'measured':>9s} {'error':>8s}")
    for r in plan:
        b = "-" if r["planner_batch"] is None else str(r["planner_batch"])
        print(f"{r['run']:48s} {r['published_batch']:5d} {b:>7s} {r['predicted_tok_s']:9.2f} {r['measured_tok_s']:9.2f} "
              f"{100 * r['error_frac']:+7.1f}%")
    errs = [abs(r["error_frac"]) for r in plan if r["planner_batch"] is not None]
    within = sum(e <= 0.25 for e in errs)
    print(f"planner check: {within} of {len(plan)} within 25% (median |error| {100 * sorted(errs)[len(errs) // 2]:.1f}%)")


if __name__ == "__main__":
    main()
