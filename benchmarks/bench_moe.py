"""Mixture-of-experts figures of the planner (simulator/moe.py): parameter counts and KV bytes
of the MoE presets, the three ways of offloading Mixtral-8x7B's experts on one H100 by
decode batch, and the 8-GPU plan with and without expert parallelism.

    python benchmarks/bench_moe.py [--json]

Every figure is the cost model's on a shipped profile (h100-pcie5: measured; dgx-h100-8x:
datasheet), printed with the formula it comes from; nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import time

from simulator import moe
from simulator.cost import estimate
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload
from simulator.search import SearchSpace, search

PRESETS = ("mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2", "deepseek-v3")


def counts() -> list[dict]:
    """Total and active parameters (``ModelSpec.num_parameters`` / ``active_parameters``) and
    KV-cache bytes per token and layer in bf16 (MLA: kv_lora_rank + qk_rope_head_dim)."""
    rows = []
    for name in PRESETS:
        m = get_model(name)
        rows.append({"model": name, "total_B": m.num_parameters() / 1e9, "active_B": m.active_parameters() / 1e9,
                     "kv_bytes_per_token_layer": m.kv_bytes_per_token("bf16"),
                     "experts": f"{m.experts_per_token}/{m.num_experts}"})
    return rows


def offload_modes(batches=(1, 4, 16, 64)) -> list[dict]:
    """Mixtral-8x7B on h100-pcie5, 25% of the weights on the GPU and 75% on the CPU, prompt
    128, 32 tokens: decode tokens/s for the experts prefetched with their layer, fetched
    after the routing (E_touched(b) of 8 per layer), or computed on the CPU."""
    m, hw = get_model("mixtral-8x7b"), load_profile("h100-pcie5")
    wl = Workload(128, 33)
    rows = []
    for b in batches:
        row = {"gpu_batch_size": b, "experts_touched": float(moe.experts_touched(m, b))}
        for mode in ("prefetch", "fetch", "cpu"):
            p = Policy(gpu_batch_size=b, num_gpu_batches=1, weights=Placement(0.25, 0.75, 0), dtype="bf16",
                       expert_offload=mode)
            e = estimate(m, hw, wl, p)
            row[mode] = {"decode_tok_s": e.decode_throughput_tok_s, "bottleneck": e.bottleneck}
        rows.append(row)
    return rows


def expert_parallel_plan() -> dict:
    """``llmsim plan --model mixtral-8x7b --hardware dgx-h100-8x --gpus 8`` restricted to bf16,
    uncompressed: the best plan, and the same policy without expert parallelism."""
    m, hw, wl = get_model("mixtral-8x7b"), load_profile("dgx-h100-8x"), Workload(512, 32)
    space = SearchSpace(compress_weights=(False,), compress_cache=(False,), dtype="bf16")
    t0 = time.perf_counter()
    plan = search(m, hw, wl, gpus=8, space=space, compare=False)
    seconds = time.perf_counter() - t0
    pol = plan.policy
    without = estimate(m, hw, wl, pol.with_(expert_parallel=False))
    return {"policy": {"tp": pol.tp, "pp": pol.pp, "dp": pol.dp, "expert_parallel": pol.expert_parallel,
                       "gpu_batch_size": pol.gpu_batch_size, "num_gpu_batches": pol.num_gpu_batches},
            "throughput_tok_s": plan.estimate.throughput_tok_s, "without_expert_parallel_tok_s":
                without.throughput_tok_s, "gain": plan.estimate.throughput_tok_s / without.throughput_tok_s,
            "search_seconds": seconds, "candidates": plan.candidates_total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = {"counts": counts(), "offload_modes": offload_modes(), "expert_parallel": expert_parallel_plan()}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print("MoE presets: parameters (num_parameters, active_parameters) and KV bytes per token and layer, bf16")
    for r in out["counts"]:
        print(f"  {r['model']:20s} {r['total_B']:7.1f}B total {r['active_B']:6.2f}B active  experts {r['experts']:>6s}"
              f"  KV {r['kv_bytes_per_token_layer']:6d} B")
    print("Mixtral-8x7B on h100-pcie5, weights 25/75/0 (GPU/CPU/disk), prompt 128: decode tok/s by expert_offload")
    print(f"  {'batch':>5s} {'E_touched':>9s} {'prefetch':>16s} {'fetch':>16s} {'cpu':>16s}")
    for r in out["offload_modes"]:
        cells = "".join(f" {r[k]['decode_tok_s']:8.1f} ({r[k]['bottleneck']:>4s})" for k in ("prefetch", "fetch", "cpu"))
        print(f"  {r['gpu_batch_size']:5d} {r['experts_touched']:9.2f}{cells}")
    ep = out["expert_parallel"]
    p = ep["policy"]
    print(f"Mixtral-8x7B on dgx-h100-8x, 8 GPUs: tp {p['tp']} pp {p['pp']} dp {p['dp']} expert_parallel "
          f"{p['expert_parallel']}, batch {p['gpu_batch_size']} x {p['num_gpu_batches']}: "
          f"{ep['throughput_tok_s']:.0f} tok/s, {ep['gain']:.2f}x the same policy without expert parallelism "
          f"(search {ep['search_seconds']:.1f} s over {ep['candidates']} candidates)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
