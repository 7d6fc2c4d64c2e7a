"""The time of one serving iteration: a mixed batch of prefill chunks and decodes.

This is the only module of ``simulator.serving`` that imports the operation costs
(``simulator.ops``, with the executor's kernel counts of ``simulator.engines.llmsim``). The operations and their costs are those of ``estimate()``; what
differs is the batch: Orca's selective batching (OSDI'22, section 4.2) runs the GEMMs and
the elementwise work on the concatenated tokens of every request in the batch, and
attention per request at its own context length.

Per layer, on one tensor-parallel rank of one pipeline stage, for a batch of ``m`` tokens
(the prefill chunks' tokens plus one per decode)::

    layer = GEMMs(m) + elementwise(m) + 2 all-reduces of m x hidden (tp > 1)
          + prefill attention: one kernel over every chunk (roofline on their summed FLOP
            and bytes, ``chunk_attention_work``)
          + decode attention: one kernel over the decodes' summed context
            (``decode_attention_time_s`` of one sequence attending to sum(context) keys:
            the bytes and FLOP are linear in b x context, so it is the batch's)

The head, once per stage pass: embeddings of the m tokens, the final norm and LM head on
the ``n`` sequences that sample a token (``HEAD_KERNELS`` launches), vocab-parallel
all-reduces (tp > 1); and the hand-over of m hidden states to the next stage (pp > 1),
which runs on its own link beside compute.

With a share ``f`` of the weights in CPU memory (``weights_cpu_frac``), each layer's share
``f x W_layer / h2d`` streams in beside the previous unit's compute, as ``estimate()``
overlaps it: ``(L - 1) max(layer, w_layer) + max(layer, w_head) + max(head, w_layer, p2p)``.

One iteration through a pipeline of ``pp`` stages takes ``pp`` stage passes (the batch
goes through every stage; ``estimate()``'s one-micro-batch pipeline factor); vLLM runs pp
such batches at once ("virtual engines", ``simulator.serving.simulate``).

Kernels: every operation pays the device's fixed cost per kernel (``launch_s``), as many
kernels as the executor launches (``ELEMENTWISE_KERNELS`` per layer, one per attention),
unless the engine says otherwise:
- an engine that replays CUDA graphs pays its own ``launch_s`` per kernel;
- one that fuses its layer into ``layer_kernels`` non-GEMM kernels (attention included)
  pays ``layer_kernels - 1 - ELEMENTWISE_KERNELS`` launches fewer per layer than the
  elementwise term counts (the bytes it moves are the same);
- one that attends per request (``attention_ops_per_request`` k, llmsim's executor) pays,
  per layer, n decode attentions at the mean context with k launches each, and k launches
  per chunk; it first copies each request's K and V rows out of the paged pool (read and
  written: ``2 x`` their bytes at the device's memory rate), and its chunks attend with an
  explicit causal mask, which computes every (query, key) pair of the chunk: ``4 q (c0 + q)
  q_dim / tp`` FLOP (``chunk_attention_work(..., masked=True)``);
- one with vLLM's custom all-reduce pays its one- or two-stage time by message size
  (``custom_allreduce_time_s``) instead of NCCL's ring.
Decode attention of a model without grouped queries (as many K/V heads as query heads, not
MLA) reads at ``mha_decode_read_share`` of the device's rate when the engine says its
kernel does (engine data with its source; 1 otherwise).
An engine whose host builds each iteration's inputs with torch operations pays them serially
(``host_ops_per_iteration + host_ops_per_request x requests`` launches; llmsim's executor:
its block tables, slots, tokens and positions). KV blocks swapped between GPU and CPU memory this iteration move before it computes (vLLM
v0's cache engine waits for them): ``out x block bytes / d2h + in x block bytes / h2d``. An
engine may add a fixed host overhead per iteration (``overhead_s``, engine data with its
source).

With one request at a time this is ``estimate()`` of that request's batch of one, prefill
and decode steps alike (tests/test_serving_properties.py). Units: s, tokens, bytes, FLOP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.engines.llmsim import ELEMENTWISE_KERNELS, HEAD_KERNELS, elementwise_kernels
from simulator.ops import (decode_attention_time_s, kv_share, layer_elementwise_time_s, layer_matmul_time_s,
                           prefill_attention_time_s, rank_bytes)
from simulator.parallel import rank_view
from simulator.errors import PolicyError
from simulator.hardware import HardwareProfile
from simulator.models import DTYPE_BYTES, ModelSpec
from simulator.parallel import allreduce_time_s, send_time_s

__all__ = ["IterationCost", "chunk_attention_work", "custom_allreduce_time_s", "prefill_attention_time_s",
           "default_dtype", "rank_bytes",
           "kv_share", "rank_view"]


def default_dtype(model: ModelSpec, hw: HardwareProfile) -> str:
    """The model's dtype when the device rates it, else fp16, bf16, fp32 in that order."""
    dts = hw.device.dtypes
    if model.dtype in dts:
        return model.dtype
    return "fp16" if "fp16" in dts else ("bf16" if "bf16" in dts else "fp32")


def chunk_attention_work(model: ModelSpec, q, c0, dtype: str, tp: int = 1,
                         masked: bool = False) -> tuple[float, float]:
    """(FLOP, bytes) of causal attention for prefill chunks of ``q`` new tokens after ``c0``
    tokens already in the cache (arrays of chunks), on one tensor-parallel rank.

    New token j (1..q) attends to c0 + j keys, 4 x head_dim FLOP per (query, key) and head
    (QK^T and PV): ``FLOP = 2 q (q + 1 + 2 c0) q_dim / tp``. Bytes: the chunk's queries read
    and outputs written, ``2 q q_dim / tp``, and the K and V of all ``c0 + q`` keys,
    ``2 (c0 + q) kv_dim x kv_share``, times the dtype's bytes. For c0 = 0 this is
    ``prefill_attention_time_s``'s prompt of q tokens (Sarathi, arXiv 2308.16369, section 3,
    for the chunked split). ``masked``: the kernel is given an explicit causal mask and
    computes every (query, key) pair, ``FLOP = 4 q (c0 + q) q_dim / tp`` (PyTorch's CPU
    scaled_dot_product_attention with an ``attn_mask`` costs what it costs unmasked).
    Units: FLOP, bytes."""
    q = np.asarray(q, float)
    c0 = np.asarray(c0, float)
    e = DTYPE_BYTES[dtype]
    flop = (4.0 * q * (c0 + q) if masked else 2.0 * q * (q + 1 + 2 * c0)) * model.q_dim / tp
    nbytes = (q * 2 * model.q_dim / tp + (c0 + q) * 2 * model.kv_dim * kv_share(model, tp)) * e
    return float(flop.sum()), float(nbytes.sum())


# vLLM's custom all-reduce buffer by tp on Hopper (sm 9.0; vllm/distributed/device_communicators/
# all_reduce_utils.py, CUSTOM_ALL_REDUCE_MAX_SIZES, which applies with torch symmetric memory on): larger
# bf16 tensors go to symmetric memory up to SYMM_MEM_ALL_REDUCE_MAX_SIZES, the rest to NCCL.
CUSTOM_ALLREDUCE_MAX_BYTES = {2: 64 * 2**20, 4: 32 * 2**20, 6: 2**19, 8: 2**18}
SYMM_MEM_ALLREDUCE_MAX_BYTES = {2: 64 * 2**20, 4: 32 * 2**20, 6: 64 * 2**20, 8: 64 * 2**20}


def custom_allreduce_time_s(nbytes, tp: int, busbw_bytes_per_s: float, latency_s: float, ring_s,
                            dtype: str = "fp16"):
    """vLLM's all-reduce over NVLink on Hopper, by message size S
    (vllm/distributed/device_communicators/cuda_communicator.py tries, in order, its custom
    all-reduce, torch symmetric memory, then NCCL):

    - custom all-reduce (csrc/custom_all_reduce.cuh), one stage, every rank reading its
      peers' buffers: ``latency + (tp - 1) S / busbw``, for tp = 2, or S < 512 KiB with
      tp <= 4, or S < 256 KiB with tp <= 8;
    - custom all-reduce in two stages (reduce-scatter then all-gather through peer memory):
      ``2 latency + 2 (tp - 1)/tp x S / busbw``; up to its buffer
      (``CUSTOM_ALLREDUCE_MAX_BYTES``);
    - above that, bf16 tensors up to ``SYMM_MEM_ALLREDUCE_MAX_BYTES`` take torch symmetric
      memory (symm_mem.py: bf16 only; two-shot for tp 2 and 4, NVLink-multicast ``multimem``
      for 6 and 8), priced as the two-stage pass: on 8 H100s the published multimem times
      (vllm-project/vllm PR #42324: 14 / 46 / 165 us at 1 / 8 / 32 MiB) are what that formula
      gives at the profile's 370 GB/s bus bandwidth and 5 us latency (15 / 50 / 169 us);
    - everything else the collective library's ring (``ring_s``,
      ``simulator.parallel.allreduce_time_s``).
    ``nbytes`` may be an array. Unit: s."""
    s = np.asarray(nbytes, float)
    one = latency_s + (tp - 1) * s / busbw_bytes_per_s
    two = 2 * latency_s + 2 * (tp - 1) / tp * s / busbw_bytes_per_s
    small = (tp == 2) | ((tp <= 4) & (s < 2**19)) | (s < 2**18)
    beyond = ring_s
    if dtype == "bf16":
        beyond = np.where(s <= SYMM_MEM_ALLREDUCE_MAX_BYTES.get(tp, 0), two, ring_s)
    return np.where(s > CUSTOM_ALLREDUCE_MAX_BYTES.get(tp, 0), beyond, np.where(small, one, two))


@dataclass(frozen=True)
class IterationCost:
    """Tables of the per-iteration costs of one replica layout, indexed by token counts.

    ``time_s`` evaluates one iteration from table look-ups and a few scalars; ``decode_run_s``
    a run of decode-only iterations at once (vectorized). Build with ``IterationCost.build``.
    """

    model: ModelSpec
    dtype: str
    tp: int
    pp: int
    layers: int  # layers of the busiest stage
    max_tokens: int
    layer_base: np.ndarray  # [m]: GEMMs + elementwise + tp all-reduces of one layer, m tokens
    head_tokens: np.ndarray  # [m]: the head's per-token part (embeddings, vocab all-reduce)
    head_seqs: np.ndarray  # [n]: LM head GEMM, norms, logits, kernels, all-gather for n sequences
    p2p: np.ndarray  # [m]: hand-over of m hidden states to the next stage (0 when pp = 1)
    w_layer_s: float  # streamed weight share of one layer over h2d
    w_head_s: float
    peak_flop_per_s: float
    mem_bytes_per_s: float
    launch_s: float
    kv_block_bytes: float  # one block's K and V on one rank: block x kv bytes x layers of a stage
    kv_token_bytes: float  # one token's K and V in one layer on one rank
    block_size: int
    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    overhead_s: float
    hw: HardwareProfile
    dev: object = None  # the device as the engine launches its kernels
    attention_ops: int | None = None  # attention per request with this many launches (None: one kernel per kind)
    decode_read_share: float = 1.0  # share of the device's read rate the decode-attention kernel reaches
    host_ops: tuple = (0, 0)  # host torch ops per iteration and per request that build the inputs

    @classmethod
    def build(cls, model: ModelSpec, hw: HardwareProfile, dtype: str, tp: int = 1, pp: int = 1,
              max_tokens: int = 8192, max_seqs: int = 256, block_size: int = 16, weights_cpu_frac: float = 0.0,
              overhead_s: float = 0.0, launch_s: float | None = None,
              layer_kernels: int | None = None, custom_allreduce: bool = False,
              attention_ops_per_request: int | None = None,
              mha_decode_read_share: float = 1.0, host_ops: tuple = (0, 0)) -> "IterationCost":
        from dataclasses import replace
        if dtype not in DTYPE_BYTES:
            raise PolicyError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
        dev = hw.device if launch_s is None else replace(hw.device, launch_s=launch_s)
        dev.peak_flop_per_s(dtype)  # raises ProfileError naming the missing key
        rv = rank_view(model, hw, tp, pp, 1)
        e = DTYPE_BYTES[dtype]
        h, V = model.hidden_size, model.vocab_size
        m = np.arange(max_tokens + 1, dtype=float)
        n = np.arange(max_seqs + 1, dtype=float)
        m[0] = n[0] = 1.0  # index 0 (no tokens) is zeroed below; 1 keeps MoE routing finite
        layer = layer_matmul_time_s(model, dev, m, dtype, tp) + layer_elementwise_time_s(
            model, dev, m, dtype, tp, elementwise_kernels(model, m, dtype))
        family = ("opt" if model.is_opt else "llama", "fp32" if dtype == "fp32" else "half")
        if layer_kernels is not None:  # the engine's fused layer: fewer launches, the same bytes
            layer = layer + (layer_kernels - 1 - ELEMENTWISE_KERNELS[family]) * dev.launch_s
        head_m = dev.stream_time_s(m * h * e * (5 if model.is_opt else 2), 0)  # OPT adds learned positions
        hk = HEAD_KERNELS[family]
        head_n = dev.matmul_time_s(n, h, -(-V // tp), dtype, e) + dev.stream_time_s(n * (2 * h + V / tp) * e, hk)
        if tp > 1:
            def ar(nbytes):
                ring = allreduce_time_s(nbytes, tp, rv.collective_bytes_per_s, rv.collective_latency_s)
                if not custom_allreduce:
                    return ring
                return custom_allreduce_time_s(nbytes, tp, rv.collective_bytes_per_s, rv.collective_latency_s, ring,
                                               dtype)
            layer = layer + 2 * ar(m * h * e)
            head_m = head_m + ar(m * h * e)
            head_n = head_n + ar(n * 16.0)
        p2p = send_time_s(m * h * e, rv.p2p_bytes_per_s, rv.p2p_latency_s) if pp > 1 else np.zeros_like(m)
        layer, head_m, head_n, p2p = (np.array(t, float) for t in (layer, head_m, head_n, p2p))
        for table in (layer, head_m, head_n, p2p):
            table[0] = 0.0
        ks = kv_share(model, tp)
        w_layer = rank_bytes(model.layer_tensors(), dtype, tp, ks)
        lm = model.lm_head_tensor()
        w_head = lm.nbytes(dtype) / tp + sum(t.nbytes(dtype) for t in model.head_tensors() if not t.is_matrix)
        h2d = hw.links.h2d_bytes_per_s
        return cls(model=model, dtype=dtype, tp=tp, pp=pp, layers=rv.layers, max_tokens=max_tokens,
                   layer_base=layer, head_tokens=head_m, head_seqs=head_n, p2p=p2p,
                   w_layer_s=weights_cpu_frac * w_layer / h2d, w_head_s=weights_cpu_frac * w_head / h2d,
                   peak_flop_per_s=dev.peak_flop_per_s(dtype), mem_bytes_per_s=dev.mem_bytes_per_s,
                   launch_s=dev.launch_s, dev=dev,
                   kv_block_bytes=block_size * model.kv_bytes_per_token(dtype) * ks * rv.layers,
                   kv_token_bytes=model.kv_bytes_per_token(dtype) * ks,
                   block_size=block_size, h2d_bytes_per_s=h2d, d2h_bytes_per_s=hw.links.d2h_bytes_per_s,
                   overhead_s=overhead_s, hw=hw, attention_ops=attention_ops_per_request,
                   decode_read_share=mha_decode_read_share if model.num_kv_heads == model.num_heads
                   and not model.is_mla else 1.0, host_ops=tuple(host_ops))

    # ------------------------------------------------------------------ attention
    def prefill_attention_s(self, flop: float, nbytes: float, chunks: int = 1, keys: float = 0.0) -> float:
        """The prefill chunks' attention: roofline on their summed FLOP and bytes, and one
        launch (one fused kernel, as ``prefill_attention_time_s``) or, with attention per
        request, ``attention_ops`` launches per chunk and the copy of the ``keys`` K/V rows
        the chunks attend over (``gather_s``)."""
        if flop <= 0.0:
            return 0.0
        t = max(flop / self.peak_flop_per_s, nbytes / self.mem_bytes_per_s)
        if self.attention_ops is None:
            return t + self.launch_s
        return t + self.attention_ops * chunks * self.launch_s + self.gather_s(keys)

    def gather_s(self, keys):
        """Attention per request copies each request's K and V rows out of the paged pool
        into one tensor before attending: ``2 x keys x kv_token_bytes`` read and written at
        the device's memory rate (launches are in ``attention_ops``). Unit: s."""
        return 2.0 * np.asarray(keys, float) * self.kv_token_bytes / self.mem_bytes_per_s

    def decode_attention_s(self, context_sum, decodes: int = 1):
        """Decode attention of ``decodes`` sequences whose contexts sum to ``context_sum``
        (scalar or array): ``decode_attention_time_s`` of one sequence over that many keys,
        or, with attention per request, ``decodes`` of them at the mean context with
        ``attention_ops`` launches each, after the copy of their K/V rows (``gather_s``)."""
        if self.attention_ops is None:
            return decode_attention_time_s(self.model, self.dev, 1, context_sum, self.dtype, tp=self.tp,
                                           read_share=self.decode_read_share)
        return decodes * decode_attention_time_s(self.model, self.dev, 1, np.asarray(context_sum) / decodes,
                                                 self.dtype, ops=self.attention_ops, tp=self.tp,
                                                 read_share=self.decode_read_share) \
            + self.gather_s(context_sum)

    # ------------------------------------------------------------------ iterations
    def host_s(self, requests):
        """The host's input-building operations of an iteration of ``requests`` requests
        (decodes and prefill chunks), at the device's launch cost each. Unit: s."""
        per_iteration, per_request = self.host_ops
        return (per_iteration + per_request * np.asarray(requests, float)) * self.launch_s

    def _stage(self, layer, head, p2p):
        L = self.layers
        if self.w_layer_s == 0.0:
            return L * layer + np.maximum(head, p2p)
        wl, wh = self.w_layer_s, self.w_head_s
        return (L - 1) * np.maximum(layer, wl) + np.maximum(layer, wh) + np.maximum(np.maximum(head, wl), p2p)

    def time_s(self, tokens: int, samples: int, prefill_flop: float = 0.0, prefill_bytes: float = 0.0,
               decodes: int = 0, decode_context_sum: float = 0.0, swap_out_blocks: int = 0,
               swap_in_blocks: int = 0, chunks: int = 1, chunk_keys: float = 0.0) -> float:
        """One iteration of ``tokens`` tokens in all, ``samples`` sequences sampling a token,
        prefill chunks of summed (FLOP, bytes) (``chunk_attention_work``) over ``chunk_keys``
        keys in all (their ``c0 + q``), and ``decodes`` decodes over ``decode_context_sum``
        keys in all. Unit: s."""
        layer = self.layer_base[tokens] + self.prefill_attention_s(prefill_flop, prefill_bytes, chunks, chunk_keys)
        if decodes:
            layer = layer + float(self.decode_attention_s(decode_context_sum, decodes))
        head = self.head_tokens[tokens] + self.head_seqs[samples]
        t = self.pp * float(self._stage(layer, head, self.p2p[tokens])) + self.overhead_s
        if self.host_ops != (0, 0):
            t += float(self.host_s(decodes + (chunks if prefill_flop > 0.0 else 0)))
        if swap_out_blocks or swap_in_blocks:
            t += self.kv_block_bytes * (swap_out_blocks / self.d2h_bytes_per_s + swap_in_blocks / self.h2d_bytes_per_s)
        return t

    def decode_run_s(self, decodes: int, context_sum0: float, steps: int) -> np.ndarray:
        """Times of ``steps`` consecutive decode-only iterations of the same ``decodes``
        sequences, the first over ``context_sum0`` keys in all, each next one over ``decodes``
        more. Unit: s (array of length ``steps``)."""
        ctx = context_sum0 + decodes * np.arange(steps, dtype=float)
        layer = self.layer_base[decodes] + self.decode_attention_s(ctx, decodes)
        head = self.head_tokens[decodes] + self.head_seqs[decodes]
        return self.pp * self._stage(layer, head, self.p2p[decodes]) + self.overhead_s + self.host_s(decodes)
