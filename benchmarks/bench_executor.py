"""Executor speed on a GPU as fractions of bounds measured in the same run (issue 5):

1. weight-streaming decode: OPT-6.7B, all weights in pinned CPU memory, cache on the GPU,
   32 x 4: weight bytes moved per decode step / step time, over the pinned H2D bandwidth
   measured now (1 GiB copy). Target >= 0.90 (FlexGen's runtime reaches 0.60 here).
2. all-on-GPU decode: OPT-6.7B, 32 x 1: (weight + KV bytes read per step) / step time, over
   the HBM bandwidth measured now (device-to-device copy, bytes read + written). Target >= 0.80.

    python benchmarks/bench_executor.py [--model opt-6.7b] [--json]

Without CUDA it says so and exits 0 (nothing to measure). The measurement is
``validate.speed.run_bench``, which ``scripts/gpu_check.sh`` also runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="opt-6.7b")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", default=None, help="unused; accepted for symmetry with the suite")
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}) if args.json else "bench_executor: no CUDA device; skipped")
        return 0
    from simulator.models import get_model
    from simulator.policy import Workload

    from validate.speed import run_bench

    out = run_bench(torch, get_model(args.model), Workload(512, 32))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        ws, ag, h2d, hbm = out["weight_streaming"], out["all_gpu"], out["h2d_pinned_bytes_per_s"], out["hbm_bytes_per_s"]
        print(f"weight streaming {out['model']} {ws['policy']}: {ws['achieved_bytes_per_s'] / 1e9:.1f} GB/s = "
              f"{ws['fraction_of_h2d']:.2f} of pinned H2D {h2d / 1e9:.1f} GB/s (target {ws['target']:.2f})")
        print(f"all on GPU {out['model']} {ag['policy']}: {ag['achieved_bytes_per_s'] / 1e12:.2f} TB/s = "
              f"{ag['fraction_of_hbm']:.2f} of HBM {hbm / 1e12:.2f} TB/s (target {ag['target']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
