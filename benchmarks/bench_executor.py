"""Executor speed on a GPU as fractions of bounds measured in the same run (issue 5):

1. weight-streaming decode: OPT-6.7B, all weights in pinned CPU memory, cache on the GPU,
   32 x 4: weight bytes moved per decode step / step time, over the pinned H2D bandwidth
   measured now (1 GiB copy). Target >= 0.90 (FlexGen's runtime reaches 0.60 here).
2. all-on-GPU decode: OPT-6.7B, 32 x 1: (weight + KV bytes read per step) / step time, over
   the HBM bandwidth measured now (device-to-device copy, bytes read + written). Target >= 0.80.

    python benchmarks/bench_executor.py [--model opt-6.7b] [--json]

Without CUDA it says so and exits 0 (nothing to measure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def _h2d_pinned(torch, nbytes=2**30, reps=5) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src, non_blocking=True)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return nbytes / statistics.median(times)


def _hbm(torch, nbytes=2**30, reps=10) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return 2 * nbytes / statistics.median(times)  # read + written


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="opt-6.7b")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", default=None, help="unused; accepted for symmetry with the suite")
    args = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}) if args.json else "bench_executor: no CUDA device; skipped")
        return 0
    from simulator.models import get_model
    from simulator.policy import Placement, Policy, Workload
    from validate.executor import run_policy

    m = get_model(args.model)
    wl = Workload(512, 32)
    h2d, hbm = _h2d_pinned(torch), _hbm(torch)
    out = {"model": m.name, "gpu": torch.cuda.get_device_name(), "h2d_pinned_bytes_per_s": h2d, "hbm_bytes_per_s": hbm}

    stream = Policy(gpu_batch_size=32, num_gpu_batches=4, weights=Placement(0, 1, 0))
    run_policy(m, Workload(64, 2, stream.block_size), stream, device="cuda")  # warm-up
    r = run_policy(m, wl, stream, device="cuda")
    step = statistics.median(r.decode_step_s)
    wbytes = m.weight_bytes("fp16") - 0  # every layer and the LM head cross the link once per step
    out["weight_streaming"] = {"weight_bytes_per_step": wbytes, "step_s": step, "achieved_bytes_per_s": wbytes / step,
                               "fraction_of_h2d": wbytes / step / h2d, "target": 0.90}

    resident = Policy(gpu_batch_size=32, num_gpu_batches=1)
    run_policy(m, Workload(64, 2, resident.block_size), resident, device="cuda")
    r = run_policy(m, wl, resident, device="cuda")
    step = statistics.median(r.decode_step_s)
    ctx = wl.prompt_len + wl.gen_len // 2
    read = m.weight_bytes("fp16") + 32 * ctx * m.kv_bytes_per_token("fp16") * m.num_layers
    out["all_gpu"] = {"bytes_per_step": read, "step_s": step, "achieved_bytes_per_s": read / step,
                      "fraction_of_hbm": read / step / hbm, "target": 0.80}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        ws, ag = out["weight_streaming"], out["all_gpu"]
        print(f"weight streaming {m.name} 32x4: {ws['achieved_bytes_per_s'] / 1e9:.1f} GB/s = "
              f"{ws['fraction_of_h2d']:.2f} of pinned H2D {h2d / 1e9:.1f} GB/s (target 0.90)")
        print(f"all on GPU {m.name} 32x1: {ag['achieved_bytes_per_s'] / 1e12:.2f} TB/s = {ag['fraction_of_hbm']:.2f} "
              f"of HBM {hbm / 1e12:.2f} TB/s (target 0.80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
