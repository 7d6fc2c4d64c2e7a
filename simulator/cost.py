"""The analytic offloading cost model: ``estimate(model, hardware, workload, policy)``.

Schedule (FlexGen, arXiv 2303.06865, section 4.1, the "zig-zag block schedule")
-------------------------------------------------------------------------------
A block of ``gpu_batch_size x num_gpu_batches`` sequences runs layer by layer. For each
layer the weights are loaded once and reused by all ``num_gpu_batches`` GPU batches; each
GPU batch's KV cache and activations move in and out around its own compute. The prefill
runs the whole prompt through every layer and produces the first token; each of the
``gen_len - 1`` decode steps then runs one token per sequence through every layer.

Streams and how they combine
----------------------------
Per layer (and once per phase step for the "head": embeddings, final norm and LM head) the
work lands on six resources: the host->GPU link (``h2d``), the GPU->host link (``d2h``), the
disk read and write queues, GPU compute and CPU compute. Each resource's busy time is
affine in the nine placement fractions (``Terms.coef``). Then:

- ``overlap=False``: everything is serial; the layer time is the sum of all six.
- ``overlap=True``: transfers run on their own streams while the current GPU batch
  computes, so the layer time is the slowest of the concurrent channels::

      max(h2d, d2h, (bytes_h2d + bytes_d2h) / duplex_bw, disk_read + disk_write, gpu + cpu)

  * The two link directions are independent up to the profile's measured both-directions
    rate (``links.duplex_pinned_GBps``), hence the third term.
  * One disk serves both reads and writes, so they add.
  * CPU attention sits between the GPU's QKV projection and its output projection within a
    GPU batch, and the executor runs both on one thread, so GPU and CPU compute add.
  * A disk->host->GPU chain (weights or cache on disk) is charged once on each resource it
    crosses (disk read *and* h2d). With overlap, consecutive layers pipeline through the
    chain (disk reads layer j+2 while the link moves j+1 and the GPU computes j), so the
    chain costs the slower of its stages, not their sum; the one-layer pipeline fill is
    not charged (1 of ``num_layers`` layers).

On a CPU-only machine (``HardwareProfile.device_is_host``) the "gpu" tier is host memory
and its "link" is a memcpy by a host thread: when every core computes, h2d and d2h join
the compute chain (``channel_matrix``); when the profile was measured with fewer compute
threads than cores, the copies run on a free core and overlap as on a GPU.

Transfers between GPU and CPU use the pinned-memory rates: the executor keeps the CPU
tier in pinned memory and stages disk reads through a pinned bounce buffer. The pageable
rates in a profile are for reference only. Disk reads use the O_DIRECT rate or, with
``disk_io="cached"``, the page-cache rate.

Linearity
---------
For a fixed batch shape and flags, every term above is linear in the fractions except the
per-transfer latency of the link (``links.h2d_latency_us``), which is paid once per
transfer that moves anything: ``latency x [fraction > 0]``. ``Terms.latency`` holds these
step terms separately; the LP of the search drops them (a lower bound) and every plan is
re-evaluated with ``estimate()``.

Decode steps
------------
Step t (1..gen_len-1) attends to ``prompt_len + t`` keys. Steps are grouped into at most
``MAX_DECODE_SEGMENTS`` consecutive segments; each segment is evaluated at its mean
context, which is exact for every affine term and, with overlap, slightly optimistic only
inside a segment where two channels cross.

Units: bytes, seconds, FLOP, bytes/s throughout.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from simulator.errors import PolicyError, ProfileError
from simulator.hardware import ComputeDevice, HardwareProfile
from simulator.models import DTYPE_BYTES, ModelSpec
from simulator.policy import Policy, Workload
from simulator.vocabulary import Bound, Component, Phase, Resource, Tier

MAX_DECODE_SEGMENTS = 16

# Fraction vector layout: X = [1, w_g, w_c, w_d, c_g, c_c, c_d, h_g, h_c, h_d].
N_X = 10
C0, WG, WC, WD, CG, CC, CD, HG, HC, HD = range(N_X)
X_NAMES = ("const", "weights.gpu_frac", "weights.cpu_frac", "weights.disk_frac", "cache.gpu_frac",
           "cache.cpu_frac", "cache.disk_frac", "activations.gpu_frac", "activations.cpu_frac",
           "activations.disk_frac")

# Scopes of one pass over a stage's units (layers, then the head). The executor loads the
# *next* unit's weights while the current one computes, so a pass costs
# sum_i max(compute_i, load_{i+1}): L - 1 steady layers (next unit: a layer), the last layer
# (next unit: the head, whose weight load it hides), and the head (next unit: layer 0).
LAYER, LAST, HEAD = 0, 1, 2
N_SCOPES = 3

R, C = Resource, Component
ROWS: tuple[tuple[Component, Resource], ...] = (
    (C.WEIGHT_LOAD, R.H2D), (C.WEIGHT_LOAD, R.DISK_READ),
    (C.CACHE_LOAD, R.H2D), (C.CACHE_LOAD, R.DISK_READ),
    (C.CACHE_STORE, R.D2H), (C.CACHE_STORE, R.DISK_WRITE),
    (C.ACTIVATION_LOAD, R.H2D), (C.ACTIVATION_LOAD, R.DISK_READ),
    (C.ACTIVATION_STORE, R.D2H), (C.ACTIVATION_STORE, R.DISK_WRITE),
    (C.ATTENTION_IO, R.D2H), (C.ATTENTION_IO, R.H2D),
    (C.MATMUL, R.GPU), (C.ATTENTION, R.GPU), (C.ELEMENTWISE, R.GPU), (C.COMPRESSION, R.GPU),
    (C.ATTENTION, R.CPU), (C.COMMUNICATION, R.COLLECTIVE), (C.PIPELINE_SEND, R.P2P),
)
ROW = {pair: i for i, pair in enumerate(ROWS)}
ROW_NAMES = tuple((c.value, r.value) for c, r in ROWS)
RESOURCES = tuple(Resource)
# ROW_RESOURCE[r, k] = 1 when row r is spent on resource k.
ROW_RESOURCE = np.array([[1.0 if res == k else 0.0 for k in RESOURCES] for _, res in ROWS])

# Step terms, paid once when a share is non-zero: the link latency of each transfer, and the
# kernels that dequantize each source tier's weights. (component, resource, fractions whose
# sum > 0 triggers it). The LP leaves them out (module docstring, "Linearity").
LATENCY_TERMS: tuple[tuple[Component, Resource, tuple[int, ...]], ...] = (
    (C.WEIGHT_LOAD, R.H2D, (WC,)), (C.WEIGHT_LOAD, R.H2D, (WD,)),
    (C.CACHE_LOAD, R.H2D, (CC,)), (C.CACHE_LOAD, R.H2D, (CD,)),
    (C.CACHE_STORE, R.D2H, (CC,)), (C.CACHE_STORE, R.D2H, (CD,)),
    (C.ACTIVATION_LOAD, R.H2D, (HC,)), (C.ACTIVATION_LOAD, R.H2D, (HD,)),
    (C.ACTIVATION_STORE, R.D2H, (HC,)), (C.ACTIVATION_STORE, R.D2H, (HD,)),
    (C.ATTENTION_IO, R.D2H, (CC, CD)), (C.ATTENTION_IO, R.H2D, (CC, CD)),
    (C.COMPRESSION, R.GPU, (WG,)), (C.COMPRESSION, R.GPU, (WC,)), (C.COMPRESSION, R.GPU, (WD,)),
)
LATENCY_NAMES = tuple((c.value, r.value) for c, r, _ in LATENCY_TERMS)
LATENCY_MASK = np.zeros((len(LATENCY_TERMS), N_X))
for _i, (_, _, _idx) in enumerate(LATENCY_TERMS):
    LATENCY_MASK[_i, list(_idx)] = 1.0
LATENCY_RESOURCE = np.array([[1.0 if res == k else 0.0 for k in RESOURCES] for _, res, _ in LATENCY_TERMS])
FRACTION_EPS = 1e-9  # a share below this moves nothing

# The concurrent channels when overlap is on (module docstring): the layer time is their max.
# "compute" is the serial chain GPU compute + CPU attention + tensor-parallel all-reduces.
CHANNELS = ("h2d", "d2h", "link_duplex", "disk", "compute", "p2p")
# Per-transfer latency counts on its own direction, not in the both-directions byte budget.
CHANNEL_TAKES_LATENCY = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])


def channel_matrix(h2d_bytes_per_s: float, d2h_bytes_per_s: float, duplex_bytes_per_s: float,
                   host_device: bool = False) -> np.ndarray:
    """(channel, resource) weights: channel time = sum of weight x resource busy time.

    ``link_duplex`` converts each direction's time back to bytes and divides by the
    measured both-directions rate: (t_h2d x bw_h2d + t_d2h x bw_d2h) / bw_duplex.

    ``host_device`` (a CPU-only machine, where the "gpu" tier is host memory, and every core
    computes): moving data between the tiers is a memcpy by a thread that takes cores and
    memory bandwidth from the GEMMs, so h2d and d2h join the compute chain. On the 2-core
    machine with both cores computing, overlapped runs were slower than serial ones; with
    one compute thread the copy thread on the free core hid the copies
    (``HardwareProfile.host_copies_overlap``). Disk I/O stays a channel of its own (DMA,
    waited on by another thread).
    """
    ch = np.zeros((len(CHANNELS), len(RESOURCES)))
    k = {r: i for i, r in enumerate(RESOURCES)}
    ch[3, k[R.DISK_READ]] = ch[3, k[R.DISK_WRITE]] = 1.0
    ch[4, k[R.GPU]] = ch[4, k[R.CPU]] = ch[4, k[R.COLLECTIVE]] = 1.0
    ch[5, k[R.P2P]] = 1.0
    if host_device:
        ch[4, k[R.H2D]] = ch[4, k[R.D2H]] = 1.0
        return ch
    ch[0, k[R.H2D]] = 1.0
    ch[1, k[R.D2H]] = 1.0
    ch[2, k[R.H2D]] = h2d_bytes_per_s / duplex_bytes_per_s
    ch[2, k[R.D2H]] = d2h_bytes_per_s / duplex_bytes_per_s
    return ch

# ------------------------------------------------------------------ executor contract
# Kernels (GPU) or operator calls (CPU) that the executor (validate/executor/) launches for
# work other than GEMMs and attention, as counted by validate.executor.opcount on the CPU
# (tests/test_executor_ops.py checks them): per layer and GPU batch for norms, activations,
# residual adds, rotary embedding and KV-cache writes; per GPU batch for the head. Llama's
# RMSNorm decomposes into more operators in half precision (casts to fp32 and back).
ELEMENTWISE_KERNELS = {("opt", "half"): 7, ("opt", "fp32"): 7, ("llama", "half"): 28, ("llama", "fp32"): 24}
HEAD_KERNELS = {("opt", "half"): 4, ("opt", "fp32"): 4, ("llama", "half"): 10, ("llama", "fp32"): 8}
MOE_KERNELS_PER_EXPERT = 4  # gather tokens, silu, multiply, scatter-add (executor: not yet built)
DEQUANT_KERNELS_PER_TIER = 4  # per layer: one call expands each source tier's block of matrices
DEQUANT_CACHE_KERNELS = 4  # per layer and GPU batch: K and V in one call, 2 operators each
QUANT_KERNELS_PER_TENSOR = {"half": 6, "fp32": 7}  # min, max, scale, round, clamp, pack (+ a cast in fp32)
CPU_ATTENTION_OPS = 2  # fused scaled_dot_product_attention on the CPU, and the output copy


def _ops(table: dict, model: ModelSpec | None, dtype: str) -> int:
    half = "fp32" if dtype == "fp32" else "half"
    return table[half] if model is None else table[("opt" if model.is_opt else "llama", half)]


# ------------------------------------------------------------------ compute pieces
def layer_gemms(model: ModelSpec) -> list[tuple[int, int, int]]:
    """Dense GEMMs of one layer as (k, n, count), excluding MoE experts (the shapes the
    profiler measures)."""
    return [(k, n, c) for k, n, c, _ in layer_gemm_splits(model)]


def layer_gemm_splits(model: ModelSpec) -> list[tuple[int, int, int, str]]:
    """Dense GEMMs of one layer as (k, n, count, split), excluding MoE experts.

    ``split`` is how tensor parallelism cuts the weight (Megatron-LM, arXiv 1909.08053,
    section 3): ``col`` = column-parallel (output features / tp: q, k, v, fc1, gate, up),
    ``row`` = row-parallel (input features / tp: out, fc2, down), ``rep`` = replicated
    (the MoE router)."""
    h, f = model.hidden_size, model.ffn_dim
    out = [(h, model.q_dim, 1, "col"), (h, model.kv_dim, 2, "col"), (model.q_dim, h, 1, "row")]
    if model.is_moe:
        out.append((h, model.num_experts, 1, "rep"))
    elif model.is_opt:
        out += [(h, f, 1, "col"), (f, h, 1, "row")]
    else:
        out += [(h, f, 2, "col"), (f, h, 1, "row")]
    return out


def _split(k: int, n: int, split: str, tp: int) -> tuple[int, int]:
    """A GEMM's (k, n) on one of tp ranks."""
    if split == "col":
        return k, -(-n // tp)
    if split == "row":
        return -(-k // tp), n
    return k, n


def kv_share(model: ModelSpec, tp: int) -> float:
    """Share of the KV heads one tensor-parallel rank holds: ceil(kv_heads / tp) / kv_heads
    (KV heads are replicated when tp exceeds them, as in GQA models with 8 KV heads)."""
    return -(-model.num_kv_heads // tp) / model.num_kv_heads


def layer_matmul_time_s(model: ModelSpec, dev: ComputeDevice, m, dtype: str, tp: int = 1, staged: bool = False):
    """GEMM time of one layer on one tensor-parallel rank for one GPU batch of ``m`` tokens
    (m may be an array); ``staged``: its weights were just copied into the staging buffer
    (``ComputeDevice.matmul_time_s``). Unit: s.

    MoE: a batch of m tokens routed to k of E experts touches on average
    ``E_act = E (1 - (1 - k/E)^m)`` experts, each with ``m k / E_act`` tokens; every
    touched expert runs its three GEMMs (gate, up, down), split like a dense MLP.
    """
    e = DTYPE_BYTES[dtype]
    m = np.asarray(m, dtype=float)
    t = sum(cnt * dev.matmul_time_s(m, *_split(k, n, sp, tp), dtype, e, staged)
            for k, n, cnt, sp in layer_gemm_splits(model))
    if model.is_moe:
        E, k = model.num_experts, model.experts_per_token
        e_act = E * (1.0 - (1.0 - k / E) ** m)
        m_e = m * k / e_act
        h, f = model.hidden_size, model.ffn_dim
        per_expert = (2 * dev.matmul_time_s(m_e, *_split(h, f, "col", tp), dtype, e, staged)
                      + dev.matmul_time_s(m_e, *_split(f, h, "row", tp), dtype, e, staged))
        t = t + e_act * per_expert
    return t


def layer_elementwise_time_s(model: ModelSpec, dev: ComputeDevice, m, dtype: str, tp: int = 1):
    """Norms, activation, residual adds, rotary embedding and cache writes for m tokens on
    one tensor-parallel rank.

    Bytes read + written per token (x dtype bytes): two norms 2h each and two residual adds
    3h each (full width on every rank); per rank (/ tp): the MLP activation 2 x ffn
    (SwiGLU: silu and multiply, 5 x ffn), rotary 3 x (q_dim + kv_dim) (llama family) and
    the K/V cache writes 4 x kv_dim. Kernels: ``ELEMENTWISE_KERNELS`` (+ per-expert routing
    kernels for MoE). Unit: s.
    """
    e = DTYPE_BYTES[dtype]
    h, f = model.hidden_size, model.ffn_dim
    m = np.asarray(m, dtype=float)
    split = 4 * model.kv_dim * kv_share(model, 1)
    kernels = _ops(ELEMENTWISE_KERNELS, model, dtype)
    if model.is_opt:
        split += 2 * f
    else:
        split += 3 * (model.q_dim + model.kv_dim)
        split += 5 * f * (model.experts_per_token if model.is_moe else 1)
    per_token = 10 * h + split / tp
    if model.is_moe:
        E, k = model.num_experts, model.experts_per_token
        kernels = kernels + MOE_KERNELS_PER_EXPERT * E * (1.0 - (1.0 - k / E) ** m)
        per_token += 4 * h * k  # gather and scatter-add of routed tokens
    return dev.stream_time_s(m * per_token * e, kernels)


def prefill_attention_time_s(model: ModelSpec, dev: ComputeDevice, b, s: int, dtype: str, tp: int = 1):
    """Fused causal attention over a prompt of s tokens for b sequences, one kernel, on one
    tensor-parallel rank (num_heads / tp heads).

    FLOP ``2 b s (s+1) q_dim / tp`` (``ModelSpec.layer_flop_prefill``); bytes read q, k, v
    and written o: ``b s (2 q_dim / tp + 2 kv_dim x kv_share) x dtype bytes``; roofline +
    launch. Unit: s.
    """
    b = np.asarray(b, dtype=float)
    flop = 2.0 * b * s * (s + 1) * model.q_dim / tp
    nbytes = b * s * (2 * model.q_dim / tp + 2 * model.kv_dim * kv_share(model, tp)) * DTYPE_BYTES[dtype]
    return np.maximum(flop / dev.peak_flop_per_s(dtype), nbytes / dev.mem_bytes_per_s) + dev.launch_s


def decode_attention_time_s(model: ModelSpec, dev: ComputeDevice, b, context, dtype: str, ops: int = 1,
                            compute_dtype: str | None = None, tp: int = 1):
    """Attention of one new token per sequence over ``context`` keys for b sequences, on one
    tensor-parallel rank.

    Reads ``b x context x kv_bytes_per_token x kv_share`` of K and V stored in ``dtype``
    and does ``4 b context q_dim / tp`` FLOP at the ``compute_dtype`` rate (default: dtype);
    time from the device's decode-attention curve or roofline, plus ``ops`` launches.
    Unit: s.
    """
    b = np.asarray(b, dtype=float)
    kv = b * context * model.kv_bytes_per_token(dtype) * kv_share(model, tp)
    flop = 4.0 * b * context * model.q_dim / tp
    return dev.attention_read_time_s(kv, flop, compute_dtype or dtype) + ops * dev.launch_s


CPU_ATTENTION_DTYPE = "fp32"  # the executor upcasts the cache it reads (FlexGen does the same)


# ------------------------------------------------------------------ terms
@dataclass(frozen=True)
class BatchShape:
    """The discrete part of a policy (arrays of length P for the vectorized path)."""

    gpu_batch_size: np.ndarray
    num_gpu_batches: np.ndarray
    cpu_attention: np.ndarray
    compress_weights: np.ndarray
    compress_cache: np.ndarray
    disk_cached: np.ndarray

    @classmethod
    def of(cls, policies) -> "BatchShape":
        ps = list(policies)
        return cls(np.array([p.gpu_batch_size for p in ps], float), np.array([p.num_gpu_batches for p in ps], float),
                   np.array([p.cpu_attention for p in ps], float), np.array([p.compress_weights for p in ps], float),
                   np.array([p.compress_cache for p in ps], float),
                   np.array([p.disk_io == "cached" for p in ps], float))

    def __len__(self) -> int:
        return len(self.gpu_batch_size)


@dataclass(frozen=True)
class Terms:
    """Everything ``estimate`` needs for P batch shapes, as arrays affine in X.

    ``coef[p, seg, scope, row, :]``: seconds per steady layer (scope LAYER, x (layers - 1)),
    for the last layer (LAST) or for the head (HEAD),
    per block (prefill, seg 0) or per decode step (segs 1..), of row ``ROWS[row]``.
    ``latency[p, seg, scope, term]``: seconds of ``LATENCY_TERMS[term]`` when it triggers.
    ``link_bytes_per_s[k]`` for resources h2d, d2h; ``duplex_bytes_per_s``.
    ``seg_steps[seg]``: how many times segment seg runs per block (1 for prefill).
    ``mem[p, phase, tier, :]``: peak bytes per tier per phase (``simulator.memory``).
    """

    coef: np.ndarray
    latency: np.ndarray
    seg_steps: np.ndarray
    seg_context: np.ndarray
    mem: np.ndarray
    num_layers: int
    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    duplex_bytes_per_s: float
    capacity_bytes: tuple[float, float, float]
    shared_host_pool: bool
    phase_mult: np.ndarray = None  # (P, 2): pipeline stretch of prefill and of each decode step
    host_serial_copies: bool = False  # CPU-only machine whose every core computes (channel_matrix)
    layout: tuple = (1, 1, 1)  # (tp, pp, dp)
    res_lin: np.ndarray = None  # (P, 10, resource*seg*scope): X @ res_lin = busy time per resource (resource_terms())
    res_lat: np.ndarray = None  # (P, latency terms, resource*seg*scope) (resource_terms())
    chan_lin: np.ndarray = None  # (P, 10, channel*seg*scope): X @ chan_lin = time per channel
    chan_lat: np.ndarray = None  # (P, latency terms, channel*seg*scope)

    def __post_init__(self):
        P, S, G, R, _ = self.coef.shape
        if self.phase_mult is None:
            object.__setattr__(self, "phase_mult", np.ones((P, 2)))
        nlat = len(LATENCY_TERMS)
        ch = channel_matrix(self.h2d_bytes_per_s, self.d2h_bytes_per_s, self.duplex_bytes_per_s,
                            self.host_serial_copies)
        # Channel times straight from the rows: row -> resource -> channel is one (row, channel)
        # matrix, applied as one matrix product. The per-resource arrays are built on first
        # use (``resource_terms``): only runs without overlap and estimate()'s detail read them.
        row_chan = ROW_RESOURCE @ ch.T
        chan_lin = (row_chan.T @ self.coef.reshape(P, S * G, R, N_X)).transpose(0, 3, 2, 1)  # (P, 10, chan, cell)
        chan_lat = np.einsum("psgt,tc->ptcsg", self.latency, LATENCY_RESOURCE @ (ch * CHANNEL_TAKES_LATENCY[:, None]).T)
        object.__setattr__(self, "chan_lin", np.ascontiguousarray(chan_lin).reshape(P, N_X, -1))
        object.__setattr__(self, "chan_lat", chan_lat.reshape(P, nlat, -1))

    def resource_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """(res_lin, res_lat): busy time per resource, affine in X, built once on first use."""
        if self.res_lin is None:
            P = self.coef.shape[0]
            res_lin = np.einsum("psgrx,rk->pxksg", self.coef, ROW_RESOURCE)  # (P, 10, res, seg, scope)
            res_lat = np.einsum("psgt,tk->ptksg", self.latency, LATENCY_RESOURCE)
            object.__setattr__(self, "res_lin", res_lin.reshape(P, N_X, -1))
            object.__setattr__(self, "res_lat", res_lat.reshape(P, len(LATENCY_TERMS), -1))
        return self.res_lin, self.res_lat

    @property
    def num_cells(self) -> int:
        """(segment, scope) cells: N_SCOPES x (1 + decode segments)."""
        return self.coef.shape[1] * self.coef.shape[2]


def decode_segments(prompt_len: int, gen_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean context) of each decode segment: steps t = 1..gen_len-1 attend to
    prompt_len + t keys, split into at most MAX_DECODE_SEGMENTS consecutive runs."""
    n = gen_len - 1
    if n <= 0:
        return np.zeros(0), np.zeros(0)
    k = min(n, MAX_DECODE_SEGMENTS)
    edges = np.linspace(0, n, k + 1).round().astype(int)
    steps = np.diff(edges).astype(float)
    # mean of t over [edges[i] + 1, edges[i+1]] is (edges[i] + 1 + edges[i+1]) / 2
    ctx = prompt_len + (edges[:-1] + 1 + edges[1:]) / 2.0
    return steps, ctx


@dataclass(frozen=True)
class RankView:
    """What one GPU (a tensor-parallel rank of one pipeline stage of one replica) holds and
    does, and what it shares with the other GPUs of its node. tp = pp = dp = 1 is the
    single-GPU case."""

    tp: int
    pp: int
    dp: int
    layers: int  # layers of the busiest stage: ceil(L / pp)
    ranks_per_node: int  # GPUs of this run on one node: they share its disk, CPU and RAM
    collective_bytes_per_s: float  # busbw of the link the tp group spans
    collective_latency_s: float
    p2p_bytes_per_s: float  # link between pipeline stages
    p2p_latency_s: float


def rank_view(model: ModelSpec, hw: HardwareProfile, tp: int, pp: int, dp: int) -> RankView:
    """The per-GPU view of a layout on ``hw``; raises PolicyError/ProfileError when it
    does not fit the machine or the model."""
    gpus = tp * pp * dp
    if model.num_heads % tp:
        raise PolicyError(f"--tp {tp} does not divide {model.name}'s {model.num_heads} attention heads")
    if pp > model.num_layers:
        raise PolicyError(f"--pp {pp} exceeds {model.name}'s {model.num_layers} layers")
    total = hw.gpu_count * hw.interconnect.nodes
    if gpus > 1 and gpus > total:
        raise PolicyError(f"--tp {tp} x --pp {pp} x --dp {dp} = {gpus} GPUs, but {hw.name} has {total} "
                          f"({hw.gpu_count} per node x {hw.interconnect.nodes} node(s))")
    per_node = max(1, hw.gpu_count)
    ic = hw.interconnect

    def link(span: int, what: str) -> tuple[float, float]:
        if span <= 1:
            return 1.0, 0.0  # unused
        if span <= per_node:
            if ic.intra_node_bytes_per_s is None:
                raise ProfileError(f"hardware profile {hw.name}: interconnect.intra_node_GBps is needed for {what} "
                                   f"over {span} GPUs of one node but the profile does not give it")
            return ic.intra_node_bytes_per_s, ic.intra_node_latency_s
        if ic.inter_node_bytes_per_s is None:
            raise ProfileError(f"hardware profile {hw.name}: interconnect.inter_node_GBps is needed for {what} "
                               f"across nodes but the profile does not give it")
        return ic.inter_node_bytes_per_s, ic.inter_node_latency_s

    cb, cl = link(tp, f"--tp {tp}")
    pb, pl = link(tp * pp if pp > 1 else 1, f"--pp {pp}")
    return RankView(tp=tp, pp=pp, dp=dp, layers=-(-model.num_layers // pp), ranks_per_node=min(per_node, gpus),
                    collective_bytes_per_s=cb, collective_latency_s=cl, p2p_bytes_per_s=pb, p2p_latency_s=pl)


def rank_bytes(tensors, fmt: str, tp: int, kv_frac: float | None = None) -> float:
    """Bytes of ``tensors`` on one tensor-parallel rank: matrices split tp ways - except
    the K and V projections, of which a rank holds its ``kv_frac`` (= kv_share: replicated
    when tp exceeds the KV heads) - vectors (norms, biases) replicated. Unit: bytes."""
    kv_frac = 1.0 / tp if kv_frac is None else kv_frac

    def share(t) -> float:
        if not t.is_matrix:
            return 1.0
        return kv_frac if ("k_proj" in t.name or "v_proj" in t.name) else 1.0 / tp

    return sum(t.nbytes(fmt) * share(t) for t in tensors)


def build_terms(model: ModelSpec, hw: HardwareProfile, workload: Workload, shape: BatchShape,
                dtype: str, tp: int = 1, pp: int = 1, dp: int = 1) -> Terms:
    """The coefficient arrays for P batch shapes under one parallel layout (per GPU).
    Pure; vectorized over P and decode segments."""
    from simulator.memory import memory_terms
    from simulator.parallel import allreduce_time_s, send_time_s

    rv = rank_view(model, hw, tp, pp, dp)
    dev, cpu = hw.device, hw.cpu
    e = DTYPE_BYTES[dtype]
    P = len(shape)
    s, n = workload.prompt_len, workload.gen_len
    h = model.hidden_size
    steps, ctx = decode_segments(s, n)
    S = len(steps)
    nseg = 1 + S

    b = shape.gpu_batch_size  # (P,)
    nb = shape.num_gpu_batches
    catt = shape.cpu_attention
    cw = shape.compress_weights
    cc_ = shape.compress_cache
    share = rv.ranks_per_node  # the node's disk and CPU serve this many GPUs at once

    h2d, d2h = hw.links.h2d_bytes_per_s, hw.links.d2h_bytes_per_s
    cached = shape.disk_cached
    if cached.any() and hw.disk.read_cached_bytes_per_s is None:
        hw.disk.read_bytes_per_s("cached")  # raises ProfileError naming the key
    disk_r = np.where(cached > 0, hw.disk.read_cached_bytes_per_s or 1.0, hw.disk.read_direct_bytes_per_s) / share
    disk_w = np.where(cached > 0, hw.disk.write_bytes_per_s("cached"), hw.disk.write_direct_bytes_per_s) / share

    # Bytes of stored tensors on one rank (compression switches the format per P).
    layer_t = model.layer_tensors()
    kvs = kv_share(model, tp)
    W = np.where(cw > 0, rank_bytes(layer_t, "int4", tp, kvs), rank_bytes(layer_t, dtype, tp, kvs))
    W16 = rank_bytes(layer_t, dtype, tp, kvs)
    lm = model.lm_head_tensor()
    head_norm_bytes = sum(t.nbytes(dtype) for t in model.head_tensors() if not t.is_matrix)
    Wh = np.where(cw > 0, lm.nbytes("int4"), lm.nbytes(dtype)) / tp + head_norm_bytes
    Wh16 = float(lm.nbytes(dtype)) / tp
    ks = kv_share(model, tp)
    kvq = np.where(cc_ > 0, model.kv_bytes_per_token(compressed=True), model.kv_bytes_per_token(dtype)) * ks
    kv16 = model.kv_bytes_per_token(dtype) * ks

    coef = np.zeros((P, nseg, N_SCOPES, len(ROWS), N_X))
    lat = np.zeros((P, nseg, N_SCOPES, len(LATENCY_TERMS)))
    a_h2d, a_d2h = hw.links.h2d_latency_s, hw.links.d2h_latency_s

    def put(seg, scope, comp, res, idx, value):
        coef[:, seg, scope, ROW[(comp, res)], idx] += value

    def put_lat(seg, scope, term, value):
        lat[:, seg, scope, term] += value

    pre, dec = 0, slice(1, nseg)
    ctx_ = ctx[None, :]  # (1, S)
    bS = b[:, None]
    nbS = nb[:, None]

    # ---- weights: loaded once per layer per block (prefill) or per step (decode).
    for seg in (pre, dec):
        for scope, nbytes in ((LAYER, W), (HEAD, Wh)):
            v = (nbytes / h2d)[:, None] if seg is dec else nbytes / h2d
            put(seg, scope, C.WEIGHT_LOAD, R.H2D, WC, v)
            put(seg, scope, C.WEIGHT_LOAD, R.H2D, WD, v)
            vr = (nbytes / disk_r)[:, None] if seg is dec else nbytes / disk_r
            put(seg, scope, C.WEIGHT_LOAD, R.DISK_READ, WD, vr)
            put_lat(seg, scope, 0, a_h2d)
            put_lat(seg, scope, 1, a_h2d)

    # ---- prefill: cache of s tokens stored; activations of s tokens per sequence.
    cache_pre = nb * b * s * kvq
    put(pre, LAYER, C.CACHE_STORE, R.D2H, CC, cache_pre / d2h)
    put(pre, LAYER, C.CACHE_STORE, R.D2H, CD, cache_pre / d2h)
    put(pre, LAYER, C.CACHE_STORE, R.DISK_WRITE, CD, cache_pre / disk_w)
    put_lat(pre, LAYER, 4, nb * a_d2h)
    put_lat(pre, LAYER, 5, nb * a_d2h)
    # Hidden states cross the L - 1 boundaries between a stage's layers (the first layer
    # takes the embedding, the last hands over to the head): the steady layers carry them,
    # the last layer does not (see the end of build_terms).
    for seg, tokens in ((pre, s), (dec, 1)):
        act = nb * b * tokens * h * e
        act = act[:, None] if seg is dec else act
        dr = disk_r[:, None] if seg is dec else disk_r
        dw = disk_w[:, None] if seg is dec else disk_w
        nbx = nbS if seg is dec else nb
        put(seg, LAYER, C.ACTIVATION_LOAD, R.H2D, HC, act / h2d)
        put(seg, LAYER, C.ACTIVATION_LOAD, R.H2D, HD, act / h2d)
        put(seg, LAYER, C.ACTIVATION_LOAD, R.DISK_READ, HD, act / dr)
        put(seg, LAYER, C.ACTIVATION_STORE, R.D2H, HC, act / d2h)
        put(seg, LAYER, C.ACTIVATION_STORE, R.D2H, HD, act / d2h)
        put(seg, LAYER, C.ACTIVATION_STORE, R.DISK_WRITE, HD, act / dw)
        for term, a in ((6, a_h2d), (7, a_h2d), (8, a_d2h), (9, a_d2h)):
            put_lat(seg, LAYER, term, nbx * a)

    # ---- decode: cache of (context - 1) tokens loaded unless attention runs on the CPU;
    # the disk share is read to the host either way; the new token's K/V is stored.
    old = nbS * bS * (ctx_ - 1) * kvq[:, None]
    gpu_side = (1.0 - catt)[:, None]
    put(dec, LAYER, C.CACHE_LOAD, R.H2D, CC, gpu_side * old / h2d)
    put(dec, LAYER, C.CACHE_LOAD, R.H2D, CD, gpu_side * old / h2d)
    put(dec, LAYER, C.CACHE_LOAD, R.DISK_READ, CD, old / disk_r[:, None])
    put_lat(dec, LAYER, 2, gpu_side * nbS * a_h2d)
    put_lat(dec, LAYER, 3, gpu_side * nbS * a_h2d)
    new = (nb * b * kvq)[:, None]
    put(dec, LAYER, C.CACHE_STORE, R.D2H, CC, new / d2h)
    put(dec, LAYER, C.CACHE_STORE, R.D2H, CD, new / d2h)
    put(dec, LAYER, C.CACHE_STORE, R.DISK_WRITE, CD, new / disk_w[:, None])
    put_lat(dec, LAYER, 4, nbS * a_d2h)
    put_lat(dec, LAYER, 5, nbS * a_d2h)
    # CPU attention: queries go to the host and outputs come back, for the CPU share.
    q_bytes = (catt * nb * b * model.q_dim / tp * e)[:, None]
    put(dec, LAYER, C.ATTENTION_IO, R.D2H, CC, q_bytes / d2h)
    put(dec, LAYER, C.ATTENTION_IO, R.D2H, CD, q_bytes / d2h)
    put(dec, LAYER, C.ATTENTION_IO, R.H2D, CC, q_bytes / h2d)
    put(dec, LAYER, C.ATTENTION_IO, R.H2D, CD, q_bytes / h2d)
    put_lat(dec, LAYER, 10, (catt * nb)[:, None] * a_d2h)
    put_lat(dec, LAYER, 11, (catt * nb)[:, None] * a_h2d)

    # ---- GPU compute (constants for a fixed batch shape).
    # GEMMs read the weights of the CPU and disk shares (and every share when compressed:
    # dequantization writes them) from the staging buffer the executor just copied them into;
    # the GPU share where it lives. The two differ only where the profile measured staged
    # GEMMs (a host device whose cache holds a layer's weights, hardware.ComputeDevice).
    for seg, m_tok in ((pre, b * s), (dec, b)):
        t_res = nb * layer_matmul_time_s(model, dev, m_tok, dtype, tp)
        t_stg = nb * layer_matmul_time_s(model, dev, m_tok, dtype, tp, staged=True) \
            if dev.staged_matmul_curves else t_res
        base, gain = t_res + cw * (t_stg - t_res), (1.0 - cw) * (t_stg - t_res)
        col = (lambda v: v[:, None]) if seg is dec else (lambda v: v)
        put(seg, LAYER, C.MATMUL, R.GPU, C0, col(base))
        put(seg, LAYER, C.MATMUL, R.GPU, WC, col(gain))
        put(seg, LAYER, C.MATMUL, R.GPU, WD, col(gain))
    put(pre, LAYER, C.ATTENTION, R.GPU, C0, nb * prefill_attention_time_s(model, dev, b, s, dtype, tp))
    put(pre, LAYER, C.ELEMENTWISE, R.GPU, C0, nb * layer_elementwise_time_s(model, dev, b * s, dtype, tp))
    put(dec, LAYER, C.ELEMENTWISE, R.GPU, C0, (nb * layer_elementwise_time_s(model, dev, b, dtype, tp))[:, None])
    # Decode attention on the GPU: over the whole cache, or only its GPU share when the
    # CPU attends to the rest. The share runs at the whole cache's achieved rate.
    gatt = nbS * decode_attention_time_s(model, dev, bS, ctx_, dtype, tp=tp)
    put(dec, LAYER, C.ATTENTION, R.GPU, C0, gpu_side * gatt)
    put(dec, LAYER, C.ATTENTION, R.GPU, CG, catt[:, None] * gatt)
    # CPU attention; the node's CPU serves all of its GPUs' CPU shares at once.
    catt_t = share * nbS * decode_attention_time_s(model, cpu, bS, ctx_, dtype, ops=CPU_ATTENTION_OPS,
                                                   compute_dtype=CPU_ATTENTION_DTYPE, tp=tp)
    put(dec, LAYER, C.ATTENTION, R.CPU, CC, catt[:, None] * catt_t)
    put(dec, LAYER, C.ATTENTION, R.CPU, CD, catt[:, None] * catt_t)

    # ---- tensor parallelism: two all-reduces of the hidden states per layer and GPU batch
    # (after the attention output and the MLP down projection; Megatron-LM section 3).
    if tp > 1:
        for seg, tokens in ((pre, s), (dec, 1)):
            ar = nb * 2 * allreduce_time_s(b * tokens * h * e, tp, rv.collective_bytes_per_s,
                                           rv.collective_latency_s)
            put(seg, LAYER, C.COMMUNICATION, R.COLLECTIVE, C0, ar[:, None] if seg is dec else ar)
            # Vocab-parallel embedding: one all-reduce of the embedded tokens; vocab-parallel
            # LM head: an all-gather of each rank's (max, index), 16 bytes per sequence.
            arh = nb * (allreduce_time_s(b * tokens * h * e, tp, rv.collective_bytes_per_s, rv.collective_latency_s)
                        + allreduce_time_s(b * 16.0, tp, rv.collective_bytes_per_s, rv.collective_latency_s))
            put(seg, HEAD, C.COMMUNICATION, R.COLLECTIVE, C0, arh[:, None] if seg is dec else arh)
    # ---- pipeline parallelism: each GPU batch's hidden states go to the next stage once per
    # stage pass, on their own link, concurrent with compute.
    if pp > 1:
        for seg, tokens in ((pre, s), (dec, 1)):
            sd = nb * send_time_s(b * tokens * h * e, rv.p2p_bytes_per_s, rv.p2p_latency_s)
            put(seg, HEAD, C.PIPELINE_SEND, R.P2P, C0, sd[:, None] if seg is dec else sd)

    # ---- compression: dequantize each layer's weights once per block pass; quantize new
    # cache; dequantize the cache that attention reads.
    # Bytes here (read packed, write dequantized); the kernels of each source tier's block
    # are step terms (a tier holding no weights launches nothing).
    qw = rank_bytes(layer_t, "int4", tp, kvs)
    deq_w = cw * dev.stream_time_s(qw + W16, 0)
    deq_h = cw * dev.stream_time_s(lm.nbytes("int4") / tp + Wh16, 0)
    for seg in (pre, dec):
        for scope in (LAYER, HEAD):
            for term in (12, 13, 14):
                v = cw * DEQUANT_KERNELS_PER_TIER * dev.launch_s
                put_lat(seg, scope, term, v[:, None] if seg is dec else v)
    kvc = model.kv_bytes_per_token(compressed=True) * ks
    put(pre, LAYER, C.COMPRESSION, R.GPU, C0,
        deq_w + cc_ * nb * dev.stream_time_s(b * s * (kv16 + kvc), 2 * _ops(QUANT_KERNELS_PER_TENSOR, None, dtype)))
    put(dec, LAYER, C.COMPRESSION, R.GPU, C0, deq_w[:, None] + (cc_ * nb)[:, None] * (
        dev.stream_time_s(bS * (ctx_ - 1) * (kv16 + kvc), DEQUANT_CACHE_KERNELS)
        + dev.stream_time_s(bS * (kv16 + kvc), 2 * _ops(QUANT_KERNELS_PER_TENSOR, None, dtype))))
    put(pre, HEAD, C.COMPRESSION, R.GPU, C0, deq_h)
    put(dec, HEAD, C.COMPRESSION, R.GPU, C0, deq_h[:, None])

    # ---- head: embeddings (prefill: b s tokens), final norm, LM head on the last token.
    V = model.vocab_size
    head_gemm = nb * dev.matmul_time_s(b, h, -(-V // tp), dtype, e)
    put(pre, HEAD, C.MATMUL, R.GPU, C0, head_gemm)
    put(dec, HEAD, C.MATMUL, R.GPU, C0, head_gemm[:, None])
    pos_factor = 5 if model.is_opt else 2  # OPT adds learned positions: gather + add
    hk = _ops(HEAD_KERNELS, model, dtype)
    put(pre, HEAD, C.ELEMENTWISE, R.GPU, C0,
        nb * dev.stream_time_s(b * s * h * e * pos_factor + b * (2 * h + V / tp) * e, hk))
    put(dec, HEAD, C.ELEMENTWISE, R.GPU, C0,
        (nb * dev.stream_time_s(b * h * e * pos_factor + b * (2 * h + V / tp) * e, hk))[:, None])

    # ---- the last layer: a layer's work, minus the activation hand-over, hiding the head's
    # weight load; the head hides the next layer's (layer 0's) weight load.
    wl_rows = [ROW[(C.WEIGHT_LOAD, R.H2D)], ROW[(C.WEIGHT_LOAD, R.DISK_READ)]]
    act_rows = [ROW[(c, r)] for c, r in ROWS if c in (C.ACTIVATION_LOAD, C.ACTIVATION_STORE)]
    wl_terms, act_terms = [0, 1], [6, 7, 8, 9]
    coef[:, :, LAST] = coef[:, :, LAYER]
    lat[:, :, LAST] = lat[:, :, LAYER]
    coef[:, :, LAST][:, :, act_rows] = 0.0
    lat[:, :, LAST][:, :, act_terms] = 0.0
    head_load, layer_load = coef[:, :, HEAD][:, :, wl_rows].copy(), coef[:, :, LAYER][:, :, wl_rows].copy()
    head_lat, layer_lat = lat[:, :, HEAD][:, :, wl_terms].copy(), lat[:, :, LAYER][:, :, wl_terms].copy()
    coef[:, :, LAST][:, :, wl_rows] = head_load
    lat[:, :, LAST][:, :, wl_terms] = head_lat
    coef[:, :, HEAD][:, :, wl_rows] = layer_load
    lat[:, :, HEAD][:, :, wl_terms] = layer_lat

    seg_steps = np.concatenate([[1.0], steps])
    seg_context = np.concatenate([[float(s)], ctx])
    mem = memory_terms(model, hw, workload, shape, dtype, rv)
    pool = hw.device_is_host
    cap = (hw.device.usable_bytes, hw.cpu.usable_bytes, hw.disk.capacity_bytes)
    # Pipeline: a block pass through pp stages with nb micro-batches (the GPU batches). The
    # prefill fills and drains the pipeline once: (nb + pp - 1) / nb stage passes; each
    # decode step keeps it full when nb >= pp, else stages wait: max(nb, pp) / nb.
    mult = np.stack([(nb + pp - 1) / nb, np.maximum(nb, pp) / nb], axis=1)
    return Terms(coef=coef, latency=lat, seg_steps=seg_steps, seg_context=seg_context, mem=mem,
                 num_layers=rv.layers, h2d_bytes_per_s=h2d, d2h_bytes_per_s=d2h,
                 duplex_bytes_per_s=hw.links.duplex_bytes_per_s, capacity_bytes=cap, shared_host_pool=pool,
                 phase_mult=mult, layout=(tp, pp, dp), host_serial_copies=pool and not hw.host_copies_overlap)


@functools.lru_cache(maxsize=4096)
def cached_terms(model: ModelSpec, hw: HardwareProfile, workload: Workload, gpu_batch_size: int,
                 num_gpu_batches: int, cpu_attention: bool, compress_weights: bool, compress_cache: bool,
                 disk_io: str, dtype: str, tp: int = 1, pp: int = 1, dp: int = 1) -> Terms:
    """``build_terms`` for one batch shape, memoised (all arguments are frozen values)."""
    shape = BatchShape(np.array([gpu_batch_size], float), np.array([num_gpu_batches], float),
                       np.array([cpu_attention], float), np.array([compress_weights], float),
                       np.array([compress_cache], float), np.array([disk_io == "cached"], float))
    return build_terms(model, hw, workload, shape, dtype, tp, pp, dp)


# ------------------------------------------------------------------ evaluation
@dataclass
class Evaluation:
    """Results for Q fraction vectors (arrays of length Q). Times are per block."""

    prefill_s: np.ndarray
    decode_s: np.ndarray
    unit: np.ndarray  # (Q, seg, scope) seconds per layer / head pass
    bounds: np.ndarray | None  # (Q, seg, scope, len(Bound)) channel times (detail=True)
    mem: np.ndarray  # (Q, phase, tier) peak bytes


BOUNDS = tuple(Bound)
BOUND_NAMES = tuple(b.value for b in BOUNDS)
_RI = {r: k for k, r in enumerate(RESOURCES)}


def fraction_vector(policy: Policy) -> np.ndarray:
    return np.array([1.0, *policy.weights.as_tuple(), *policy.cache.as_tuple(), *policy.activations.as_tuple()])


def evaluate(terms: Terms, X: np.ndarray, overlap, detail: bool = False) -> Evaluation:
    """Times and memory for fraction vectors X (Q, 10).

    ``terms`` holds either one batch shape (broadcast over all Q vectors) or Q shapes (one
    per vector). Per layer: with ``overlap`` the max of the concurrent channels, else the
    sum of all resources. Per block: prefill = (L - 1) x steady layer + last layer + head;
    decode = sum over segments of steps x the same; both stretched by the pipeline. ``detail`` also returns every channel's time
    (``Evaluation.bounds``). Unit: s.
    """
    X = np.atleast_2d(np.asarray(X, dtype=float))
    Q = X.shape[0]
    P, nseg = terms.coef.shape[:2]
    trig = (X @ LATENCY_MASK.T > FRACTION_EPS).astype(float)  # (Q, latency terms)
    ov = np.broadcast_to(np.asarray(overlap, bool), (Q,))
    need_res = detail or not ov.all()

    def apply(lin, lat):
        if P == 1:
            return X @ lin[0] + trig @ lat[0]
        return np.einsum("qx,qxk->qk", X, lin) + np.einsum("qt,qtk->qk", trig, lat)

    chan = apply(terms.chan_lin, terms.chan_lat).reshape(Q, len(CHANNELS), nseg, N_SCOPES)
    unit = chan.max(axis=1)
    res = apply(*terms.resource_terms()).reshape(Q, len(RESOURCES), nseg, N_SCOPES) if need_res else None
    if not ov.all():
        unit = np.where(ov[:, None, None], unit, res.sum(axis=1))
    if P == 1:
        mem = X @ terms.mem[0].reshape(-1, N_X).T
    else:
        mem = np.einsum("qx,qfx->qf", X, terms.mem.reshape(P, -1, N_X))
    per_seg = (terms.num_layers - 1) * unit[..., LAYER] + unit[..., LAST] + unit[..., HEAD]  # (Q, seg)
    mult = terms.phase_mult if P > 1 else np.broadcast_to(terms.phase_mult, (Q, 2))
    bounds = None
    if detail:
        bounds = np.stack([chan[:, 0], chan[:, 1], chan[:, 2], chan[:, 3], res[:, _RI[R.GPU]], res[:, _RI[R.CPU]],
                           res[:, _RI[R.COLLECTIVE]], chan[:, 5]], axis=-1)
    return Evaluation(per_seg[:, 0] * mult[:, 0], (per_seg[:, 1:] @ terms.seg_steps[1:]) * mult[:, 1], unit, bounds,
                      mem.reshape(Q, 2, 3))


# ------------------------------------------------------------------ Estimate
@dataclass(frozen=True)
class Estimate:
    """The cost model's answer for one (model, hardware, workload, policy).

    Latencies cover all ``num_sequences`` (``num_blocks`` blocks run one after another).
    ``throughput_tok_s = N x gen_len / total`` and ``decode_throughput_tok_s = N x
    (gen_len - 1) / decode`` as FlexGen reports them (None when gen_len is 1).
    ``breakdown``: rows {phase, component, resource, time_s}: busy time of each resource
    per component over the whole run (with overlap they do not add up to the latency).
    ``bound_time_s``: {phase: {channel: s}} the time each concurrent channel needs;
    ``bottleneck``: the channel (``simulator.vocabulary.Bound``) that set most of the time.
    """

    model: str
    hardware: str
    feasible: bool
    reason: str
    prefill_latency_s: float
    decode_latency_s: float
    total_latency_s: float
    throughput_tok_s: float
    decode_throughput_tok_s: float | None
    num_sequences: int
    block_size: int
    num_blocks: int
    peak_memory_bytes: dict
    peak_memory_by_phase: dict
    capacity_bytes: dict
    bottleneck: str
    bound_time_s: dict
    breakdown: list = field(default_factory=list)
    workload: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)

    def breakdown_frame(self):
        """The breakdown as a tidy pandas DataFrame (one row per phase, component, resource)."""
        import pandas as pd
        return pd.DataFrame(self.breakdown, columns=["phase", "component", "resource", "time_s"])


def check_inputs(model: ModelSpec, hw: HardwareProfile, workload: Workload, policy: Policy) -> int:
    """Validate the combination; returns num_sequences."""
    ctx = workload.prompt_len + workload.gen_len
    if ctx > model.max_position_embeddings:
        raise PolicyError(f"--prompt-len + --gen-len = {ctx} exceeds {model.name}'s max_position_embeddings "
                          f"{model.max_position_embeddings}")
    hw.device.peak_flop_per_s(policy.dtype)  # raises ProfileError naming the missing key
    rank_view(model, hw, policy.tp, policy.pp, policy.dp)  # raises when the layout does not fit
    if policy.disk_io == "cached":
        hw.disk.read_bytes_per_s("cached")
    return policy.num_sequences(workload)


def memory_verdict(peak: np.ndarray, capacity: tuple, shared_host_pool: bool) -> tuple[bool, str]:
    """(feasible, reason) for peak bytes per tier (gpu, cpu, disk)."""
    from simulator.units import GiB

    need = {Tier.GPU: float(peak[0]), Tier.CPU: float(peak[1]), Tier.DISK: float(peak[2])}
    have = dict(zip((Tier.GPU, Tier.CPU, Tier.DISK), capacity))
    if shared_host_pool:  # CPU-only machine: the "gpu" tier is host RAM too
        need = {Tier.CPU: need[Tier.GPU] + need[Tier.CPU], Tier.DISK: need[Tier.DISK]}
    short = []
    for tier, n in need.items():
        if n > have[tier]:
            label = "cpu (host RAM, shared with the gpu tier on this CPU-only machine)" \
                if shared_host_pool and tier is Tier.CPU else tier.value
            short.append(f"{label} memory: needs {n / GiB:.2f} GiB, has {have[tier] / GiB:.2f} GiB "
                         f"(short by {(n - have[tier]) / GiB:.2f} GiB)")
    return (not short), "; ".join(short)


def estimate(model: ModelSpec, hardware: HardwareProfile, workload: Workload, policy: Policy) -> Estimate:
    """Predict latency, throughput and peak memory of ``policy`` (pure function).

    Raises PolicyError / ProfileError for inputs that cannot be evaluated; an infeasible
    but well-formed case returns ``feasible=False`` with the tier that is short.
    """
    N = check_inputs(model, hardware, workload, policy)
    terms = cached_terms(model, hardware, workload, policy.gpu_batch_size, policy.num_gpu_batches,
                         policy.cpu_attention, policy.compress_weights, policy.compress_cache, policy.disk_io,
                         policy.dtype, policy.tp, policy.pp, policy.dp)
    X = fraction_vector(policy)[None, :]
    ev = evaluate(terms, X, np.array([policy.overlap]), detail=True)
    blocks = N // (policy.block_size * policy.dp)  # blocks per data-parallel replica, run one after another
    prefill = float(ev.prefill_s[0]) * blocks
    decode = float(ev.decode_s[0]) * blocks
    total = prefill + decode
    n = workload.gen_len
    peak_phase = ev.mem[0]  # (phase, tier)
    peak = peak_phase.max(axis=0)
    feasible, reason = memory_verdict(peak, terms.capacity_bytes, terms.shared_host_pool)
    weights = _phase_weights(terms, blocks)
    return Estimate(
        model=model.name, hardware=hardware.name, feasible=feasible, reason=reason,
        prefill_latency_s=prefill, decode_latency_s=decode, total_latency_s=total,
        throughput_tok_s=N * n / total if total > 0 else math.inf,
        decode_throughput_tok_s=(N * (n - 1) / decode) if n > 1 and decode > 0 else None,
        num_sequences=N, block_size=policy.block_size, num_blocks=blocks,
        peak_memory_bytes=dict(zip(TIER_NAMES, peak.tolist())),
        peak_memory_by_phase={ph: dict(zip(TIER_NAMES, row)) for ph, row in zip(PHASE_NAMES, peak_phase.tolist())},
        capacity_bytes=dict(zip(TIER_NAMES, map(float, terms.capacity_bytes))),
        bottleneck=_bottleneck(ev, weights, policy.overlap),
        bound_time_s={ph: dict(zip(BOUND_NAMES, np.einsum("sgb,sg->b", ev.bounds[0], w).tolist()))
                      for ph, w in zip(PHASE_NAMES, weights)},
        breakdown=_breakdown(terms, X[0], weights),
        workload={**workload.to_dict(), "num_sequences": N},
        policy=policy.to_dict(),
    )


TIER_NAMES = tuple(t.value for t in (Tier.GPU, Tier.CPU, Tier.DISK))
PHASE_NAMES = (Phase.PREFILL.value, Phase.DECODE.value)


def cell_weights(terms: Terms) -> np.ndarray:
    """(P, cells): how often each (segment, scope) cell's time counts in one block's latency:
    steps x (layers of a stage | 1) x the pipeline stretch of its phase. Block latency =
    sum over cells of weight x cell time; the LP minimises exactly this."""
    base = np.stack([(terms.num_layers - 1) * terms.seg_steps, terms.seg_steps, terms.seg_steps], axis=-1)
    ph = np.ones(base.shape[0], int)
    ph[0] = 0
    return (base[None] * terms.phase_mult[:, ph][:, :, None]).reshape(terms.phase_mult.shape[0], -1)


def _phase_weights(terms: Terms, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicity of each (seg, scope) cell over the run, for prefill and for decode."""
    mult = cell_weights(terms)[0].reshape(-1, N_SCOPES) * blocks  # (seg, scope)
    pre = np.zeros_like(mult)
    pre[0] = mult[0]
    return pre, mult - pre


def _breakdown(terms: Terms, X: np.ndarray, weights) -> list[dict]:
    row_time = terms.coef[0] @ X  # (seg, scope, row)
    trig = (LATENCY_MASK @ X > FRACTION_EPS).astype(float)
    lat_time = terms.latency[0] * trig  # (seg, scope, term)
    rows = []
    for phase, w in zip(PHASE_NAMES, weights):
        acc = dict(zip(ROW_NAMES, np.einsum("sgr,sg->r", row_time, w).tolist()))
        for key, t in zip(LATENCY_NAMES, np.einsum("sgt,sg->t", lat_time, w).tolist()):
            acc[key] += t
        rows += [{"phase": phase, "component": c, "resource": r, "time_s": t} for (c, r), t in acc.items() if t > 0]
    return rows


def _bottleneck(ev: Evaluation, weights, overlap: bool) -> str:
    """The channel that governed the most time: with overlap, per (segment, scope) the
    channel at the max (the compute chain attributed to the largest of gpu, cpu and
    collective); serially, the resource with the most busy time."""
    w = weights[0] + weights[1]
    b = ev.bounds[0]  # (seg, scope, bound): h2d, d2h, duplex, disk, gpu, cpu, collective, p2p
    if overlap:
        chan = b.copy()
        comp = b[..., 4] + b[..., 5] + b[..., 6]
        top_part = 4 + np.argmax(b[..., 4:7], axis=-1)
        for k in (4, 5, 6):
            chan[..., k] = np.where(top_part == k, comp, 0.0)
        top = chan.argmax(axis=-1)
        acc = np.bincount(top.ravel(), weights=(chan.max(axis=-1) * w).ravel(), minlength=len(BOUNDS))
    else:
        acc = np.einsum("sgb,sg->b", b, w)
        acc[2] = 0.0  # duplex is not a channel when nothing overlaps
    return BOUND_NAMES[int(acc.argmax())]
