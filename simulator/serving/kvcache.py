"""Paged KV cache (vLLM, Kwon et al., SOSP'23, section 4.2): the cache is fixed-size blocks of
``block_size`` tokens; a sequence holds ``ceil(own tokens / block_size)`` blocks, where its
own tokens are those not shared through the prefix cache.

How many blocks fit on one GPU (vLLM's memory profiling, ``gpu_memory_utilization``)::

    kv bytes = usable x util - weights on the rank - activations of the largest batch
    blocks   = floor(kv bytes / (block_size x kv bytes per token x kv_share x layers of a stage))

- weights: the rank's share of its stage's layers plus the head tensors (matrices split tp
  ways, the KV projections by ``kv_share``; ``rank_bytes``), times the GPU share of the
  weights; with a CPU share, two layers of streaming buffers and the LM head's streamed rows.
- activations: the batch in flight of ``max_num_batched_tokens`` tokens (hidden in and out,
  q/k/v, attention output and MLP intermediate, as ``simulator.memory``'s in-flight term)
  and fp32 logits for ``max_num_seqs`` sequences.
Swap space (``swap_space_bytes`` of CPU memory per GPU) holds ``floor(swap / block bytes)``
blocks. Units: bytes, tokens, blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.models import DTYPE_BYTES, ModelSpec
from simulator.serving.costs import kv_share, rank_bytes, rank_view

LOGIT_BYTES = 4  # vLLM samples from fp32 logits


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks that hold ``tokens`` tokens: ceil(tokens / block_size)."""
    return -(-int(tokens) // block_size)


@dataclass(frozen=True)
class KVBudget:
    """One GPU's memory split of a replica layout. Bytes, blocks, tokens."""

    usable_bytes: float
    weights_bytes: float
    activations_bytes: float
    kv_bytes: float
    block_bytes: float
    num_blocks: int
    block_size: int
    swap_blocks: int
    overridden: bool = False

    @property
    def tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def feasible(self) -> bool:
        return self.num_blocks > 0

    def reason(self) -> str:
        from simulator.units import GiB
        if self.feasible:
            return ""
        return (f"no room for the KV cache: weights {self.weights_bytes / GiB:.2f} GiB + activations "
                f"{self.activations_bytes / GiB:.2f} GiB per GPU exceed the {self.usable_bytes / GiB:.2f} GiB "
                "the engine may use")

    def to_dict(self) -> dict:
        return {"usable_bytes": self.usable_bytes, "weights_bytes": self.weights_bytes,
                "activations_bytes": self.activations_bytes, "kv_bytes": self.kv_bytes,
                "block_bytes": self.block_bytes, "num_blocks": self.num_blocks, "block_size": self.block_size,
                "tokens": self.tokens, "swap_blocks": self.swap_blocks, "num_blocks_overridden": self.overridden}


def kv_budget(model: ModelSpec, hw, dtype: str, tp: int, pp: int, block_size: int, gpu_memory_utilization: float,
              max_num_batched_tokens: int, max_num_seqs: int, swap_space_bytes: float = 0.0,
              weights_cpu_frac: float = 0.0, num_gpu_blocks: int | None = None) -> KVBudget:
    """The KV blocks one GPU of a (tp, pp) replica holds (module docstring)."""
    rv = rank_view(model, hw, tp, pp, 1)
    e = DTYPE_BYTES[dtype]
    ks = kv_share(model, tp)
    layer = rank_bytes(model.layer_tensors(), dtype, tp, ks)
    head = rank_bytes(model.head_tensors(), dtype, tp)
    lm = model.lm_head_tensor().nbytes(dtype) / tp
    weights = (1.0 - weights_cpu_frac) * (rv.layers * layer + head)
    if weights_cpu_frac > 0:
        weights += 2 * weights_cpu_frac * layer + weights_cpu_frac * lm
    h = model.hidden_size
    mlp = model.ffn_dim * (1 if model.is_opt else 3) / tp * (model.experts_per_token if model.is_moe else 1)
    width = 3 * h + 2 * model.q_dim / tp + 2 * model.kv_dim * ks + mlp
    act = max_num_batched_tokens * width * e + max_num_seqs * model.vocab_size / tp * LOGIT_BYTES
    usable = hw.device.usable_bytes * gpu_memory_utilization
    block_bytes = block_size * model.kv_bytes_per_token(dtype) * ks * rv.layers
    kv = usable - weights - act
    blocks = max(0, math.floor(kv / block_bytes))
    if num_gpu_blocks is not None:
        blocks = num_gpu_blocks
    swap = math.floor(swap_space_bytes / block_bytes) if swap_space_bytes > 0 else 0
    return KVBudget(usable_bytes=usable, weights_bytes=weights, activations_bytes=act, kv_bytes=kv,
                    block_bytes=block_bytes, num_blocks=blocks, block_size=block_size, swap_blocks=swap,
                    overridden=num_gpu_blocks is not None)
