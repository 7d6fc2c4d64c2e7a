"""FlexGen's pipeline-parallel setting (arXiv 2303.06865, section 6): 4 machines x 1 T4,
prompt 512, gen 32. For OPT-6.7B/30B/175B: the planner's best policy on one T4 and with
pipeline parallelism over the four machines (pp = 4), and the predicted scaling of
generation and decoding throughput. Profile: t4-gcp-4node (datasheet T4 figures, the
paper's link speeds, GCP's per-VM network cap). For reference, the paper's measured
single-T4 throughputs (FlexGen without compression): 25.26 / 7.32 / 0.69 tok/s.

    python benchmarks/bench_parallel.py [--json]
"""

from __future__ import annotations

import argparse
import json

from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Workload
from simulator.search import SearchSpace, layouts_for, search

PAPER_SINGLE_T4 = {"opt-6.7b": 25.26, "opt-30b": 7.32, "opt-175b": 0.69}


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    hw = load_profile("t4-gcp-4node")
    wl = Workload(512, 32)
    out = []
    for name in ("opt-6.7b", "opt-30b", "opt-175b"):
        m = get_model(name)
        space = SearchSpace(dtype="fp16", compress_weights=(False,), compress_cache=(False,))
        one = search(m, hw, wl, space=space, compare=False, gpus=1)
        four = search(m, hw, wl, space=space, compare=False, gpus=4)
        lays = four.layouts()
        pp4 = lays[(lays.tp == 1) & (lays.pp == 4)]
        row = {"model": name, "one_gpu_tok_s": one.estimate.throughput_tok_s,
               "one_gpu_decode_tok_s": one.estimate.decode_throughput_tok_s,
               "best_4gpu_layout": [int(four.policy.tp), int(four.policy.pp), int(four.policy.dp)],
               "best_4gpu_tok_s": four.estimate.throughput_tok_s,
               "pp4_tok_s": float(pp4.throughput_tok_s.iloc[0]) if len(pp4) else None,
               "paper_single_t4_tok_s": PAPER_SINGLE_T4[name]}
        row["pp4_scaling"] = row["pp4_tok_s"] / row["one_gpu_tok_s"] if row["pp4_tok_s"] else None
        row["best_scaling"] = row["best_4gpu_tok_s"] / row["one_gpu_tok_s"]
        out.append(row)
        if not args.json:
            print(f"{name:9s} 1 T4: {row['one_gpu_tok_s']:8.2f} tok/s (paper measured {row['paper_single_t4_tok_s']}) | "
                  f"4 T4 pp=4: {row['pp4_tok_s'] or 0:8.2f} tok/s = {row['pp4_scaling'] or 0:.2f} x | best of "
                  f"{len(layouts_for(m, hw, 4))} layouts {tuple(row['best_4gpu_layout'])}: "
                  f"{row['best_4gpu_tok_s']:8.2f} tok/s = {row['best_scaling']:.2f} x")
    if args.json:
        print(json.dumps(out, indent=2))
    return {"rows": out}


if __name__ == "__main__":
    main()
