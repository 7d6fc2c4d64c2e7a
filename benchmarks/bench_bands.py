"""Do the error bands hold? Leave-one-out coverage of the p10-p90 bands on every record.

    python benchmarks/bench_bands.py [--fresh] [--json]

For each row of the residual table (simulator/data/residuals.csv; ``--fresh``: re-predicted
from validate/records now), the band from the other records (all stages of a serving
experiment are left out together) and whether the measured value falls inside. Prints the
coverage overall, for the offline records and the serving runs, and per (engine, hardware
class, metric) with the rows, the records each band rests on, the level of the fallback it
used and the median band width (p90 / p10). Target: 70-90%. Then the same check for two
other intervals (plain empirical p10/p90 of the residuals; the normal interval at every n),
and the time of one band against one
``estimate()`` of the same case, measured in this run.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pandas as pd

from simulator import bands


def coverage_table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["width"] = df.high / df.low
    df["level"] = df.basis.map(lambda b: "no evidence" if b == bands.NO_EVIDENCE else
                               ("engine+class+regime" if b.count("=") == 3 else "engine+class"))
    return df


def summarize(df: pd.DataFrame) -> dict:
    def cov(d):
        d = d[d.inside.notna()]
        return {"rows": int(len(d)), "coverage_frac": float(d.inside.astype(bool).mean()) if len(d) else math.nan}
    by = []
    for (eng, cls, metric), g in df.groupby(["engine", "hardware_class", "metric"]):
        by.append({"engine": eng, "hardware_class": cls, "metric": metric, **cov(g),
                   "records_median": float(g.records.median()), "no_evidence": int(g.inside.isna().sum()),
                   "levels": g.level.value_counts().to_dict(), "width_median": float(g.width.median())})
    serving = df.record.str.startswith("published/serving/")  # the request-stream runs; the rest are batches
    return {"overall": cov(df), "offline": cov(df[~serving]), "serving": cov(df[serving]),
            "by_class": by}


def empirical(x):
    return float(np.quantile(x, 0.1)), float(np.quantile(x, 0.9))


def normal_only(x):
    from scipy.special import stdtrit
    x = np.asarray(x, float)
    n = x.size
    s = float(np.std(x, ddof=1)) * math.sqrt(1 + 1 / n)
    return float(x.mean() + stdtrit(n - 1, 0.1) * s), float(x.mean() + stdtrit(n - 1, 0.9) * s)


def speed() -> dict:
    """Seconds of: one estimate() (warm), the first band of a process (reads the table), one
    band after."""
    from simulator.cost import estimate
    from simulator.hardware import load_profile
    from simulator.models import get_model
    from simulator.policy import Placement, Policy, Workload
    hw, model = load_profile("h100-pcie5"), get_model("opt-6.7b")
    policy = Policy(gpu_batch_size=32, num_gpu_batches=1, weights=Placement(1, 0, 0), cache=Placement(1, 0, 0),
                    activations=Placement(1, 0, 0), cpu_attention=False)
    estimate(model, hw, Workload(256, 32), policy, "flexgen")  # warm: imports, engine set-up
    bands.load_residuals.cache_clear()
    t0 = time.perf_counter()
    est = estimate(model, hw, Workload(512, 32), policy, "flexgen")
    t_est = time.perf_counter() - t0
    t0 = time.perf_counter()
    bands.estimate_band(est, hw)
    t_first = time.perf_counter() - t0
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        bands.estimate_band(est, hw)
    t_band = (time.perf_counter() - t0) / reps
    return {"estimate_s": t_est, "first_band_s": t_first, "band_s": t_band,
            "first_band_over_estimate": t_first / t_est, "band_over_estimate": t_band / t_est}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fresh", action="store_true", help="Re-predict the records now instead of the committed table.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.fresh:
        from validate.residuals import residual_rows
        table = bands.residuals_from_rows(residual_rows(), "validate/records (fresh)")
    else:
        table = bands.load_residuals()
    df = coverage_table(bands.leave_one_out(table))
    out = {"residual_rows": len(table), "min_records": bands.MIN_RECORDS, **summarize(df),
           "alternatives": {name: summarize(coverage_table(bands.leave_one_out(table, method=m)))
                            for name, m in (("empirical_p10_p90", empirical), ("normal_every_n", normal_only))},
           "speed": speed()}
    if args.json:
        print(json.dumps(out, indent=2, default=float))
        return
    print(f"leave-one-out coverage of the p10-p90 bands on {len(table)} residuals (target 70-90%), "
          f"at least {bands.MIN_RECORDS} records per band")
    for k in ("overall", "offline", "serving"):
        print(f"  {k:8s} {out[k]['coverage_frac']:6.1%} of {out[k]['rows']} rows")
    print(f"\n  {'engine':8s} {'class':9s} {'metric':17s} {'rows':>4s} {'coverage':>8s} {'N med':>6s} "
          f"{'p90/p10':>7s}  levels")
    for r in out["by_class"]:
        lv = ", ".join(f"{k} {v}" for k, v in r["levels"].items())
        print(f"  {r['engine']:8s} {r['hardware_class']:9s} {r['metric']:17s} {r['rows']:4d} "
              f"{r['coverage_frac']:8.1%} {r['records_median']:6.0f} {r['width_median']:7.3f}  {lv}")
    print("\nother intervals, same records and fallback (coverage overall / offline / serving; worst class):")
    for name, alt in out["alternatives"].items():
        worst = min(alt["by_class"], key=lambda r: r["coverage_frac"])
        print(f"  {name:18s} {alt['overall']['coverage_frac']:6.1%} / {alt['offline']['coverage_frac']:6.1%} / "
              f"{alt['serving']['coverage_frac']:6.1%}; {worst['engine']} {worst['hardware_class']} "
              f"{worst['metric']} {worst['coverage_frac']:.0%} of {worst['rows']}")
    s = out["speed"]
    print(f"\nspeed: one estimate() {1e3 * s['estimate_s']:.2f} ms; the first band of a process (reads the table) "
          f"{s['first_band_over_estimate']:.2f}x that; each band after {s['band_over_estimate']:.3f}x")


if __name__ == "__main__":
    main()
