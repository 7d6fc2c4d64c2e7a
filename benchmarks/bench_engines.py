"""Accuracy per engine on the published runs of other engines (validate/records/published/):
each record re-predicted with its engine, and with llmsim's executor model in its place (what
llmsim predicted before it modelled engines), against the measured figure.

    python benchmarks/bench_engines.py [--records validate/records/published] [--json]

Prints one table per engine: record, measured, predicted by its engine, error, and the error
the llmsim engine would make on the same policy; then each engine's median and max |error|.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rows(records_dir: Path) -> list[dict]:
    from simulator.cost import estimate
    from validate.harness import (ModelSpec, Policy, Workload, load_records, record_engine, record_profile,
                                  rel_error)
    out = []
    for d in sorted({p.parent for p in records_dir.rglob("*.json") if p.parent.name != "profiles"}):
        for path, rec in load_records(d):
            case = rec["case"]
            model = ModelSpec.from_dict(case["model"])
            wl = Workload(case["workload"]["prompt_len"], case["workload"]["gen_len"], case["workload"].get("num_sequences"))
            pol = Policy.from_dict(case["policy"])
            hw = record_profile(rec, d)
            eng = record_engine(rec)
            measured = rec["measured"]["throughput_tok_s"]
            own = estimate(model, hw, wl, pol, eng)
            base = estimate(model, hw, wl, pol, "llmsim")
            out.append({"engine": eng.name, "record": case["name"], "measured_tok_s": measured,
                        "predicted_tok_s": own.throughput_tok_s, "error": rel_error(own.throughput_tok_s, measured),
                        "llmsim_engine_error": rel_error(base.throughput_tok_s, measured),
                        "llmsim_engine_feasible": base.feasible})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default=str(ROOT / "validate" / "records" / "published"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import numpy as np
    data = rows(Path(a.records))
    summary = {}
    for eng in sorted({r["engine"] for r in data}):
        errs = np.abs([r["error"] for r in data if r["engine"] == eng])
        base = np.abs([r["llmsim_engine_error"] for r in data if r["engine"] == eng])
        summary[eng] = {"n": int(errs.size), "median_abs_error": float(np.median(errs)), "max_abs_error": float(errs.max()),
                        "llmsim_engine_median_abs_error": float(np.median(base)),
                        "llmsim_engine_max_abs_error": float(base.max())}
    if a.json:
        print(json.dumps({"records": data, "summary": summary}, indent=2))
        return 0
    for eng, s in summary.items():
        print(f"== engine {eng}: {s['n']} published records")
        print(f"{'record':58s} {'measured':>9s} {'predicted':>9s} {'error':>7s} {'as llmsim':>9s}")
        for r in (r for r in data if r["engine"] == eng):
            note = "" if r["llmsim_engine_feasible"] else " (infeasible)"
            print(f"{r['record'][:58]:58s} {r['measured_tok_s']:9.2f} {r['predicted_tok_s']:9.2f} {r['error']:+7.1%} "
                  f"{r['llmsim_engine_error']:+9.1%}{note}")
        print(f"median |error| {s['median_abs_error']:.1%}, max {s['max_abs_error']:.1%} "
              f"(the llmsim engine on the same policies: median {s['llmsim_engine_median_abs_error']:.1%}, "
              f"max {s['llmsim_engine_max_abs_error']:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
