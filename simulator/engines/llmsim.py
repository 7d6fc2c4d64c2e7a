"""``llmsim``: llmsim's own torch executor (validate/executor/), the engine the CPU suite and
the records of real runs validate.

Schedule (FlexGen's zig-zag block, arXiv 2303.06865 section 4.1, as the executor runs it)
-----------------------------------------------------------------------------------------
A block of ``gpu_batch_size x num_gpu_batches`` sequences runs layer by layer. For each
layer the weights are loaded once and reused by all GPU batches; each GPU batch's KV cache
and activations move in and out around its own compute. The executor loads the *next*
unit's weights while the current one computes - over the whole layer, all GPU batches - so
a pass costs ``sum_i max(compute_i, load_{i+1})``: scopes ``layer`` (L - 1 steady layers,
next unit a layer), ``last`` (the last layer: no activation hand-over, hides the head's
weight load) and ``head`` (embeddings, final norm, LM head; hides layer 0's load).

Channels (with overlap the slowest sets each unit's time)::

    max(h2d, d2h, (bytes_h2d + bytes_d2h) / duplex_bw, disk_read + disk_write, gpu + cpu + collective)

* CPU attention sits between the GPU's QKV projection and its output projection within a
  GPU batch, on the same host thread, so GPU and CPU compute add.
* A disk->host->GPU chain is charged once on each resource it crosses (disk read *and*
  h2d); consecutive layers pipeline through it, so it costs the slower stage.
* On a CPU-only machine the "gpu" tier is host memory and its link a memcpy
  (``terms.link_channels``).
Transfers between GPU and CPU use the pinned rates (the executor pins its CPU tier and
bounces disk reads through pinned buffers); disk reads use the O_DIRECT rate or, with
``disk_io="cached"``, the page-cache rate.

Executed operations: GEMMs from the profile's tables, fused SDPA attention, the executor's
kernel counts (``ELEMENTWISE_KERNELS`` ... below, counted by validate.executor.opcount and
checked by tests/test_executor_ops.py), 4-bit dequantization of each layer once per block
pass and of the cache attention reads. GEMMs over weights the executor just copied into its
staging buffer run at the profile's staged rate (``ComputeDevice.matmul_time_s``).
"""

from __future__ import annotations

import numpy as np

from simulator import moe
from simulator.engines.base import Engine, register
from simulator.engines.common import finish, phase_plans, shape_of, tp_allreduce_s
from simulator.errors import PolicyError
from simulator.memory import CPU, DECODE, GPU, PREFILL
from simulator.models import DTYPE_BYTES
from simulator.ops import (CPU_ATTENTION_DTYPE, decode_attention_time_s, experts_matmul_time_s, experts_touched,
                           kv_share, layer_elementwise_time_s, layer_matmul_time_s, prefill_attention_time_s,
                           rank_bytes)
from simulator.parallel import allreduce_time_s, send_time_s
from simulator.terms import (C0, CC, CD, CG, HC, HD, ROW, ROWS, WC, WD, Component, Resource, TermsBuilder,
                             channel_matrix)

C, R = Component, Resource
PRE, DEC = TermsBuilder.PRE, TermsBuilder.DEC
SCOPES = ("layer", "last", "head")

# ------------------------------------------------------------------ executor contract
# Kernels (GPU) or operator calls (CPU) that the executor launches for work other than GEMMs
# and attention, as counted by validate.executor.opcount on the CPU: per layer and GPU batch
# for norms, activations, residual adds, rotary embedding and KV-cache writes; per GPU batch
# for the head. Llama's RMSNorm decomposes into more operators in half precision (casts).
ELEMENTWISE_KERNELS = {("opt", "half"): 7, ("opt", "fp32"): 7, ("llama", "half"): 28, ("llama", "fp32"): 24}
HEAD_KERNELS = {("opt", "half"): 4, ("opt", "fp32"): 4, ("llama", "half"): 10, ("llama", "fp32"): 8}
# Mixture of experts (validate/executor/moe.py), per layer and GPU batch: the routing (softmax, top-k,
# renormalisation, grouping the pairs by expert; casts in half precision), one gather of the routed
# pairs, the weighting, the output buffer and one scatter-add, less the dense MLP's silu and multiply
# it replaces; per touched expert: silu and multiply.
MOE_ROUTER_KERNELS = {"half": 12, "fp32": 10}
MOE_KERNELS_PER_EXPERT = 2
DEQUANT_KERNELS_PER_TIER = 4  # per layer: one call expands each source tier's block of matrices
DEQUANT_CACHE_KERNELS = 4  # per layer and GPU batch: K and V in one call, 2 operators each
QUANT_KERNELS_PER_TENSOR = {"half": 6, "fp32": 7}  # min, max, scale, round, clamp, pack (+ a cast in fp32)
CPU_ATTENTION_OPS = 2  # fused scaled_dot_product_attention on the CPU, and the output copy
SCORE_BYTES = 4  # CPU attention works in fp32


def kernels(table: dict, model, dtype: str) -> int:
    half = "fp32" if dtype == "fp32" else "half"
    return table[half] if model is None else table[("opt" if model.is_opt else "llama", half)]


def elementwise_kernels(model, m, dtype: str, ep=1):
    """The executor's elementwise kernels per layer and GPU batch of m tokens (MoE: the
    routing, and ``MOE_KERNELS_PER_EXPERT`` per touched expert, ``simulator.moe``)."""
    k = kernels(ELEMENTWISE_KERNELS, model, dtype)
    if not model.is_moe:
        return k
    return k + kernels(MOE_ROUTER_KERNELS, None, dtype) + MOE_KERNELS_PER_EXPERT * experts_touched(model, m, ep)


@register
class LlmsimEngine(Engine):
    name = "llmsim"
    title = "llmsim's torch executor"
    source = "validate/executor/ (this repository); kernel counts from validate.executor.opcount"

    # Takes ``simulator.layouts`` partition layouts: 1D/2D weight-stationary, weight-gathered,
    # heads- or batch-sharded attention (arXiv 2211.05102 section 3), for GPU-resident runs.
    partition_layouts = True

    def check(self, model, hw, policy) -> None:
        """Partition layouts other than Megatron's are modelled for runs whose weights, cache
        and activations all stay on the GPU, uncompressed, with attention there too."""
        if policy.megatron_layout:
            return
        resident = all(getattr(policy, k).gpu_frac >= 1.0 - 1e-9 for k in ("weights", "cache", "activations"))
        if not resident or policy.cpu_attention or policy.compress_weights or policy.compress_cache:
            raise PolicyError(f"--prefill-layout {policy.prefill_layout} / --decode-layout {policy.decode_layout} / "
                              f"--attention-layout {policy.attention_layout}: partition layouts are modelled for "
                              "GPU-resident runs only (weights, cache and activations 100,0,0, no CPU attention, "
                              "no 4-bit compression)")

    def build_terms(self, model, hw, workload, shape, dtype, tp=1, pp=1, dp=1, partition=None):
        """The coefficient arrays for P batch shapes under one parallel layout (per GPU) and,
        optionally, partition layouts (``simulator.layouts``). Pure; vectorized over P and
        decode segments."""
        z = shape_of(model, hw, workload, shape, dtype, tp, pp, dp, partition)
        tb = TermsBuilder(len(shape), z.num_segments, SCOPES)
        _transfers(tb, z)
        _compute(tb, z)
        _parallel(tb, z)
        _compression(tb, z)
        _head(tb, z)
        _last_layer(tb)
        if model.is_moe:
            _experts(tb, z)
        mult = np.tile(np.array([z.rv.layers - 1, 1.0, 1.0]), (len(shape), 1))
        ch = channel_matrix(hw.links.h2d_bytes_per_s, hw.links.d2h_bytes_per_s, hw.links.duplex_bytes_per_s,
                            hw.device_is_host and not hw.host_copies_overlap)
        return finish(tb, z, workload, shape, mult, ch, self.name, _buffers, sync_bound=model.is_moe)

    def weight_options(self, model, fmt: str) -> list:
        return moe.weight_options(model, fmt) if model.is_moe else super().weight_options(model, fmt)


def _transfers(tb: TermsBuilder, z) -> None:
    """Weights once per layer per block pass; cache stored in prefill and loaded (unless
    attention runs on the CPU) and appended in decode; hidden states across the L - 1
    boundaries between a stage's layers; CPU attention's queries and outputs."""
    hw = z.hw
    h2d, d2h = hw.links.h2d_bytes_per_s, hw.links.d2h_bytes_per_s
    a_h2d, a_d2h = hw.links.h2d_latency_s, hw.links.d2h_latency_s
    b, nb, s, catt = z.b, z.nb, z.s, z.catt
    for seg in (PRE, DEC):
        for scope, nbytes in (("layer", _prefetched_layer_bytes(z)), ("head", z.head_bytes)):
            tb.put(seg, scope, C.WEIGHT_LOAD, R.H2D, WC, nbytes / h2d)
            tb.put(seg, scope, C.WEIGHT_LOAD, R.H2D, WD, nbytes / h2d)
            tb.put(seg, scope, C.WEIGHT_LOAD, R.DISK_READ, WD, nbytes / z.disk_r)
            tb.put_lat(seg, scope, "weight_load.cpu", a_h2d)
            tb.put_lat(seg, scope, "weight_load.disk", a_h2d)
    cache_pre = nb * b * s * z.kv_token
    for idx in (CC, CD):
        tb.put(PRE, "layer", C.CACHE_STORE, R.D2H, idx, cache_pre / d2h)
    tb.put(PRE, "layer", C.CACHE_STORE, R.DISK_WRITE, CD, cache_pre / z.disk_w)
    tb.put_lat(PRE, "layer", "cache_store.cpu", nb * a_d2h)
    tb.put_lat(PRE, "layer", "cache_store.disk", nb * a_d2h)
    for seg, tokens in ((PRE, s), (DEC, 1)):
        act = nb * b * tokens * z.model.hidden_size * z.e
        for idx in (HC, HD):
            tb.put(seg, "layer", C.ACTIVATION_LOAD, R.H2D, idx, act / h2d)
            tb.put(seg, "layer", C.ACTIVATION_STORE, R.D2H, idx, act / d2h)
        tb.put(seg, "layer", C.ACTIVATION_LOAD, R.DISK_READ, HD, act / z.disk_r)
        tb.put(seg, "layer", C.ACTIVATION_STORE, R.DISK_WRITE, HD, act / z.disk_w)
        for term, a in (("activation_load.cpu", a_h2d), ("activation_load.disk", a_h2d),
                        ("activation_store.cpu", a_d2h), ("activation_store.disk", a_d2h)):
            tb.put_lat(seg, "layer", term, nb * a)
    # decode: the cache of (context - 1) tokens is loaded unless attention runs on the CPU;
    # the disk share is read to the host either way; the new token's K/V is stored.
    ctx = z.ctx[None, :]
    old = (nb * b * z.kv_token)[:, None] * (ctx - 1)
    gpu_side = (1.0 - catt)[:, None]
    for idx in (CC, CD):
        tb.put(DEC, "layer", C.CACHE_LOAD, R.H2D, idx, gpu_side * old / h2d)
    tb.put(DEC, "layer", C.CACHE_LOAD, R.DISK_READ, CD, old / z.disk_r[:, None])
    tb.put_lat(DEC, "layer", "cache_load.cpu", gpu_side * nb[:, None] * a_h2d)
    tb.put_lat(DEC, "layer", "cache_load.disk", gpu_side * nb[:, None] * a_h2d)
    new = nb * b * z.kv_token
    for idx in (CC, CD):
        tb.put(DEC, "layer", C.CACHE_STORE, R.D2H, idx, new / d2h)
    tb.put(DEC, "layer", C.CACHE_STORE, R.DISK_WRITE, CD, new / z.disk_w)
    tb.put_lat(DEC, "layer", "cache_store.cpu", nb * a_d2h)
    tb.put_lat(DEC, "layer", "cache_store.disk", nb * a_d2h)
    q_bytes = catt * nb * b * z.model.q_dim / z.tp * z.e
    for idx in (CC, CD):
        tb.put(DEC, "layer", C.ATTENTION_IO, R.D2H, idx, q_bytes / d2h)
        tb.put(DEC, "layer", C.ATTENTION_IO, R.H2D, idx, q_bytes / h2d)
    tb.put_lat(DEC, "layer", "attention_io.d2h", catt * nb * a_d2h)
    tb.put_lat(DEC, "layer", "attention_io.h2d", catt * nb * a_h2d)


def _compute(tb: TermsBuilder, z) -> None:
    """GEMMs (the CPU and disk shares - every share when compressed - read from the staging
    buffer the executor just copied them into; they differ only where the profile measured
    staged GEMMs), prefill attention, elementwise work, decode attention on the GPU (whole
    cache, or its GPU share when the CPU attends to the rest) and on the CPU."""
    model, dev, cpu, tp, dtype = z.model, z.hw.device, z.hw.cpu, z.tp, z.dtype
    b, nb, s, catt, cw = z.b, z.nb, z.s, z.catt, z.cw
    pre, dec = phase_plans(z)  # what one chip computes per layer in each phase (simulator.layouts)
    for seg, plan, tokens in ((PRE, pre, s), (DEC, dec, 1)):
        t_res = nb * plan.matmul_time_s(dev, b, tokens, dtype, ep=z.ep)
        t_stg = nb * plan.matmul_time_s(dev, b, tokens, dtype, staged=True, ep=z.ep) \
            if dev.staged_matmul_curves else t_res
        base, gain = t_res + cw * (t_stg - t_res), (1.0 - cw) * (t_stg - t_res)
        tb.put(seg, "layer", C.MATMUL, R.GPU, C0, base)
        tb.put(seg, "layer", C.MATMUL, R.GPU, WC, gain)
        tb.put(seg, "layer", C.MATMUL, R.GPU, WD, gain)
    tb.put(PRE, "layer", C.ATTENTION, R.GPU, C0, nb * pre.prefill_attention_time_s(dev, b, s, dtype))
    for seg, plan, tokens in ((PRE, pre, s), (DEC, dec, 1)):
        tb.put(seg, "layer", C.ELEMENTWISE, R.GPU, C0,
               nb * plan.elementwise_time_s(dev, b, tokens, dtype,
                                            elementwise_kernels(model, b * tokens, dtype, z.ep)))
    bS, nbS, ctx = b[:, None], nb[:, None], z.ctx[None, :]
    gatt = nbS * dec.decode_attention_time_s(dev, bS, ctx, dtype)
    tb.put(DEC, "layer", C.ATTENTION, R.GPU, C0, (1.0 - catt)[:, None] * gatt)
    tb.put(DEC, "layer", C.ATTENTION, R.GPU, CG, catt[:, None] * gatt)
    # The node's CPU serves all of its GPUs' CPU shares at once.
    catt_t = z.share * nbS * decode_attention_time_s(model, cpu, bS, ctx, dtype, ops=CPU_ATTENTION_OPS,
                                                     compute_dtype=CPU_ATTENTION_DTYPE, tp=tp)
    for idx in (CC, CD):
        tb.put(DEC, "layer", C.ATTENTION, R.CPU, idx, catt[:, None] * catt_t)


def _parallel(tb: TermsBuilder, z) -> None:
    """Tensor parallelism: two all-reduces per layer and GPU batch (one for a parallel
    attention + MLP block), or the collectives of the run's partition layouts; a vocab-parallel
    embedding (one all-reduce) and LM head (an all-gather of each rank's (max, index), 16
    bytes per sequence). Pipeline parallelism: each GPU batch's hidden states go to the next
    stage once per stage pass, on their own link."""
    rv, h, e = z.rv, z.model.hidden_size, z.e
    pre, dec = phase_plans(z)
    for seg, tokens in ((PRE, z.s), (DEC, 1)):
        if z.tp > 1 and rv.partition is None:
            tb.put(seg, "layer", C.COMMUNICATION, R.COLLECTIVE, C0,
                   tp_allreduce_s(z, tokens, 1 if z.model.parallel_block else 2))
        elif z.tp > 1:  # the partition's collectives per layer (simulator.layouts)
            plan, of = (pre, dec) if seg == PRE else (dec, None)
            tb.put(seg, "layer", C.COMMUNICATION, R.COLLECTIVE, C0,
                   plan.comm_time_s(z.b, tokens, e, z.layer16, prefill_of=of, nb=z.nb))
        if z.tp > 1:
            arh = z.nb * (allreduce_time_s(z.b * tokens * h * e, z.tp, rv.collective_bytes_per_s,
                                           rv.collective_latency_s)
                          + allreduce_time_s(z.b * 16.0, z.tp, rv.collective_bytes_per_s, rv.collective_latency_s))
            tb.put(seg, "head", C.COMMUNICATION, R.COLLECTIVE, C0, arh)
        if rv.pp > 1:
            sd = z.nb * send_time_s(z.b * tokens * h * e, rv.p2p_bytes_per_s, rv.p2p_latency_s)
            tb.put(seg, "head", C.PIPELINE_SEND, R.P2P, C0, sd)


def _compression(tb: TermsBuilder, z) -> None:
    """Dequantize each layer's weights once per block pass (bytes: read packed, write
    dequantized; the kernels of each source tier's block are step terms), quantize the new
    cache, dequantize the cache attention reads."""
    model, dev, dtype, tp = z.model, z.hw.device, z.dtype, z.tp
    b, nb, s, cw, cc = z.b, z.nb, z.s, z.cw, z.cc
    qw = rank_bytes(model.layer_tensors(), "int4", tp, kv_share(model, tp))
    deq_w = cw * dev.stream_time_s(qw + z.layer16, 0)
    deq_h = cw * dev.stream_time_s(model.lm_head_tensor().nbytes("int4") / tp + z.head16, 0)
    for seg in (PRE, DEC):
        for scope in ("layer", "head"):
            for term in ("dequant.gpu", "dequant.cpu", "dequant.disk"):
                tb.put_lat(seg, scope, term, cw * DEQUANT_KERNELS_PER_TIER * dev.launch_s)
    kvc = model.kv_bytes_per_token(compressed=True) * kv_share(model, tp)
    qk = 2 * kernels(QUANT_KERNELS_PER_TENSOR, None, dtype)
    tb.put(PRE, "layer", C.COMPRESSION, R.GPU, C0, deq_w + cc * nb * dev.stream_time_s(b * s * (z.kv_token16 + kvc), qk))
    bS, ctx = b[:, None], z.ctx[None, :]
    kv16 = z.kv_token16 + kvc  # per shape (P,) under partition layouts, else one figure
    kvS = kv16[:, None] if np.ndim(kv16) else kv16
    tb.put(DEC, "layer", C.COMPRESSION, R.GPU, C0, deq_w[:, None] + (cc * nb)[:, None] * (
        dev.stream_time_s(bS * (ctx - 1) * kvS, DEQUANT_CACHE_KERNELS)
        + dev.stream_time_s(bS * kvS, qk)))
    tb.put(PRE, "head", C.COMPRESSION, R.GPU, C0, deq_h)
    tb.put(DEC, "head", C.COMPRESSION, R.GPU, C0, deq_h)


def _head(tb: TermsBuilder, z) -> None:
    """Embeddings (prefill: b s tokens), final norm, LM head on the last token."""
    model, dev, dtype, tp, e = z.model, z.hw.device, z.dtype, z.tp, z.e
    b, nb, s, h, V = z.b, z.nb, z.s, model.hidden_size, model.vocab_size
    head_gemm = nb * dev.matmul_time_s(b, h, -(-V // tp), dtype, e)
    tb.put(PRE, "head", C.MATMUL, R.GPU, C0, head_gemm)
    tb.put(DEC, "head", C.MATMUL, R.GPU, C0, head_gemm)
    pos_factor = 5 if model.is_opt else 2  # OPT adds learned positions: gather + add
    hk = kernels(HEAD_KERNELS, model, dtype)
    tb.put(PRE, "head", C.ELEMENTWISE, R.GPU, C0, nb * dev.stream_time_s(b * s * h * e * pos_factor
                                                                         + b * (2 * h + V / tp) * e, hk))
    tb.put(DEC, "head", C.ELEMENTWISE, R.GPU, C0, nb * dev.stream_time_s(b * h * e * pos_factor
                                                                         + b * (2 * h + V / tp) * e, hk))


def _prefetched_layer_bytes(z):
    """A layer's bytes loaded ahead of its compute: all of it, but for a mixture of experts
    whose offloaded experts are fetched after the routing or computed on the CPU
    (``expert_offload`` fetch, cpu) only the tensors other than the routed experts
    (``_experts``)."""
    if not z.model.is_moe:
        return z.layer_bytes
    routed = np.where(z.cw > 0, moe.routed_bytes(z.model, "int4", z.tp, z.ep),
                      moe.routed_bytes(z.model, z.dtype, z.tp, z.ep))
    return z.layer_bytes - np.maximum(z.fetch_experts, z.cpu_experts) * routed


def _experts(tb: TermsBuilder, z) -> None:
    """Mixture of experts (``simulator.moe``), in every layer's cell (``layer`` and ``last``):

    - prefetched experts (``expert_offload`` prefetch): nothing more - they came with the
      layer's weights (``_transfers``);
    - fetched experts (fetch): after each GPU batch's routing, the offloaded shares of the
      experts it touches that no earlier batch of the block fetched for this layer - per
      block ``E_touched(nb b t) x expert bytes`` of each tier's fraction - copied in
      serially (resource ``sync``: nothing else of the layer runs meanwhile), disk reads
      first; one copy per expert (``expert_load.*`` step terms);
    - CPU experts (cpu): the CPU and disk shares computed on the CPU instead (their GPU GEMM
      time moves to the CPU's rates), the routed tokens' hidden states (``dispatch_bytes``
      of the share) out and back; disk experts read to the host after the routing;
    - expert parallelism (ep > 1): a dispatch and a combine all-to-all per GPU batch over
      the link the layout spans (``moe.ep_link``)."""
    model, hw, dtype, tp, ep, cpu, fetch = z.model, z.hw, z.dtype, z.tp, z.ep, z.cpu_experts, z.fetch_experts
    h2d, d2h, a_h2d = hw.links.h2d_bytes_per_s, hw.links.d2h_bytes_per_s, hw.links.h2d_latency_s
    one = np.where(z.cw > 0, moe.expert_bytes(model, "int4", tp), moe.expert_bytes(model, dtype, tp))
    scopes = ("layer", "last")
    gpus = z.rv.tp * z.rv.pp * z.rv.dp
    link = moe.ep_link(hw, gpus) if np.any(ep > 1) else None
    for seg, t in ((PRE, z.s), (DEC, 1)):
        copies = moe.experts_touched(model, z.nb * z.b * t, ep)
        fetched = fetch * copies * one
        tb.put(seg, scopes, C.WEIGHT_LOAD, R.SYNC, WC, fetched / h2d)
        tb.put(seg, scopes, C.WEIGHT_LOAD, R.SYNC, WD, (fetch + cpu) * copies * one / z.disk_r + fetched / h2d)
        tb.put_lat(seg, scopes, "expert_load.cpu", fetch * copies * a_h2d)
        tb.put_lat(seg, scopes, "expert_load.disk", fetch * copies * a_h2d)
        m = z.b * t
        if np.any(cpu > 0):
            on_gpu = z.nb * experts_matmul_time_s(model, hw.device, m, dtype, tp, ep=ep)
            on_cpu = z.nb * experts_matmul_time_s(model, hw.cpu, m, dtype, tp, ep=ep)
            io = z.nb * moe.dispatch_bytes(model, m, z.e)
            for idx in (WC, WD):
                tb.put(seg, scopes, C.MATMUL, R.GPU, idx, -cpu * on_gpu)
                tb.put(seg, scopes, C.MATMUL, R.CPU, idx, cpu * on_cpu)
                tb.put(seg, scopes, C.ACTIVATION_STORE, R.D2H, idx, cpu * io / d2h)
                tb.put(seg, scopes, C.ACTIVATION_LOAD, R.H2D, idx, cpu * io / h2d)
        if link is not None:
            a2a = moe.all_to_all_time_s(moe.dispatch_bytes(model, m, z.e), ep, *link)
            tb.put(seg, scopes, C.COMMUNICATION, R.COLLECTIVE, C0, 2.0 * z.nb * a2a)


WEIGHT_ROWS = [ROW[(C.WEIGHT_LOAD, R.H2D)], ROW[(C.WEIGHT_LOAD, R.DISK_READ)]]
WEIGHT_TERMS = ["weight_load.cpu", "weight_load.disk"]
ACTIVATION_ROWS = [ROW[(c, r)] for c, r in ROWS if c in (C.ACTIVATION_LOAD, C.ACTIVATION_STORE)]
ACTIVATION_TERMS = ["activation_load.cpu", "activation_load.disk", "activation_store.cpu", "activation_store.disk"]


def _last_layer(tb: TermsBuilder) -> None:
    """The last layer: a layer's work minus the activation hand-over, hiding the head's
    weight load; the head hides the next layer's (layer 0's) weight load."""
    from simulator.terms import LATENCY_INDEX
    wl_t = [LATENCY_INDEX[t] for t in WEIGHT_TERMS]
    act_t = [LATENCY_INDEX[t] for t in ACTIVATION_TERMS]
    layer, last, head = (tb.scope[n] for n in SCOPES)
    tb.copy_scope("layer", "last")
    tb.coef[:, :, last][:, :, ACTIVATION_ROWS] = 0.0
    tb.lat[:, :, last][:, :, act_t] = 0.0
    head_load, layer_load = tb.coef[:, :, head][:, :, WEIGHT_ROWS].copy(), tb.coef[:, :, layer][:, :, WEIGHT_ROWS].copy()
    head_lat, layer_lat = tb.lat[:, :, head][:, :, wl_t].copy(), tb.lat[:, :, layer][:, :, wl_t].copy()
    tb.coef[:, :, last][:, :, WEIGHT_ROWS] = head_load
    tb.lat[:, :, last][:, :, wl_t] = head_lat
    tb.coef[:, :, head][:, :, WEIGHT_ROWS] = layer_load
    tb.lat[:, :, head][:, :, wl_t] = layer_lat


def _buffers(out: np.ndarray, z) -> None:
    """The executor's working buffers (validate/executor/engine.py):
    GPU   two layers of streamed weights (current + prefetched): 2 (w_c + w_d) W_layer, and
          the streamed share of the LM head; with compression one dequantized layer (or LM
          head, whichever is larger); the offloaded cache rows of the batch in flight and
          the next one (2 (c_c + c_d) x batch x context x kv) unless attention runs on the
          CPU - then only two prompt-long slabs that stage the prefill's new K/V on their
          way out; a dequantized copy of one batch's cache when compressed; the batch's
          activations in flight (hidden in and out, q/k/v, attention output, MLP
          intermediate), the next batch's offloaded activations, and the logits. Attention
          is fused (scaled_dot_product_attention): scores are never materialised.
    CPU   pinned bounce buffers for disk reads: 2 w_d W_layer, the disk share of the LM
          head, two slots of one batch's disk cache rows, and 4 h_d of a batch's activations
          (two to load, two to store); the CPU attention query/output buffers (fp32)."""
    model, e, tp = z.model, DTYPE_BYTES[z.dtype], z.tp
    b, catt, cw, cc = z.b, z.cpu_attention, z.compress_weights, z.compress_cache
    q_dim, kv_dim = model.q_dim / tp, model.kv_dim * kv_share(model, tp)
    part = getattr(z.rv, "partition", None)
    for phase, tokens in ((PREFILL, z.prompt_len), (DECODE, 1)):
        m = out[:, phase]
        batch_act = z.batch_act(tokens)
        if part is not None:  # a weight-gathered layout holds the other N - 1 shards of the matrix it gathers
            m[:, GPU, C0] += part.phase("prefill" if phase == PREFILL else "decode").gathered_bytes(e)
        for i in (WC, WD):
            m[:, GPU, i] += 2 * z.layer + z.lm_head
        m[:, GPU, C0] += cw * max(z.layer16, z.lm_head16)
        staging = (1 - catt) * 2 * z.batch_cache
        if phase == PREFILL:
            staging = staging + catt * 2 * b * z.prompt_len * z.kv_token
        for i in (CC, CD):
            m[:, GPU, i] += staging
        m[:, GPU, C0] += cc * b * z.ctx_max * z.kv_token16 + b * tokens * 2 * kv_dim * e
        mlp_width = model.ffn_dim * (1 if model.is_opt else 3) / tp
        if model.is_moe:
            mlp_width = mlp_width * model.experts_per_token
        in_flight = b * tokens * (3 * model.hidden_size + q_dim * 2 + 2 * kv_dim + mlp_width) * e
        if part is not None:
            in_flight = part.phase("prefill" if phase == PREFILL else "decode").in_flight_bytes(b, tokens, e)
        m[:, GPU, C0] += in_flight + b * model.vocab_size / tp * e
        if model.is_moe:
            _expert_buffers(m, z, tokens)
        for i in (HC, HD):
            m[:, GPU, i] += 2 * batch_act
        m[:, CPU, WD] += 2 * z.layer + z.lm_head
        m[:, CPU, CD] += 2 * z.batch_cache
        m[:, CPU, HD] += 4 * batch_act
        if phase == DECODE:
            ws = catt * b * 2 * q_dim * SCORE_BYTES
            m[:, CPU, CC] += ws
            m[:, CPU, CD] += ws



def _expert_buffers(m: np.ndarray, z, tokens: int) -> None:
    """Mixture of experts: with expert parallelism, the dispatched and combined hidden states
    of a GPU batch (2 x ``dispatch_bytes``) on the GPU; with CPU experts, the routed tokens'
    hidden states in and out (fp32 staging not needed: the CPU computes in the policy dtype)
    on the CPU, and no device room for the offloaded experts (they are not copied in)."""
    model, e = z.model, DTYPE_BYTES[z.dtype]
    moved = moe.dispatch_bytes(model, z.b * tokens, e)
    m[:, GPU, C0] += np.where(z.ep > 1, 2.0 * moved, 0.0)
    routed = moe.routed_bytes(model, z.dtype, z.tp, z.ep)
    for i in (WC, WD):
        m[:, GPU, i] -= z.cpu_experts * 2 * routed
        m[:, CPU, i] += z.cpu_experts * 2 * moved
