"""The GPU validation suite of issue 5: 22 cases over OPT-6.7B/13B/30B and Llama-2-7B/13B
- all on the GPU; weights partly and fully on the CPU; cache on the CPU with and without
CPU attention; weights partly on disk, direct and page-cached; 4-bit compression - each run
on the executor, predicted with the machine's profile, and written as a record.

    python -m validate.gpu_suite --profile h100-pcie5 --out DIR [--part K/M] [--offload-dir D]

``--part K/M`` runs the K-th of M contiguous slices (the device tool allows 10 minutes per
command). Records go to DIR/records (with the profile copied beside them); a summary line
per case is printed and DIR/summary-K.json is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload

WORKLOAD = Workload(prompt_len=512, gen_len=32)
G, C, D = Placement(1, 0, 0), Placement(0, 1, 0), Placement(0, 0, 1)


def cases() -> list[tuple[str, str, Policy]]:
    P = Policy
    return [
        ("opt-6.7b/all-gpu", "opt-6.7b", P(gpu_batch_size=32, num_gpu_batches=1)),
        ("opt-6.7b/weights-cpu", "opt-6.7b", P(gpu_batch_size=32, num_gpu_batches=4, weights=C)),
        ("opt-6.7b/weights-half-cpu", "opt-6.7b", P(gpu_batch_size=16, num_gpu_batches=2, weights=Placement(.5, .5, 0))),
        ("opt-6.7b/cache-cpu-cpu-attention", "opt-6.7b", P(gpu_batch_size=32, num_gpu_batches=2, cache=C,
                                                           cpu_attention=True)),
        ("opt-6.7b/cache-cpu", "opt-6.7b", P(gpu_batch_size=32, num_gpu_batches=2, cache=C)),
        ("opt-6.7b/weights-disk-direct", "opt-6.7b", P(gpu_batch_size=32, num_gpu_batches=2,
                                                       weights=Placement(.5, .25, .25))),
        ("opt-6.7b/weights-disk-cached", "opt-6.7b", P(gpu_batch_size=32, num_gpu_batches=2,
                                                       weights=Placement(.5, .25, .25), disk_io="cached")),
        ("opt-6.7b/4bit-weights-cpu", "opt-6.7b", P(gpu_batch_size=32, num_gpu_batches=2, weights=C,
                                                    compress_weights=True)),
        ("opt-6.7b/4bit-cache", "opt-6.7b", P(gpu_batch_size=64, num_gpu_batches=2, compress_cache=True)),
        ("opt-6.7b/serial-weights-cpu", "opt-6.7b", P(gpu_batch_size=32, num_gpu_batches=2, weights=C, overlap=False)),
        ("opt-13b/all-gpu", "opt-13b", P(gpu_batch_size=32, num_gpu_batches=1)),
        ("opt-13b/weights-70-cpu", "opt-13b", P(gpu_batch_size=32, num_gpu_batches=2, weights=Placement(.3, .7, 0))),
        ("opt-13b/cache-cpu-cpu-attention", "opt-13b", P(gpu_batch_size=32, num_gpu_batches=2, cache=C,
                                                         cpu_attention=True)),
        ("opt-30b/weights-60-cpu", "opt-30b", P(gpu_batch_size=16, num_gpu_batches=2, weights=Placement(.4, .6, 0))),
        ("opt-30b/weights-disk-direct", "opt-30b", P(gpu_batch_size=16, num_gpu_batches=2,
                                                     weights=Placement(.2, .6, .2))),
        ("opt-30b/4bit-weights-gpu", "opt-30b", P(gpu_batch_size=32, num_gpu_batches=2, compress_weights=True)),
        ("llama-2-7b/all-gpu", "llama-2-7b", P(gpu_batch_size=32, num_gpu_batches=1)),
        ("llama-2-7b/weights-cpu", "llama-2-7b", P(gpu_batch_size=32, num_gpu_batches=4, weights=C)),
        ("llama-2-7b/cache-cpu-cpu-attention", "llama-2-7b", P(gpu_batch_size=32, num_gpu_batches=2, cache=C,
                                                               cpu_attention=True)),
        ("llama-2-7b/4bit-weights-and-cache", "llama-2-7b", P(gpu_batch_size=32, num_gpu_batches=2,
                                                              compress_weights=True, compress_cache=True)),
        ("llama-2-13b/all-gpu", "llama-2-13b", P(gpu_batch_size=16, num_gpu_batches=1)),
        ("llama-2-13b/weights-half-cpu-cached-disk", "llama-2-13b", P(gpu_batch_size=16, num_gpu_batches=2,
                                                                      weights=Placement(.5, .3, .2), cache=C,
                                                                      disk_io="cached")),
    ]


def main(argv=None) -> int:
    from validate import harness
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", required=True, help="the profile of this machine (name or YAML path)")
    ap.add_argument("--out", required=True, help="output folder (records/ and summaries)")
    ap.add_argument("--part", default="1/1", help="K/M: run the K-th of M slices")
    ap.add_argument("--offload-dir", default=".", help="where the disk tier lives (not a RAM-backed /tmp)")
    args = ap.parse_args(argv)
    k, m = (int(x) for x in args.part.split("/"))
    all_cases = cases()
    lo, hi = (k - 1) * len(all_cases) // m, k * len(all_cases) // m
    hw = load_profile(args.profile)
    out = Path(args.out)
    rec_dir = out / "records"
    rows = []
    for name, model_name, policy in all_cases[lo:hi]:
        t0 = time.time()
        model = get_model(model_name)
        try:
            res = harness.run_case(model, WORKLOAD, policy, hw, "cuda", args.offload_dir)
        except Exception as e:  # keep going: one failed case must not lose the others
            rows.append({"name": name, "error": f"{type(e).__name__}: {e}"})
            print(f"{name:45s} FAILED {type(e).__name__}: {e}", flush=True)
            continue
        rec = harness.make_record(name, model, WORKLOAD, res["policy"], "cuda", hw.name, f"profiles/{hw.name}.yaml",
                                  res["measured"], res["estimate"], {"gpu": _gpu()}, _versions(),
                                  res["run"].get("notes"))
        harness.write_record(rec, rec_dir, hw.path)
        e = res["errors"]["throughput_tok_s"]
        rows.append({"name": name, "measured_tok_s": res["measured"]["throughput_tok_s"],
                     "predicted_tok_s": res["predicted"]["throughput_tok_s"], "error": e,
                     "seconds": time.time() - t0})
        print(f"{name:45s} meas {rows[-1]['measured_tok_s']:9.2f} pred {rows[-1]['predicted_tok_s']:9.2f} "
              f"err {e:+.3f} ({time.time() - t0:.0f} s)", flush=True)
    (out / f"summary-{k}.json").write_text(json.dumps(rows, indent=1))
    return 0


def _gpu() -> str:
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "none"


def _versions() -> dict:
    import platform

    import torch
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}


if __name__ == "__main__":
    sys.exit(main())
