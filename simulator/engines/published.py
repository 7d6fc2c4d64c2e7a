"""Published runs of the engines as (model, policy, engine) - the flags of their run scripts -
so that predictions can be checked against the figures in ``shared/data/``.

ZeRO-Inference and FlexGen on one A6000 (``zero_inference_a6000.csv``): the flags are those
of microsoft/DeepSpeedExamples@83757d9 ``inference/huggingface/zero_inference/run_opt30b_a6000.sh``,
``run_opt66b_a6000.sh``, ``run_opt175b_a6000.sh``, ``run_llama2_70b_a6000.sh``:

* ZeRO-Inference: ``--cpu-offload`` or ``--disk-offload`` (all weights on that tier),
  ``--quant_bits 4``, ``--kv-offload`` (cache on the CPU, attention there);
  ``--pin-memory 1`` only for the 4-bit runs without KV offload of OPT-30B, OPT-66B and
  Llama-2-70B (every other run, and OPT-175B's, passes ``--pin-memory 0``).
* FlexGen 0.1.7: ``--percent 0 100 100 0 100 0`` (weights on the CPU, cache and activations on
  the GPU), ``0 100 0 100 0 100`` with KV offload (cache and activations on the CPU),
  ``0 0 0 100 0 100`` for the NVMe run; ``--pin-weight 0``, ``--num-gpu-batches 1``,
  ``--compress-weight`` for 4-bit; no ``--cpu-cache-compute`` (attention on the GPU).

Prompt 512, 32 generated tokens, one batch of ``batch_size`` sequences.

The planner check (``planner_best``): the README says each figure is "the best observed
throughput from a batch size sweep", so the file is also a check of the planner - the best
predicted throughput of the engine under the row's published constraints (its weights
tier, 4-bit weights or not, KV offload or not) over the batch sizes that fit, against the
row's throughput.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

from simulator.engines.base import get_engine
from simulator.models import get_model
from simulator.policy import Placement, Policy, Workload

A6000_WORKLOAD = Workload(prompt_len=512, gen_len=32)
ZERO_PINNED = {"opt-30b", "opt-66b", "llama-2-70b"}  # --pin-memory 1 for their 4-bit, no-KV-offload runs


@dataclass(frozen=True)
class PublishedRun:
    engine_name: str
    quant4: bool
    kv_offload: bool
    model_name: str
    batch_size: int
    weights_tier: str
    measured_tok_s: float

    @property
    def label(self) -> str:
        return (f"{self.engine_name} {self.model_name} bsz {self.batch_size} {self.weights_tier}"
                f"{' q4' if self.quant4 else ''}{' kv' if self.kv_offload else ''}")

    @property
    def model(self):
        return get_model(self.model_name)

    def policy(self) -> Policy:
        on = {"cpu": Placement(0.0, 1.0, 0.0), "disk": Placement(0.0, 0.0, 1.0)}[self.weights_tier]
        cache = Placement(0.0, 1.0, 0.0) if self.kv_offload else Placement()
        if self.engine_name == "zero-inference":
            return Policy(gpu_batch_size=self.batch_size, weights=on, cache=cache, cpu_attention=self.kv_offload,
                          compress_weights=self.quant4)
        acts = Placement(0.0, 1.0, 0.0) if self.kv_offload else Placement()
        return Policy(gpu_batch_size=self.batch_size, weights=on, cache=cache, activations=acts,
                      compress_weights=self.quant4)

    def engine(self):
        if self.engine_name == "zero-inference":
            pinned = self.quant4 and not self.kv_offload and self.model_name in ZERO_PINNED
            return get_engine("zero-inference", pin_memory=pinned)
        return get_engine("flexgen", pin_weights=False)


def read_runs(path: str | Path) -> list[PublishedRun]:
    """The rows of ``zero_inference_a6000.csv`` (comment lines start with '#')."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [PublishedRun(r["engine"], r["quant4"] == "1", r["kv_offload"] == "1", r["model"], int(r["batch_size"]),
                         r["weights_tier"], float(r["measured_tok_s"])) for r in rows]


# The batch sizes the planner check sweeps: the search's grid (simulator.search.GPU_BATCH_SIZES)
# with the published runs' own sizes and their neighbours added.
PLANNER_BATCH_SIZES = (1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64, 80, 96, 100, 112, 128, 160, 192, 200,
                       224, 256, 280, 320, 384, 448, 512)


def planner_best(run: PublishedRun, hw, batch_sizes=PLANNER_BATCH_SIZES):
    """(batch size, estimate) of the highest predicted throughput of ``run``'s engine under
    its published constraints over ``batch_sizes``; (None, None) when no batch fits."""
    from simulator.cost import estimate
    best_b, best = None, None
    for b in batch_sizes:
        est = estimate(run.model, hw, A6000_WORKLOAD, replace(run.policy(), gpu_batch_size=b), engine=run.engine())
        if est.feasible and (best is None or est.throughput_tok_s > best.throughput_tok_s):
            best_b, best = b, est
    return best_b, best

