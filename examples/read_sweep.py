"""Read the table of ``llmsim sweep`` with pandas: which GPU for each model and workload.

    python examples/read_sweep.py DIR [WORKLOAD]

``DIR/results.parquet`` has one row per cell (columns: ``simulator.sweeps.COLUMNS``);
``DIR/results.csv`` is the same table for a spreadsheet.
"""

import sys

import pandas as pd


def main(out_dir: str, workload: str | None = None) -> None:
    df = pd.read_parquet(f"{out_dir}/results.parquet")
    ok = df[df["feasible"]]
    # The best cell of each model and workload: a batch by its throughput, a request stream
    # (whose throughput is the offered load) by its share of requests within the SLOs, then
    # its p99 E2E.
    batch = ok[ok["workload_kind"] == "batch"].sort_values("throughput_tok_s", ascending=False)
    stream = ok[ok["workload_kind"] == "stream"].sort_values(["slo_attained_frac", "e2e_p99_s"],
                                                             ascending=[False, True])
    best = pd.concat([batch, stream]).groupby(["model", "workload"], sort=False).head(1)
    spec_order = {c: {v: i for i, v in enumerate(df[c].unique())} for c in ("model", "workload")}
    best = best.sort_values(["model", "workload"], key=lambda col: col.map(spec_order[col.name]))
    cols = ["model", "workload", "hardware", "engine", "throughput_tok_s", "total_latency_s", "slo_attained_frac",
            "e2e_p99_s", "bottleneck"]
    print("Best hardware per model and workload (batches: throughput; streams: SLO attainment, then p99 E2E):")
    print(best[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    # Model x hardware for one workload: the best engine's throughput, blank where nothing fits.
    workload = workload or df["workload"].iloc[0]
    grid = ok[ok["workload"] == workload].pivot_table(index="model", columns="hardware", values="throughput_tok_s",
                                                      aggfunc="max")
    print(f"\nThroughput (tokens/s, best engine) for workload {workload!r}:")
    print(grid.reindex(index=df["model"].unique(), columns=df["hardware"].unique()).round(1).to_string())
    refused = df[df["error"].notna()]
    if len(refused):
        print(f"\n{len(refused)} cells refused (column error), e.g. {refused['error'].iloc[0]}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(*sys.argv[1:])
