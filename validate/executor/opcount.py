"""Count the operations the executor really launches, for ``simulator.cost``'s executor contract.

``simulator.cost`` charges a launch overhead per kernel (GPU) or operator call (CPU):
``ELEMENTWISE_KERNELS`` per layer and GPU batch, ``HEAD_KERNELS`` per head pass and GPU
batch, ``DEQUANT_KERNELS_PER_TENSOR``, ``QUANT_KERNELS_PER_TENSOR`` and
``CPU_ATTENTION_OPS``. ``measure_op_counts`` runs a tiny model through the real executor
under a ``TorchDispatchMode`` that counts every aten operation that does work (views and
bare allocations excluded), attributed to the region label the executor's code was in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from simulator.models import ModelSpec
from simulator.policy import Placement, Policy, Workload

aten = torch.ops.aten
# Operations that launch no kernel: metadata-only (not tagged as views) and bare allocations.
_NO_WORK = {aten._unsafe_view.default, aten.empty.memory_format, aten.empty_strided.default,
            aten.empty_like.default, aten._local_scalar_dense.default, aten.lift_fresh.default}


class OpCounter(TorchDispatchMode):
    """Counts working aten operations per (phase, label); see ``Timers.label``."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self.key = ("none", "unlabelled")
        self.phase_of = lambda: "none"

    def push(self, label: str):
        previous = self.key
        self.key = (self.phase_of(), label)
        return previous

    def pop(self, previous) -> None:
        self.key = previous

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (getattr(func, "is_view", False) or func in _NO_WORK):
            self.counts[self.key] += 1
        return func(*args, **(kwargs or {}))

    def total(self, phase: str, *labels: str) -> int:
        return sum(self.counts[(phase, label)] for label in labels)


@dataclass(frozen=True)
class OpCounts:
    """Operations per unit of work, measured on ``device`` (numbers, may be fractional)."""

    family: str
    device: str
    elementwise_per_layer: dict  # {prefill, decode}: per layer and GPU batch
    head_per_batch: dict  # {prefill, decode}: per head pass and GPU batch
    dequant_per_tensor: dict  # {weights, cache}
    quant_per_tensor: float  # cache (K or V) quantization, per tensor
    cpu_attention_ops: float  # per layer and GPU batch, decode

    def to_dict(self) -> dict:
        return asdict(self)


def tiny_spec(family: str) -> ModelSpec:
    """A small model of the family with head_dim 64 (one compression group per cache row)."""
    if family == "opt":
        return ModelSpec(name="opcount-opt", family="opt", hidden_size=128, num_layers=2, num_heads=2,
                         num_kv_heads=2, ffn_dim=256, vocab_size=256, max_position_embeddings=64,
                         tie_word_embeddings=True)
    return ModelSpec(name=f"opcount-{family}", family=family, hidden_size=128, num_layers=2, num_heads=2,
                     num_kv_heads=1, ffn_dim=192, vocab_size=256, max_position_embeddings=64)


def _count(spec: ModelSpec, policy: Policy, workload: Workload, device: str) -> OpCounter:
    from validate.executor.engine import Executor

    ex = Executor(spec, workload, policy, device=device)
    counter = OpCounter()
    ex.counter = counter
    with counter:
        ex.run()
    return counter


def measure_op_counts(family: str = "opt", device: str = "cpu", dtype: str = "fp16") -> OpCounts:
    """Run a 2-layer model (prefill + one decode step, one GPU batch of 2) and count operations."""
    spec = tiny_spec(family)
    L, nb = spec.num_layers, 1
    wl = Workload(prompt_len=4, gen_len=2)
    base = Policy(gpu_batch_size=2, num_gpu_batches=nb, dtype=dtype)
    c = _count(spec, base, wl, device)
    layer_ew = ("elementwise", "cache_rows", "cache_write")
    ew = {ph: c.total(ph, *layer_ew) / (L * nb) for ph in ("prefill", "decode")}
    head = {ph: c.total(ph, "head") / nb for ph in ("prefill", "decode")}

    n_mat = sum(1 for t in spec.layer_tensors() if t.is_matrix)
    cw = _count(spec, base.with_(compress_weights=True), wl, device)
    deq_w = cw.total("decode", "dequant_weights") / (L * n_mat)
    cc = _count(spec, base.with_(compress_cache=True), wl, device)
    quant = cc.total("decode", "quant_cache") / (L * nb * 2)
    deq_c = cc.total("decode", "dequant_cache") / (L * nb * 2)
    ca = _count(spec, base.with_(cpu_attention=True, cache=Placement(0.0, 1.0, 0.0)), wl, device)
    catt = ca.total("decode", "cpu_attention") / (L * nb)
    return OpCounts(family=family, device=device, elementwise_per_layer=ew, head_per_batch=head,
                    dequant_per_tensor={"weights": deq_w, "cache": deq_c}, quant_per_tensor=quant,
                    cpu_attention_ops=catt)
