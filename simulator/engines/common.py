"""What every engine's schedule starts from: the sizes and rates of one batch shape on one
GPU rank (``Shape``), and the last step that turns a filled ``TermsBuilder`` into ``Terms``.
Nothing here is particular to an engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.hardware import HardwareProfile
from simulator.models import DTYPE_BYTES, ModelSpec
from simulator.moe import ep_saving
from simulator.ops import kv_share, rank_bytes
from simulator.parallel import RankView, allreduce_time_s, rank_view
from simulator.terms import BatchShape, Terms, TermsBuilder, decode_segments


@dataclass(frozen=True)
class Shape:
    """One batch shape's quantities on one GPU rank (arrays of length P unless noted).
    Bytes, seconds, bytes/s."""

    model: ModelSpec
    hw: HardwareProfile
    rv: RankView
    dtype: str
    e: int  # bytes per element of dtype
    s: int  # prompt tokens
    n: int  # generated tokens
    steps: np.ndarray  # decode segments: steps per segment (S,)
    ctx: np.ndarray  # ... and their mean context (S,)
    b: np.ndarray
    nb: np.ndarray
    catt: np.ndarray  # cpu attention (0/1)
    cw: np.ndarray  # compressed weights (0/1)
    cc: np.ndarray  # compressed cache (0/1)
    disk_r: np.ndarray  # disk read rate per GPU of the node (direct or page-cached)
    disk_w: np.ndarray
    layer_bytes: np.ndarray  # one layer's weights on this rank, stored format
    layer16: float  # ... uncompressed
    head_bytes: np.ndarray  # LM head (stored) + the head's norms
    head16: float  # LM head, uncompressed
    kv_token: np.ndarray  # K+V bytes per token and layer on this rank, stored format
    kv_token16: float
    ep: np.ndarray = 1.0  # expert-parallel degree (mixture of experts: dp when the replicas split the experts)
    fetch_experts: np.ndarray = 0.0  # offloaded experts copied in after the routing (0/1)
    cpu_experts: np.ndarray = 0.0  # offloaded experts computed on the CPU (0/1)

    @property
    def tp(self) -> int:
        return self.rv.tp

    @property
    def share(self) -> int:
        """GPUs of this run on one node: they share its disk and CPU."""
        return self.rv.ranks_per_node

    @property
    def num_segments(self) -> int:
        return 1 + len(self.steps)


def phase_plans(z: Shape):
    """(prefill, decode) ``simulator.layouts.PhasePlan`` of a shape's rank: its partition's,
    or Megatron's 1D split at tp when the run has none."""
    from simulator.layouts import megatron_plan
    from simulator.vocabulary import Phase
    part = z.rv.partition
    if part is None:
        plan = megatron_plan(z.model, z.tp)
        return plan, plan
    return part.phase(Phase.PREFILL), part.phase(Phase.DECODE)


def shape_of(model: ModelSpec, hw: HardwareProfile, workload, shape: BatchShape, dtype: str, tp=1, pp=1, dp=1,
             partition=None) -> Shape:
    rv = rank_view(model, hw, tp, pp, dp, partition)
    share = rv.ranks_per_node
    cached = shape.disk_cached
    if cached.any() and hw.disk.read_cached_bytes_per_s is None:
        hw.disk.read_bytes_per_s("cached")  # raises ProfileError naming the key
    disk_r = np.where(cached > 0, hw.disk.read_cached_bytes_per_s or 1.0, hw.disk.read_direct_bytes_per_s) / share
    disk_w = np.where(cached > 0, hw.disk.write_bytes_per_s("cached"), hw.disk.write_direct_bytes_per_s) / share
    cw, cc = shape.compress_weights, shape.compress_cache
    layer_t = model.layer_tensors()
    kvs = kv_share(model, tp)
    kv_cache = kvs if rv.partition is None else rv.partition.phase("decode").cache_share(shape.gpu_batch_size)
    lm = model.lm_head_tensor()
    head_norms = sum(t.nbytes(dtype) for t in model.head_tensors() if not t.is_matrix)
    steps, ctx = decode_segments(workload.prompt_len, workload.gen_len)
    ep = np.where(shape.expert_parallel > 0, float(dp), 1.0)
    layer_bytes = np.where(cw > 0, rank_bytes(layer_t, "int4", tp, kvs), rank_bytes(layer_t, dtype, tp, kvs))
    layer16 = rank_bytes(layer_t, dtype, tp, kvs)
    if model.is_moe:  # expert parallelism: a GPU holds ceil(E / ep) of the routed experts
        layer_bytes = layer_bytes - np.where(cw > 0, ep_saving(model, "int4", tp, ep), ep_saving(model, dtype, tp, ep))
    return Shape(
        model=model, hw=hw, rv=rv, dtype=dtype, e=DTYPE_BYTES[dtype], s=workload.prompt_len, n=workload.gen_len,
        steps=steps, ctx=ctx, b=shape.gpu_batch_size, nb=shape.num_gpu_batches, catt=shape.cpu_attention, cw=cw,
        cc=cc, disk_r=disk_r, disk_w=disk_w,
        layer_bytes=layer_bytes, layer16=layer16,
        head_bytes=np.where(cw > 0, lm.nbytes("int4"), lm.nbytes(dtype)) / tp + head_norms,
        head16=float(lm.nbytes(dtype)) / tp,
        kv_token=np.where(cc > 0, model.kv_bytes_per_token(compressed=True), model.kv_bytes_per_token(dtype)) * kv_cache,
        kv_token16=model.kv_bytes_per_token(dtype) * kv_cache, ep=ep, fetch_experts=shape.fetch_experts,
        cpu_experts=shape.cpu_experts)


def pipeline_mult(nb: np.ndarray, pp: int) -> np.ndarray:
    """(P, phase): a block pass through pp stages with nb micro-batches (the GPU batches).
    The prefill fills and drains the pipeline once: (nb + pp - 1) / nb stage passes; each
    decode step keeps it full when nb >= pp, else stages wait: max(nb, pp) / nb (GPipe,
    Huang et al. 2019, section 2.2)."""
    return np.stack([(nb + pp - 1) / nb, np.maximum(nb, pp) / nb], axis=1)


def tp_allreduce_s(z: Shape, tokens: int, count: int = 2):
    """``count`` all-reduces of one GPU batch's hidden states of ``tokens`` tokens, for all
    nb GPU batches (Megatron-LM section 3: after the attention output and the MLP down
    projection). Unit: s."""
    rv = z.rv
    return z.nb * count * allreduce_time_s(z.b * tokens * z.model.hidden_size * z.e, z.tp,
                                           rv.collective_bytes_per_s, rv.collective_latency_s)


def finish(tb: TermsBuilder, z: Shape, workload, shape: BatchShape, scope_mult: np.ndarray, channels: np.ndarray,
           engine: str, add_buffers, serial_channels: np.ndarray | None = None,
           phase_mult: np.ndarray | None = None, sync_bound: bool = False) -> Terms:
    """The Terms of a filled builder: memory (resident shares + the engine's buffers),
    capacities, the pipeline stretch (``pipeline_mult`` of the shape's GPU batches, unless
    the engine gives its own per phase)."""
    from simulator.memory import memory_terms
    hw = z.hw
    return Terms(coef=tb.coef, latency=tb.lat, seg_steps=np.concatenate([[1.0], z.steps]),
                 seg_context=np.concatenate([[float(z.s)], z.ctx]),
                 mem=memory_terms(z.model, workload, shape, z.dtype, z.rv, add_buffers), scopes=tb.scopes,
                 scope_mult=scope_mult, channel_matrix=channels,
                 capacity_bytes=(hw.device.usable_bytes, hw.cpu.usable_bytes, hw.disk.capacity_bytes),
                 shared_host_pool=hw.device_is_host,
                 phase_mult=pipeline_mult(z.nb, z.rv.pp) if phase_mult is None else phase_mult,
                 layout=(z.rv.tp, z.rv.pp, z.rv.dp), engine=engine, serial_matrix=serial_channels,
                 sync_bound=sync_bound)


def pageable_h2d_s(hw: HardwareProfile, nbytes):
    """A host-to-GPU copy from pageable (unpinned) host memory, as ``tensor.to(device)`` of
    an ordinary CPU tensor does: the profile's measured ``links.h2d_pageable_GBps`` when it
    has one; otherwise the host's memcpy into the driver's pinned staging buffer followed by
    the pinned DMA, one after the other (``nbytes / memcpy + nbytes / h2d_pinned``; on
    h100-pcie5 that bound is 10.5 GB/s against a measured 7.3). On a CPU-only machine, the
    tiers' memcpy. Unit: s."""
    nbytes = np.asarray(nbytes, dtype=float)
    links = hw.links
    if hw.device_is_host:
        return nbytes / links.h2d_bytes_per_s
    if links.h2d_pageable_bytes_per_s:
        return nbytes / links.h2d_pageable_bytes_per_s
    return nbytes / hw.memcpy_bytes_per_s + nbytes / links.h2d_bytes_per_s


def pageable_d2h_s(hw: HardwareProfile, nbytes):
    """A GPU-to-host copy into pageable memory (``links.d2h_pageable_GBps``, or the pinned
    DMA followed by the host's memcpy out of the staging buffer). Unit: s."""
    nbytes = np.asarray(nbytes, dtype=float)
    links = hw.links
    if hw.device_is_host:
        return nbytes / links.d2h_bytes_per_s
    if links.d2h_pageable_bytes_per_s:
        return nbytes / links.d2h_pageable_bytes_per_s
    return nbytes / hw.memcpy_bytes_per_s + nbytes / links.d2h_bytes_per_s
