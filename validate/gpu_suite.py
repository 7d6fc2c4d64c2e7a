"""The GPU validation suite: eleven cases that between them exercise every component of the
cost model on one GPU - all on the GPU; weights on the CPU (streamed over PCIe); cache on
the CPU with CPU attention and with the cache moved to the GPU; weights partly on disk,
O_DIRECT and page-cached; 4-bit weights and cache; serial (no overlap); a mixture of
experts whose experts live on the CPU and are fetched after the routing - each run on the
executor, predicted with the machine's profile, and written as a record. It is step
``cases`` of ``scripts/gpu_check.sh`` (``validate/gpu_check.py``), which also profiles the
GPU for exactly these models first (``focus``).

    python -m validate.gpu_suite --profile PROFILE --out DIR [--budget-s S] [--dry-run]

Records go to DIR/records/<profile>/ with the profile copied to its profiles/ folder, one
JSON line per case to DIR/cases.jsonl. Cases run in order until the budget would be
overrun: a case starts only if the time left covers its expected time (``Case.expect_s``,
scaled by how the cases run so far compared with theirs); the rest are reported skipped.

Expected times on one H200 (``expect_s``): building a 7B model's random fp16 weights on
the host ~7 s (1.25 s per OPT-6.7B layer on one core of the 2-core VM, ~6x faster on 16),
4-bit quantization ~7 s more, pinning 13 GB ~3 s, a two-layer warm-up ~1 s, and the run
itself as the h100-pcie5 profile predicts it (0.7-12 s at prompt 512, gen 32; the disk
cases use gen 16, their disk reads dominate: ~0.5 s per decode step at 1.7 GB/s).
``--dry-run`` maps the same cases onto two-layer models of width 128 on the CPU
(prompt 16, gen 4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from simulator.models import ModelSpec, get_model
from simulator.policy import Placement, Policy, Workload

WORKLOAD = Workload(prompt_len=512, gen_len=32)
DISK_WORKLOAD = Workload(prompt_len=512, gen_len=16)
DRY_WORKLOAD = Workload(prompt_len=16, gen_len=4)
DRY_DISK_WORKLOAD = Workload(prompt_len=16, gen_len=3)
C = Placement(0, 1, 0)
DISK_SHARE = Placement(0.5, 0.25, 0.25)  # whole tensors: realizes as 1/3 on disk for OPT


@dataclass(frozen=True)
class Case:
    name: str
    model: ModelSpec
    workload: Workload
    policy: Policy
    expect_s: float  # expected wall time on the H200: build + warm-up + run (module docstring)


def moe_model() -> ModelSpec:
    """A Mixtral of width 2048 (8 experts of 5632, 2 per token, 8 layers): 2.4B parameters,
    4.9 GB in fp16, built in ~3 s (the module docstring's rate); each decode step of a
    4-sequence batch fetches ~5.5 of 8 experts per layer, ~3 GB over PCIe."""
    return ModelSpec(name="mixtral-2b", family="mixtral", hidden_size=2048, num_layers=8, num_heads=16,
                     num_kv_heads=4, ffn_dim=5632, vocab_size=32000, max_position_embeddings=4096,
                     rope_theta=1e6, num_experts=8, experts_per_token=2, dtype="fp16")


def dry_models() -> dict[str, ModelSpec]:
    """Stand-ins of the suite's models for the dry run: two layers, width 128, fp16."""
    opt = ModelSpec(name="opt-dry", family="opt", hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
                    ffn_dim=512, vocab_size=1024, max_position_embeddings=256, tie_word_embeddings=True)
    llama = ModelSpec(name="llama-dry", family="llama", hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
                      ffn_dim=352, vocab_size=1024, max_position_embeddings=256)
    small = opt.with_(name="opt-dry-small", hidden_size=64, num_heads=2, num_kv_heads=2, ffn_dim=256)
    moe = ModelSpec(name="mixtral-dry", family="mixtral", hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                    ffn_dim=256, vocab_size=1024, max_position_embeddings=256, num_experts=4, experts_per_token=2)
    return {"opt-6.7b": opt, "llama-2-7b": llama, "opt-1.3b": small, "mixtral-2b": moe}


def cases(dry_run: bool = False) -> list[Case]:
    """The suite in running order: each component first, then the second model family."""
    P = Policy
    models = dry_models() if dry_run else {**{n: get_model(n) for n in ("opt-6.7b", "llama-2-7b", "opt-1.3b")},
                                           "mixtral-2b": moe_model()}
    wl, disk_wl = (DRY_WORKLOAD, DRY_DISK_WORKLOAD) if dry_run else (WORKLOAD, DISK_WORKLOAD)
    b = 4 if dry_run else 32  # the dry run's batches are small: the stand-in computes on 2 cores
    h = b // 2
    rows = [  # (model, workload, what, policy, expected s)
        ("opt-6.7b", wl, "all-gpu", P(gpu_batch_size=b, num_gpu_batches=1), 12),
        ("opt-6.7b", wl, "weights-cpu", P(gpu_batch_size=b, num_gpu_batches=4, weights=C), 20),
        ("opt-6.7b", wl, "cache-cpu-cpu-attention", P(gpu_batch_size=h, num_gpu_batches=2, cache=C,
                                                      cpu_attention=True), 14),
        ("opt-1.3b", disk_wl, "weights-disk-direct", P(gpu_batch_size=b, num_gpu_batches=2, weights=DISK_SHARE), 12),
        ("opt-6.7b", disk_wl, "weights-disk-cached", P(gpu_batch_size=b, num_gpu_batches=2, weights=DISK_SHARE,
                                                       disk_io="cached"), 18),
        ("opt-6.7b", wl, "4bit-weights-cpu-and-cache", P(gpu_batch_size=b, num_gpu_batches=2, weights=C,
                                                         compress_weights=True, compress_cache=True), 20),
        ("opt-6.7b", wl, "weights-cpu-serial", P(gpu_batch_size=b, num_gpu_batches=2, weights=C, overlap=False), 20),
        ("llama-2-7b", wl, "all-gpu", P(gpu_batch_size=b, num_gpu_batches=1), 10),
        ("llama-2-7b", wl, "cache-cpu", P(gpu_batch_size=h, num_gpu_batches=2, cache=C), 13),
        ("llama-2-7b", wl, "cache-cpu-cpu-attention", P(gpu_batch_size=h, num_gpu_batches=2, cache=C,
                                                        cpu_attention=True), 13),
        ("mixtral-2b", disk_wl, "experts-cpu-fetch", P(gpu_batch_size=4, num_gpu_batches=1, weights=C,
                                                       expert_offload="fetch"), 10),
    ]
    return [Case(f"{models[m].name}/{what}", models[m], w, p, 1.0 if dry_run else float(s))
            for m, w, what, p, s in rows]


def warm_up(model: ModelSpec, workload: Workload, policy: Policy, device: str, offload_dir: str | None = None) -> None:
    """Pay a process's one-time costs (CUDA context, cuBLAS handles and kernel choices,
    allocator growth) before a timed run, with the model cut to two layers: the same GEMM
    and attention shapes at the full prompt length, for a fraction of the weight-building
    time (~7 s for a 7B model) that a full warm-up would add."""
    from validate.executor import run_policy

    small = model.with_(num_layers=min(2, model.num_layers))
    run_policy(small, Workload(workload.prompt_len, 2, policy.block_size), policy, device=device,
               offload_dir=offload_dir)


def release_memory() -> None:
    """Give cached device and pinned host memory back between cases (one case's pinned
    weights must not crowd the next)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        empty_host = getattr(torch._C, "_host_emptyCache", None)
        if empty_host is not None:
            empty_host()


def _gpu() -> str:
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "none"


def _versions() -> dict:
    import platform

    import torch
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}


def run_cases(suite: list[Case], hw, profile_path, device: str, offload_dir: str, rec_dir, budget_s: float,
              on_row=None, machine: dict | None = None) -> dict:
    """Run ``suite`` within ``budget_s`` (module docstring); one record per case that ran.
    ``on_row(row)`` is called after each case (the driver appends it to a file, so a step
    stopped from outside keeps its rows). Returns {rows, skipped, stopped_by_budget}."""
    from validate import harness

    start = time.perf_counter()
    spent_s = expected_s = 0.0
    rows, skipped = [], []
    for case in suite:
        scale = max(1.0, spent_s / expected_s) if expected_s else 1.0
        left = budget_s - (time.perf_counter() - start)
        if left < case.expect_s * scale:
            skipped.append(case.name)
            row = {"name": case.name, "skipped": f"budget: {left:.0f} s left, expected {case.expect_s * scale:.0f} s"}
            rows.append(row)
            if on_row:
                on_row(row)
            continue
        t0 = time.perf_counter()
        try:
            warm_up(case.model, case.workload, case.policy, device, offload_dir)
            res = harness.run_case(case.model, case.workload, case.policy, hw, device, offload_dir, warmup=False)
            rec = harness.make_record(case.name, case.model, case.workload, res["policy"], device, hw.name,
                                      f"profiles/{hw.name}.yaml", res["measured"], res["estimate"],
                                      {"gpu": _gpu(), **(machine or {})}, _versions(), res["run"].get("notes"))
            path = harness.write_record(rec, rec_dir, profile_path)
            row = {"name": case.name, "record": path.name,
                   "measured_tok_s": res["measured"]["throughput_tok_s"],
                   "predicted_tok_s": res["predicted"]["throughput_tok_s"],
                   "error": res["errors"]["throughput_tok_s"], "bottleneck": res["predicted"]["bottleneck"],
                   "disk_io_mode_used": res["measured"]["disk_io_mode_used"]}
        except Exception as e:  # keep going: one failed case must not lose the others
            row = {"name": case.name, "failed": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"}
        finally:
            release_memory()
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["expect_s"] = case.expect_s
        spent_s += row["seconds"]
        expected_s += case.expect_s
        rows.append(row)
        if on_row:
            on_row(row)
        if "failed" in row:
            print(f"{case.name:45s} FAILED {row['failed']} ({row['seconds']:.0f} s)", flush=True)
        else:
            print(f"{case.name:45s} meas {row['measured_tok_s']:9.2f} pred {row['predicted_tok_s']:9.2f} tok/s "
                  f"err {row['error']:+.3f} ({row['seconds']:.0f} s, expected {case.expect_s:.0f})", flush=True)
    return {"rows": rows, "skipped": skipped, "stopped_by_budget": bool(skipped)}


def main(argv=None) -> int:
    from simulator.hardware import load_profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, help="the profile of this machine (name or YAML path)")
    ap.add_argument("--out", required=True, help="output folder (records/ and cases.jsonl)")
    ap.add_argument("--budget-s", type=float, default=600.0, help="wall-time budget of the whole suite")
    ap.add_argument("--offload-dir", default=None, help="where the disk tier lives (default: OUT/offload)")
    ap.add_argument("--dry-run", action="store_true", help="tiny stand-in models on the CPU")
    args = ap.parse_args(argv)
    hw = load_profile(args.profile)
    out = Path(args.out)
    offload = Path(args.offload_dir or out / "offload")
    offload.mkdir(parents=True, exist_ok=True)
    lines = out / "cases.jsonl"

    def on_row(row):
        with open(lines, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    result = run_cases(cases(args.dry_run), hw, hw.path, "cpu" if args.dry_run else "cuda", str(offload),
                       out / "records" / hw.name, args.budget_s, on_row)
    return 1 if any("failed" in r for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
