"""PaLM 540B on 64 TPU v4 chips (Pope et al., "Efficiently Scaling Transformer Inference",
arXiv 2211.05102): llmsim's predicted MFU and latency per phase, layout by layout, at the
batch sizes of the paper's prefill and decode figures (2048-token prompts at batch 1..512;
decode over a 2048-token context at batch 64..1024), on the tpu-v4-64 profile (4 x 4 x 4,
the paper's chip and link figures). The model is the paper's 64-head padding of PaLM 540B
(it "partitions more effectively on 64+ chips"); MFU counts the 540B parameters, as the paper
does. Weights bf16; attention sharded over the batch (multi-query, section 3.3).

Formulas (printed with the figures):

    MFU (section 2.1)         = tokens x 2 N / (time x n chips x 275 TFLOP/s), N = 540.4e9
    prefill                   tokens = B x 2048, time = the prefill's
    decode, per token         time = one decode step (a token for each of B sequences),
                              MFU over B tokens per step
    communication per layer   1d-ws: 2 (n-1)/n BLE per all-reduce; 2d-ws: 2 BLE/X + 2 BLF/YZ
    (bytes per chip, A.2)     (~8 BLE/sqrt(n)); wg-N: W_layer N/n + 2 B/N L E (~4E sqrt(BLF/n))

The published figures are checked elsewhere; this prints llmsim's.

    python benchmarks/bench_palm_layouts.py [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from simulator.cost import estimate
from simulator.errors import LlmsimError
from simulator.hardware import load_profile
from simulator.layouts import partition
from simulator.models import get_model
from simulator.policy import Policy, Workload
from simulator.units import GiB
from simulator.vocabulary import PartitionLayout

PROMPT, GEN = 2048, 64
PREFILL_BATCHES = (1, 4, 16, 64, 256, 512)
DECODE_BATCHES = (64, 128, 256, 512, 1024)
N_PARAMS = get_model("palm-540b").num_parameters()  # the paper's MFU counts PaLM 540B's parameters


def comm_bytes(model, hw, layout: str, b: int, tokens: int) -> float:
    """Bytes one chip moves per layer in collectives (an all-reduce counts twice), for the
    formulas above."""
    part = partition(model, hw, 64, (layout, layout, "batch"))
    plan = part.phase("prefill" if tokens > 1 else "decode")
    ops = plan.collectives(np.array([float(b)]), tokens, 2, model.layer_weight_bytes("bf16") / 64)
    return sum(float(op.nbytes[0]) * (2 if op.kind.value == "all_reduce" else 1) for op in ops)


def row(model, hw, peak, phase: str, b: int, layout: str) -> dict | None:
    pol = Policy(gpu_batch_size=b, tp=64, dtype="bf16", prefill_layout=layout, decode_layout=layout,
                 attention_layout="batch")
    try:
        est = estimate(model, hw, Workload(PROMPT, GEN), pol)
    except LlmsimError:
        return None
    if phase == "prefill":
        t, tokens = est.prefill_latency_s, b * PROMPT
    else:
        t, tokens = est.decode_latency_s / (GEN - 1), b
    comm = sum(r["time_s"] for r in est.breakdown if r["phase"] == phase and r["component"] == "communication")
    if phase == "decode":
        comm /= GEN - 1
    return {"phase": phase, "batch": b, "layout": layout, "time_s": t, "mfu": tokens * 2 * N_PARAMS / (t * peak),
            "communication_s": comm, "comm_bytes_per_layer": comm_bytes(model, hw, layout, b,
                                                                        PROMPT if phase == "prefill" else 1),
            "fits": est.peak_memory_by_phase[phase]["gpu"] <= est.capacity_bytes["gpu"],
            "peak_gpu_GiB": est.peak_memory_by_phase[phase]["gpu"] / GiB}


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model, hw = get_model("palm-540b-64h"), load_profile("tpu-v4-64")
    peak = 64 * hw.device.peak_flop_per_s("bf16")
    rows = []
    for phase, batches in (("prefill", PREFILL_BATCHES), ("decode", DECODE_BATCHES)):
        for b in batches:
            for lay in PartitionLayout:
                r = row(model, hw, peak, phase, b, lay.value)
                if r is not None:
                    rows.append(r)
    best = {}
    for r in rows:
        key = (r["phase"], r["batch"])
        if r["fits"] and (key not in best or r["time_s"] < best[key]["time_s"]):
            best[key] = r
    if args.json:
        print(json.dumps({"rows": rows, "best": [best[k] for k in sorted(best)]}, indent=2))
        return {"rows": rows}
    print("Formulas" + __doc__.split("Formulas")[1].split("The published")[0].rstrip())
    print(f"\nPaLM 540B (64 heads) on {hw.name}: {model.num_parameters() / 1e9:.1f}B parameters run, MFU over "
          f"{N_PARAMS / 1e9:.1f}B; peak {peak / 1e15:.1f} PFLOP/s")
    for phase in ("prefill", "decode"):
        unit = "time" if phase == "prefill" else "ms/token"
        print(f"\n{phase} ({'2048-token prompts' if phase == 'prefill' else 'context 2048, per step'})")
        print(f"{'batch':>6} {'layout':>7} {unit:>10} {'MFU':>6} {'comm':>8} {'comm B/layer/chip':>18} {'GPU GiB':>8}")
        for b in (PREFILL_BATCHES if phase == "prefill" else DECODE_BATCHES):
            for r in (x for x in rows if x["phase"] == phase and x["batch"] == b):
                t = f"{r['time_s']:.3f} s" if phase == "prefill" else f"{r['time_s'] * 1e3:.1f}"
                mark = "*" if best.get((phase, b)) is r else " "
                print(f"{b:>6} {r['layout']:>7}{mark}{t:>10} {r['mfu']:>6.1%} {r['communication_s'] * 1e3:>6.1f}ms "
                      f"{r['comm_bytes_per_layer'] / 1e6:>15.1f} MB {r['peak_gpu_GiB']:>7.1f}"
                      + ("" if r["fits"] else "  (does not fit in 32 GiB)"))
    print("\n* the fastest layout that fits, per phase and batch")
    return {"rows": rows}


if __name__ == "__main__":
    main()
