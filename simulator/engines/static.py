"""Static-batching, GPU-resident inference engines with fused CUDA kernels and Megatron
tensor parallelism: NVIDIA FasterTransformer, DeepSpeed-Inference's tensor-parallel kernels
and TensorRT-LLM's static-batching session. Their published runs (A100 nodes, one model
replica of tp x pp GPUs, the whole batch prefilled then decoded together) are the records in
``validate/records/published/layouts/``.

Schedule: llmsim's (``simulator.engines.llmsim``) without offloading - every layer's GEMMs,
attention and elementwise work on the GPU from its measured (or roofline) rates, one forward
per layer per step, the batch as one GPU batch - and what differs in these engines:

* **Kernels**: the layer's elementwise work is fused into a few kernels (FasterTransformer's
  decoder: layer norm, fused masked multi-head attention with the bias and the cache write,
  add-bias-residual-layer-norm, add-bias-GeLU, add-bias-residual), so no per-kernel launch is
  charged per operator; instead each layer's forward costs a fixed ``layer_fixed_s`` of GPU
  time (the kernels' minimum durations and launch gaps, the sampling step's share), an engine
  constant with its source below.
* **Collectives**: NCCL all-reduces, which across nodes take a double binary tree for small
  messages and a ring for large ones (NCCL 2.4, "Massively Scale Your Deep Learning Training
  with NCCL 2.4", NVIDIA developer blog, 2019; inside a node the tree is a chain):
  ``min(ring, tree)`` with ``ring = 2 [(n - k) a_intra + k a_inter] + 2 (n-1)/n x S / busbw``
  over n GPUs on k nodes (a ring crosses the network k times) and
  ``tree = 2 [(g - 1) a_intra + ceil(log2 k) a_inter] + 2 (n-1)/n x S / busbw`` (g GPUs per
  node). The busbw is the profile's: NVSwitch inside a node, the network across nodes.

Units: bytes, seconds.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from simulator.engines import llmsim as _ll
from simulator.engines.base import Engine, EngineConstant, register
from simulator.engines.common import finish, shape_of
from simulator.errors import PolicyError
from simulator.parallel import send_time_s
from simulator.terms import C0, Component, Resource, TermsBuilder, channel_matrix

C, R = Component, Resource
PRE, DEC = TermsBuilder.PRE, TermsBuilder.DEC


def nccl_allreduce_time_s(nbytes, n: int, hw, gpus_per_node: int):
    """An NCCL all-reduce of ``nbytes`` over n GPUs (module docstring): the cheaper of the
    ring and the double binary tree. Unit: s."""
    nbytes = np.asarray(nbytes, dtype=float)
    if n <= 1:
        return 0.0 * nbytes
    ic = hw.interconnect
    g = max(1, min(n, gpus_per_node))
    k = -(-n // g)
    if k > 1:
        if ic.inter_node_bytes_per_s is None:
            raise PolicyError(f"hardware profile {hw.name}: interconnect.inter_node_GBps is needed for an all-reduce "
                              f"across {k} nodes but the profile does not give it")
        busbw = min(ic.inter_node_bytes_per_s, ic.intra_node_bytes_per_s or math.inf)
    else:
        if ic.intra_node_bytes_per_s is None:
            raise PolicyError(f"hardware profile {hw.name}: interconnect.intra_node_GBps is needed for an "
                              f"all-reduce over {n} GPUs but the profile does not give it")
        busbw = ic.intra_node_bytes_per_s
    a_in, a_out = ic.intra_node_latency_s, ic.inter_node_latency_s
    wire = 2.0 * (n - 1) / n * nbytes / busbw
    ring = 2.0 * ((n - k) * a_in + (k if k > 1 else 0) * a_out) + wire
    tree = 2.0 * ((g - 1) * a_in + (math.ceil(math.log2(k)) * a_out if k > 1 else 0.0)) + wire
    return np.minimum(ring, tree)


def unfused_attention_time_s(model, dev, b, s: int, dtype: str, tp: int = 1):
    """Prefill attention as three kernels that materialize the scores (FasterTransformer's
    unfused multi-head attention of its GPT context decoder: a batched GEMM Q K^T over the
    whole s x s square, a masked softmax in place, a batched GEMM with V), on one of tp
    ranks (H / tp heads), each at its roofline:
    ``QK: max(2 b s^2 q / tp / peak, (b s q / tp + b s kv_n + b H s^2 / tp) e / bw)``,
    ``softmax: 2 b H s^2 / tp e / bw``, ``PV: max(2 b s^2 q / tp / peak, (b H s^2 / tp +
    b s kv_n + b s q / tp) e / bw)`` with kv_n the rank's K (or V) width. Unit: s."""
    from simulator.models import DTYPE_BYTES
    from simulator.ops import kv_share
    e = DTYPE_BYTES[dtype]
    b = np.asarray(b, dtype=float)
    q, kv = model.q_dim / tp, model.kv_dim * kv_share(model, tp)
    scores = b * model.num_heads / tp * s * s * e
    flop = 2.0 * b * s * s * q
    peak, bw = dev.peak_flop_per_s(dtype), dev.mem_bytes_per_s
    qk = np.maximum(flop / peak, (b * s * (q + kv) * e + scores) / bw)
    softmax = 2.0 * scores / bw
    pv = np.maximum(flop / peak, (scores + b * s * (kv + q) * e) / bw)
    return qk + softmax + pv


class StaticEngine(Engine):
    """A static-batching GPU-resident engine (module docstring). Subclasses set ``name``,
    ``title``, ``source`` and ``layer_fixed`` (an ``EngineConstant`` in seconds, derived from
    one of the engine's published measurements: ``scripts/import_layouts.py`` prints the
    derivation, ``tests/test_layouts_records.py`` repeats it). The option ``layer_fixed_s``
    overrides it (None: the constant), which is how the derivation evaluates the engine
    without it."""

    layer_fixed: EngineConstant = None
    tiers = {"weights": ("gpu",), "cache": ("gpu",), "activations": ("gpu",)}
    in_comparison = False  # modelled for its published runs (their machines, their constants)
    options = {"layer_fixed_s": None}

    def __init__(self, layer_fixed_s: float | None = None):
        if layer_fixed_s is not None and not (isinstance(layer_fixed_s, (int, float)) and layer_fixed_s >= 0):
            raise PolicyError(f"{self.name} layer_fixed_s: {layer_fixed_s!r} must be a number >= 0 (seconds)")
        self.layer_fixed_s = layer_fixed_s

    @property
    def fixed_s(self) -> float:
        """GPU time of one layer's forward beyond its kernels' work. Unit: s."""
        return self.layer_fixed.value if self.layer_fixed_s is None else float(self.layer_fixed_s)

    @property
    def constants(self):
        return (self.layer_fixed,)

    def check(self, model, hw, policy) -> None:
        resident = all(getattr(policy, k).gpu_frac >= 1.0 - 1e-9 for k in ("weights", "cache", "activations"))
        if not resident or policy.cpu_attention or policy.compress_weights or policy.compress_cache:
            raise PolicyError(f"--engine {self.name}: keeps weights, cache and activations on the GPU, uncompressed "
                              "(placements 100,0,0; no CPU attention, no 4-bit compression)")
        if model.is_moe:
            raise PolicyError(f"--engine {self.name}: mixture-of-experts models are not modelled for this engine")

    # FasterTransformer's GPT context decoder computes attention unfused (below); the others fuse it.
    unfused_context_attention = False

    def micro_batches(self, b: int, tokens: int, pp: int) -> int:
        """How many micro-batches the engine splits a batch of b sequences of ``tokens``
        tokens into for its pipeline (default: none, the batch goes through whole)."""
        return 1

    def build_terms(self, model, hw, workload, shape, dtype, tp=1, pp=1, dp=1):
        """llmsim's GPU work at zero launch cost per kernel, plus ``layer_fixed_s`` per layer
        forward, NCCL all-reduces and pipeline sends (module docstring); each phase with the
        engine's own micro-batches (``micro_batches``) through a pipeline."""
        from simulator.engines.common import pipeline_mult
        from simulator.terms import BatchShape
        fused = replace(hw, device=replace(hw.device, launch_s=0.0))
        P = len(shape)
        z = shape_of(model, fused, workload, shape, dtype, tp, pp, dp)
        tb = TermsBuilder(P, z.num_segments, _ll.SCOPES)
        mult_phase = np.ones((P, 2))
        for k, (seg, tokens) in enumerate(((PRE, workload.prompt_len), (DEC, 1))):
            block = shape.gpu_batch_size * shape.num_gpu_batches
            nb = np.array([float(self.micro_batches(int(x), tokens, pp)) for x in block])
            sub = BatchShape(block / nb, nb, shape.cpu_attention, shape.compress_weights, shape.compress_cache,
                             shape.disk_cached) if (nb != shape.num_gpu_batches).any() else shape
            zp = shape_of(model, fused, workload, sub, dtype, tp, pp, dp) if sub is not shape else z
            part = TermsBuilder(P, z.num_segments, _ll.SCOPES)
            _ll._compute(part, zp)
            if self.unfused_context_attention and seg is PRE:
                part.put(PRE, "layer", C.ATTENTION, R.GPU, C0, zp.nb * (
                    unfused_attention_time_s(model, fused.device, zp.b, zp.s, dtype, tp)
                    - _ll.phase_plans(zp)[0].prefill_attention_time_s(fused.device, zp.b, zp.s, dtype)))
            part.put(seg, "layer", C.KERNEL_LAUNCH, R.HOST, C0, zp.nb * self.fixed_s)
            self._collectives(part, zp, hw)
            _ll._head(part, zp)
            tb.coef[:, seg] = part.coef[:, seg]
            tb.lat[:, seg] = part.lat[:, seg]
            mult_phase[:, k] = pipeline_mult(zp.nb, pp)[:, k]
        _ll._last_layer(tb)
        mult = np.tile(np.array([z.rv.layers - 1, 1.0, 1.0]), (P, 1))
        ch = channel_matrix(hw.links.h2d_bytes_per_s, hw.links.d2h_bytes_per_s, hw.links.duplex_bytes_per_s)
        return finish(tb, z, workload, shape, mult, ch, self.name, _ll._buffers, phase_mult=mult_phase)

    def _collectives(self, tb: TermsBuilder, z, hw) -> None:
        """Megatron's two all-reduces per layer (one for a parallel block), the embedding's
        all-reduce and the LM head's gather of (max, index) per sequence, over NCCL; each
        GPU batch's hidden states to the next pipeline stage."""
        rv, h, e, tp = z.rv, z.model.hidden_size, z.e, z.tp
        count = 1 if z.model.parallel_block else 2
        gpn = max(1, hw.gpu_count)
        for seg, tokens in ((PRE, z.s), (DEC, 1)):
            if tp > 1:
                act = z.b * tokens * h * e
                tb.put(seg, "layer", C.COMMUNICATION, R.COLLECTIVE, C0,
                       z.nb * count * nccl_allreduce_time_s(act, tp, hw, gpn))
                tb.put(seg, "head", C.COMMUNICATION, R.COLLECTIVE, C0,
                       z.nb * (nccl_allreduce_time_s(act, tp, hw, gpn) + nccl_allreduce_time_s(z.b * 16.0, tp, hw, gpn)))
            if rv.pp > 1:
                tb.put(seg, "head", C.PIPELINE_SEND, R.P2P, C0,
                       z.nb * send_time_s(z.b * tokens * h * e, rv.p2p_bytes_per_s, rv.p2p_latency_s))


@register
class FasterTransformerEngine(StaticEngine):
    """FasterTransformer's GPT (multi_gpu_gpt/ParallelGpt*): unfused context attention
    (GptContextAttentionLayer's unfused path: the guide's runs predate fused attention for
    GPT), and its pipeline's micro-batches (utils ``getLocalBatchSize``): the batch split by
    the pipeline size when it divides, then halved while a micro-batch holds more than 1024
    tokens and its size is even - in the prefill (tokens = prompt) and in each decode step
    (tokens = 1)."""

    name = "fastertransformer"
    unfused_context_attention = True

    def micro_batches(self, b: int, tokens: int, pp: int) -> int:
        if pp == 1:
            return 1
        local = b // pp if b % pp == 0 else b
        while local * tokens > 1024 and local % 2 == 0:
            local //= 2
        return b // local

    title = "NVIDIA FasterTransformer (GPT, static batching, fused CUDA kernels)"
    source = "github:NVIDIA/FasterTransformer docs/gpt_guide.md @ df4a7534 (the runs); src/fastertransformer/models/multi_gpu_gpt"
    layer_fixed = EngineConstant(
        "layer_fixed_s", 94.1e-6, "s",
        "derived from FasterTransformer's own GPT-350M rows at batch 1 on the A100 SuperPod (docs/gpt_guide.md "
        "@ df4a7534: 25.43 ms for 128+8 tokens, 92.01 ms for 512+32): their difference less this engine's "
        "prediction of it without the constant (a100-superpod), per layer (24) and per extra output token (24); "
        "the smallest model, where streaming the weights is a fifth of a step")


@register
class DeepSpeedInferenceEngine(StaticEngine):
    name = "deepspeed-inference"
    title = "DeepSpeed-Inference (tensor-parallel inference kernels, static batching)"
    source = "arXiv 2207.00032; github:huggingface/transformers-bloom-inference bloom-inference-scripts (the runs)"
    layer_fixed = EngineConstant(
        "layer_fixed_s", 115.5e-6, "s",
        "derived from DeepSpeed-Inference's BLOOM-176B run at batch 1 on 8 x A100 80GB (transformers-bloom-inference "
        "README @ 62698bf4: 44.02 ms per generated token, 100 tokens): the measured time less this engine's "
        "prediction without the constant (a100-80g-8x-bloom), per layer (70) and per forward (100); HF generate()'s "
        "per-step host work is in it")


@register
class TensorRTLLMEngine(StaticEngine):
    name = "tensorrt-llm"
    title = "NVIDIA TensorRT-LLM (static batching session, fused kernels)"
    source = "github:NVIDIA/TensorRT-LLM docs/source/performance.md @ 77d24b5f (the runs)"
    layer_fixed = EngineConstant(
        "layer_fixed_s", 155.8e-6, "s",
        "derived from TensorRT-LLM v0.5's GPT-J 6B first-token latency at batch 1 over 128 tokens on an A100 "
        "(performance.md @ 77d24b5f: 12 ms): the measured time less this engine's prediction without the constant "
        "(a100-superpod), per layer (28); the session's per-request work is in it")
