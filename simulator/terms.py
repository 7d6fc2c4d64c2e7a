"""The affine framework every engine's schedule is written in, and its evaluation.

An engine (``simulator.engines``) describes one block of its schedule as **cells**: a cell is
one (segment, scope) pair - a segment is the prefill or a run of decode steps, a scope is a
kind of unit the engine repeats (a steady layer, the last layer, the head; or FlexGen's
attention and MLP sub-layers for the first and the other GPU batches), and each scope has a
multiplicity per stage pass (``Terms.scope_mult``). In a cell, the work lands on
``Resource``s; each resource's busy time is affine in the nine placement fractions

    X = [1, w_g, w_c, w_d, c_g, c_c, c_d, h_g, h_c, h_d]

(``Terms.coef``), plus **step terms** paid once when a share is non-zero (the link latency
of a transfer, the kernels of a tier's dequantization: ``LATENCY_TERMS``, by name). The
engine's **channels** are the things that run concurrently: each is a weighted sum of
resources (``Terms.channel_matrix``), and a cell takes the slowest channel's time when the
engine overlaps, else the sum of all resources. A block's time is the multiplicity-weighted
sum of its cells (``cell_weights``), so it is a sum of maxima of affine functions: the
search's LP minimises exactly that (``simulator.search``).

Units: bytes, seconds, bytes/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.vocabulary import Bound, Component, Resource

MAX_DECODE_SEGMENTS = 16

# Fraction vector layout: X = [1, w_g, w_c, w_d, c_g, c_c, c_d, h_g, h_c, h_d].
N_X = 10
C0, WG, WC, WD, CG, CC, CD, HG, HC, HD = range(N_X)
X_NAMES = ("const", "weights.gpu_frac", "weights.cpu_frac", "weights.disk_frac", "cache.gpu_frac",
           "cache.cpu_frac", "cache.disk_frac", "activations.gpu_frac", "activations.cpu_frac",
           "activations.disk_frac")
# The fractions of each tensor kind's share on the CPU and on the disk, by tensor kind.
OFFLOADED = {"weights": (WC, WD), "cache": (CC, CD), "activations": (HC, HD)}

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
    (C.KERNEL_LAUNCH, R.HOST),
    # copies the host thread performs itself (pageable tensors), concurrent with the GPU's queue
    (C.WEIGHT_LOAD, R.HOST), (C.CACHE_LOAD, R.HOST), (C.CACHE_STORE, R.HOST),
    # host work before a step's kernels are issued (relay copies of unpinned tensors, Python
    # bookkeeping after a sync): serial with everything of that step
    (C.WEIGHT_LOAD, R.SYNC), (C.CACHE_LOAD, R.SYNC), (C.SYNCHRONIZATION, R.SYNC),
    # copies an engine issues on its compute stream: serial with its kernels
    (C.ACTIVATION_LOAD, R.GPU), (C.ACTIVATION_STORE, R.GPU),
    # mixture of experts: experts computed on the CPU (simulator.moe)
    (C.MATMUL, R.CPU),
)
ROW = {pair: i for i, pair in enumerate(ROWS)}
ROW_NAMES = tuple((c.value, r.value) for c, r in ROWS)
RESOURCES = tuple(Resource)
RES = {r: k for k, r in enumerate(RESOURCES)}
# ROW_RESOURCE[r, k] = 1 when row r is spent on resource k.
ROW_RESOURCE = np.array([[1.0 if res == k else 0.0 for k in RESOURCES] for _, res in ROWS])

# Step terms, paid once when a share is non-zero: name -> (component, resource, fractions
# whose sum > 0 triggers it). The LP leaves them out (a lower bound; plans are re-evaluated).
LATENCY_TERMS: dict[str, tuple[Component, Resource, tuple[int, ...]]] = {
    "weight_load.cpu": (C.WEIGHT_LOAD, R.H2D, (WC,)), "weight_load.disk": (C.WEIGHT_LOAD, R.H2D, (WD,)),
    "cache_load.cpu": (C.CACHE_LOAD, R.H2D, (CC,)), "cache_load.disk": (C.CACHE_LOAD, R.H2D, (CD,)),
    "cache_store.cpu": (C.CACHE_STORE, R.D2H, (CC,)), "cache_store.disk": (C.CACHE_STORE, R.D2H, (CD,)),
    "activation_load.cpu": (C.ACTIVATION_LOAD, R.H2D, (HC,)), "activation_load.disk": (C.ACTIVATION_LOAD, R.H2D, (HD,)),
    "activation_store.cpu": (C.ACTIVATION_STORE, R.D2H, (HC,)),
    "activation_store.disk": (C.ACTIVATION_STORE, R.D2H, (HD,)),
    "attention_io.d2h": (C.ATTENTION_IO, R.D2H, (CC, CD)), "attention_io.h2d": (C.ATTENTION_IO, R.H2D, (CC, CD)),
    "dequant.gpu": (C.COMPRESSION, R.GPU, (WG,)), "dequant.cpu": (C.COMPRESSION, R.GPU, (WC,)),
    "dequant.disk": (C.COMPRESSION, R.GPU, (WD,)),
    "launch.cache_offloaded": (C.KERNEL_LAUNCH, R.HOST, (CC, CD)),
    "launch.activations_offloaded": (C.KERNEL_LAUNCH, R.HOST, (HC, HD)),
    "launch.weights_offloaded": (C.KERNEL_LAUNCH, R.HOST, (WC, WD)),
    # one copy per expert fetched after the routing, serial with the layer (simulator.moe)
    "expert_load.cpu": (C.WEIGHT_LOAD, R.SYNC, (WC,)), "expert_load.disk": (C.WEIGHT_LOAD, R.SYNC, (WD,)),
}
LATENCY_INDEX = {name: i for i, name in enumerate(LATENCY_TERMS)}
LATENCY_NAMES = tuple((c.value, r.value) for c, r, _ in LATENCY_TERMS.values())
LATENCY_MASK = np.zeros((len(LATENCY_TERMS), N_X))
for _i, (_, _, _idx) in enumerate(LATENCY_TERMS.values()):
    LATENCY_MASK[_i, list(_idx)] = 1.0
LATENCY_RESOURCE = np.array([[1.0 if res == k else 0.0 for k in RESOURCES] for _, res, _ in LATENCY_TERMS.values()])
FRACTION_EPS = 1e-9  # a share below this moves nothing

# The channels an engine may run concurrently; each engine's channel_matrix says which
# resources make up each (a channel it does not use stays all-zero).
CHANNELS = ("h2d", "d2h", "link_duplex", "disk", "compute", "p2p", "host")
CH = {name: i for i, name in enumerate(CHANNELS)}
# Per-transfer latency counts on its own direction, not in the both-directions byte budget.
CHANNEL_TAKES_LATENCY = np.array([0.0 if name == "link_duplex" else 1.0 for name in CHANNELS])
# A channel's time is reported as the Bound of its name, except the chains of several compute
# resources, which are attributed to their largest part.
CHANNEL_BOUND = {"h2d": Bound.H2D, "d2h": Bound.D2H, "link_duplex": Bound.LINK_DUPLEX, "disk": Bound.DISK,
                 "p2p": Bound.P2P}
COMPUTE_PARTS = {"compute": (R.GPU, R.CPU, R.COLLECTIVE), "host": (R.HOST, R.CPU)}
# Every channel waits for the synchronization points of its step (an engine that syncs each
# step: nothing starts before the host has issued it), so SYNC time joins every channel.
BOUNDS = tuple(Bound)
BOUND_NAMES = tuple(b.value for b in BOUNDS)


def link_channels(ch: np.ndarray, h2d_bytes_per_s: float, d2h_bytes_per_s: float, duplex_bytes_per_s: float,
                  host_device: bool = False) -> np.ndarray:
    """Fill the link and disk channels of ``ch`` (channel, resource), shared by the engines.

    ``link_duplex`` converts each direction's time back to bytes and divides by the
    measured both-directions rate: (t_h2d x bw_h2d + t_d2h x bw_d2h) / bw_duplex. One disk
    serves reads and writes, so they add.

    ``host_device`` (a CPU-only machine, where the "gpu" tier is host memory, and every core
    computes): moving data between the tiers is a memcpy by a thread that takes cores and
    memory bandwidth from the GEMMs, so h2d and d2h join the compute chain. On the 2-core
    machine with both cores computing, overlapped runs were slower than serial ones; with
    one compute thread the copy thread on the free core hid the copies
    (``HardwareProfile.host_copies_overlap``). Disk I/O stays a channel of its own.
    """
    ch[CH["disk"], RES[R.DISK_READ]] = ch[CH["disk"], RES[R.DISK_WRITE]] = 1.0
    ch[CH["p2p"], RES[R.P2P]] = 1.0
    if host_device:
        ch[CH["compute"], RES[R.H2D]] = ch[CH["compute"], RES[R.D2H]] = 1.0
        return ch
    ch[CH["h2d"], RES[R.H2D]] = 1.0
    ch[CH["d2h"], RES[R.D2H]] = 1.0
    ch[CH["link_duplex"], RES[R.H2D]] = h2d_bytes_per_s / duplex_bytes_per_s
    ch[CH["link_duplex"], RES[R.D2H]] = d2h_bytes_per_s / duplex_bytes_per_s
    return ch


def channel_matrix(h2d_bytes_per_s: float, d2h_bytes_per_s: float, duplex_bytes_per_s: float,
                   host_device: bool = False, host_channel: bool = False) -> np.ndarray:
    """(channel, resource) weights: channel time = sum of weight x resource busy time.

    ``compute`` is the serial chain GPU compute + CPU attention + tensor-parallel
    all-reduces. With ``host_channel`` the host thread that issues the GPU's kernels is a
    channel of its own (it runs ahead of the GPU, asynchronously), serial with the CPU
    attention it also runs: ``host = host work + CPU attention``; without it, host work
    joins the compute chain. Links and disk: ``link_channels``.
    """
    ch = np.zeros((len(CHANNELS), len(RESOURCES)))
    for r in COMPUTE_PARTS["compute"]:
        ch[CH["compute"], RES[r]] = 1.0
    if host_channel:
        ch[CH["host"], RES[R.HOST]] = ch[CH["host"], RES[R.CPU]] = 1.0
    else:
        ch[CH["compute"], RES[R.HOST]] = 1.0
    ch = link_channels(ch, h2d_bytes_per_s, d2h_bytes_per_s, duplex_bytes_per_s, host_device)
    ch[:, RES[R.SYNC]] = 1.0
    return ch


def serial_channel_matrix() -> np.ndarray:
    """Without overlap: one channel, the sum of every resource."""
    ch = np.zeros((len(CHANNELS), len(RESOURCES)))
    ch[CH["compute"]] = 1.0
    return ch


@dataclass(frozen=True)
class BatchShape:
    """The discrete part of a policy (arrays of length P for the vectorized path)."""

    gpu_batch_size: np.ndarray
    num_gpu_batches: np.ndarray
    cpu_attention: np.ndarray
    compress_weights: np.ndarray
    compress_cache: np.ndarray
    disk_cached: np.ndarray
    # Mixture-of-experts switches (``Policy.expert_parallel``; ``Policy.expert_offload`` "fetch"
    # or "cpu", 0/1); None: off.
    expert_parallel: np.ndarray = None
    fetch_experts: np.ndarray = None
    cpu_experts: np.ndarray = None

    def __post_init__(self):
        for name in ("expert_parallel", "fetch_experts", "cpu_experts"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(len(self.gpu_batch_size)))

    @classmethod
    def of(cls, policies) -> "BatchShape":
        ps = list(policies)
        return cls(np.array([p.gpu_batch_size for p in ps], float), np.array([p.num_gpu_batches for p in ps], float),
                   np.array([p.cpu_attention for p in ps], float), np.array([p.compress_weights for p in ps], float),
                   np.array([p.compress_cache for p in ps], float),
                   np.array([p.disk_io == "cached" for p in ps], float),
                   np.array([p.expert_parallel for p in ps], float),
                   np.array([p.expert_offload == "fetch" for p in ps], float),
                   np.array([p.expert_offload == "cpu" for p in ps], float))

    @classmethod
    def one(cls, gpu_batch_size, num_gpu_batches, cpu_attention, compress_weights, compress_cache,
            disk_io: str, expert_parallel: bool = False, expert_offload: str = "prefetch") -> "BatchShape":
        return cls(np.array([gpu_batch_size], float), np.array([num_gpu_batches], float),
                   np.array([cpu_attention], float), np.array([compress_weights], float),
                   np.array([compress_cache], float), np.array([disk_io == "cached"], float),
                   np.array([expert_parallel], float), np.array([expert_offload == "fetch"], float),
                   np.array([expert_offload == "cpu"], float))

    def __len__(self) -> int:
        return len(self.gpu_batch_size)


@dataclass(frozen=True)
class Terms:
    """Everything ``estimate`` needs for P batch shapes, as arrays affine in X.

    ``coef[p, seg, scope, row, :]``: seconds of ``ROWS[row]`` in one unit of ``scope``
    (``scopes[scope]``), per block (prefill, seg 0) or per decode step (segs 1..).
    ``latency[p, seg, scope, term]``: seconds of ``LATENCY_TERMS[term]`` when it triggers.
    ``scope_mult[p, seg, scope]``: units of each scope in one pass of the busiest stage.
    ``seg_steps[seg]``: how many times segment seg runs per block (1 for prefill).
    ``mem[p, phase, tier, :]``: peak bytes per tier per phase (``simulator.memory``).
    ``channel_matrix``: (channel, resource) weights of the engine's concurrent channels;
    ``serial_matrix``: the same when the policy does not overlap (default: one channel that
    sums every resource).
    ``phase_mult[p, phase]``: the pipeline stretch of prefill and of each decode step.
    """

    coef: np.ndarray
    latency: np.ndarray
    seg_steps: np.ndarray
    seg_context: np.ndarray
    mem: np.ndarray
    scopes: tuple
    scope_mult: np.ndarray
    channel_matrix: np.ndarray
    capacity_bytes: tuple[float, float, float]
    shared_host_pool: bool
    phase_mult: np.ndarray = None
    layout: tuple = (1, 1, 1)  # (tp, pp, dp)
    engine: str = "llmsim"
    serial_matrix: np.ndarray = None
    res_lin: np.ndarray = None  # (P, 10, resource*seg*scope): X @ res_lin = busy time per resource
    res_lat: np.ndarray = None  # (P, latency terms, resource*seg*scope)
    chan_lin: np.ndarray = None  # (P, 10, channel*seg*scope): X @ chan_lin = time per channel
    chan_lat: np.ndarray = None  # (P, latency terms, channel*seg*scope)
    serial_lin: np.ndarray = None  # the same for serial_matrix
    serial_lat: np.ndarray = None
    # The engine's serial host time (resource SYNC) is a bound of its own: reported under
    # Bound.SYNC and a part of the compute chain when the bottleneck is named (llmsim's
    # executor fetching routed experts after the routing, simulator.moe). Off: SYNC time joins
    # the channels but is attributed to none.
    sync_bound: bool = False

    def __post_init__(self):
        P, nseg, nsc = self.coef.shape[:3]
        if self.phase_mult is None:
            object.__setattr__(self, "phase_mult", np.ones((P, 2)))
        if self.serial_matrix is None:
            object.__setattr__(self, "serial_matrix", serial_channel_matrix())
        mult = np.asarray(self.scope_mult, dtype=float)
        if mult.ndim == 2:  # the same multiplicity in every segment
            mult = np.broadcast_to(mult[:, None, :], (P, nseg, nsc))
        object.__setattr__(self, "scope_mult", np.ascontiguousarray(mult))
        # Channel times straight from the rows: row -> resource -> channel is one (row, channel)
        # matrix, applied as one matrix product. The per-resource arrays are built on first use
        # (``resource_terms``): only estimate()'s detail reads them.
        nlat = len(LATENCY_TERMS)
        for lin, lat, ch in (("chan_lin", "chan_lat", self.channel_matrix),
                             ("serial_lin", "serial_lat", self.serial_matrix)):
            row_chan = ROW_RESOURCE @ ch.T
            c_lin = (row_chan.T @ self.coef.reshape(P, nseg * nsc, len(ROWS), N_X)).transpose(0, 3, 2, 1)
            c_lat = np.einsum("psgt,tc->ptcsg", self.latency, LATENCY_RESOURCE @ (ch * CHANNEL_TAKES_LATENCY[:, None]).T)
            object.__setattr__(self, lin, np.ascontiguousarray(c_lin).reshape(P, N_X, -1))
            object.__setattr__(self, lat, c_lat.reshape(P, nlat, -1))

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
    def num_scopes(self) -> int:
        return self.coef.shape[2]

    @property
    def num_cells(self) -> int:
        """(segment, scope) cells: scopes x (1 + decode segments)."""
        return self.coef.shape[1] * self.coef.shape[2]

    def take(self, p) -> "Terms":
        """The terms of batch shape p alone (P = 1), or of the shapes of an index array p."""
        from dataclasses import replace
        sel = np.atleast_1d(np.asarray(p)) if np.ndim(p) else slice(int(p), int(p) + 1)
        return replace(self, coef=self.coef[sel], latency=self.latency[sel], mem=self.mem[sel],
                       scope_mult=self.scope_mult[sel], phase_mult=self.phase_mult[sel],
                       res_lin=None, res_lat=None, chan_lin=None, chan_lat=None, serial_lin=None, serial_lat=None)


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


class TermsBuilder:
    """The arrays an engine fills for P batch shapes, with named accessors: ``put(seg,
    scope, component, resource, fraction, seconds)`` adds affine coefficients and
    ``put_lat(seg, scope, term_name, seconds)`` step terms. ``seg`` is ``PRE`` (the prefill)
    or ``DEC`` (every decode segment; values of shape (P,) or (P, segments))."""

    PRE, DEC = 0, slice(1, None)

    def __init__(self, P: int, num_segments: int, scopes: tuple):
        self.scopes = tuple(scopes)
        self.scope = {name: i for i, name in enumerate(self.scopes)}
        self.coef = np.zeros((P, num_segments, len(self.scopes), len(ROWS), N_X))
        self.lat = np.zeros((P, num_segments, len(self.scopes), len(LATENCY_TERMS)))

    @staticmethod
    def _fit(seg, value):
        v = np.asarray(value, dtype=float)
        return v[:, None] if (seg is TermsBuilder.DEC and v.ndim == 1) else v

    def _scopes(self, scope):
        """One scope's index, or a list of them (``scope`` a name or a tuple of names)."""
        return self.scope[scope] if isinstance(scope, str) else [self.scope[x] for x in scope]

    def put(self, seg, scope, comp: Component, res: Resource, idx: int, value) -> None:
        """Add ``value`` seconds to row (comp, res), fraction ``idx``, of ``scope`` (a name, or
        a tuple of names: the same value in each)."""
        v = self._fit(seg, value)
        sc = self._scopes(scope)
        if isinstance(sc, list):
            v = np.asarray(v)[..., None] if np.ndim(v) else v
        self.coef[:, seg, sc, ROW[(comp, res)], idx] += v

    def put_lat(self, seg, scope, term: str, value) -> None:
        v = self._fit(seg, value)
        sc = self._scopes(scope)
        if isinstance(sc, list):
            v = np.asarray(v)[..., None] if np.ndim(v) else v
        self.lat[:, seg, sc, LATENCY_INDEX[term]] += v

    def copy_scope(self, src: str, dst: str) -> None:
        self.coef[:, :, self.scope[dst]] = self.coef[:, :, self.scope[src]]
        self.lat[:, :, self.scope[dst]] = self.lat[:, :, self.scope[src]]

    def rows(self, scope: str, rows: list[int]) -> np.ndarray:
        return self.coef[:, :, self.scope[scope]][:, :, rows]


# ------------------------------------------------------------------ evaluation
@dataclass
class Evaluation:
    """Results for Q fraction vectors (arrays of length Q). Times are per block."""

    prefill_s: np.ndarray
    decode_s: np.ndarray
    unit: np.ndarray  # (Q, seg, scope) seconds per unit
    bounds: np.ndarray | None  # (Q, seg, scope, len(Bound)) channel / resource times (detail=True)
    mem: np.ndarray  # (Q, phase, tier) peak bytes
    channels: np.ndarray | None = None  # (Q, channel, seg, scope) channel times (detail=True)


def fraction_vector(policy) -> np.ndarray:
    return np.array([1.0, *policy.weights.as_tuple(), *policy.cache.as_tuple(), *policy.activations.as_tuple()])


def _bounds(chan: np.ndarray, res: np.ndarray, sync: bool = False) -> np.ndarray:
    """(Q, seg, scope, Bound): the transfer channels' times and the compute resources' (and
    the SYNC resource's when ``Terms.sync_bound``)."""
    out = np.zeros(chan.shape[:1] + chan.shape[2:] + (len(BOUNDS),))
    for name, b in CHANNEL_BOUND.items():
        out[..., BOUNDS.index(b)] = chan[:, CH[name]]
    for r, b in ((R.GPU, Bound.GPU), (R.CPU, Bound.CPU), (R.COLLECTIVE, Bound.COLLECTIVE), (R.HOST, Bound.HOST)):
        out[..., BOUNDS.index(b)] = res[:, RES[r]]
    if sync:
        out[..., BOUNDS.index(Bound.SYNC)] = res[:, RES[R.SYNC]]
    return out


def evaluate(terms: Terms, X: np.ndarray, overlap, detail: bool = False) -> Evaluation:
    """Times and memory for fraction vectors X (Q, 10).

    ``terms`` holds either one batch shape (broadcast over all Q vectors) or Q shapes (one
    per vector). Per cell: with ``overlap`` the max of the concurrent channels, else the sum
    of all resources. Per block: prefill = sum over scopes of multiplicity x unit; decode =
    sum over segments of steps x the same; both stretched by the pipeline. ``detail`` also
    returns every channel's and compute resource's time (``Evaluation.bounds``). Unit: s.
    """
    X = np.atleast_2d(np.asarray(X, dtype=float))
    Q = X.shape[0]
    P, nseg, nsc = terms.coef.shape[:3]
    trig = (X @ LATENCY_MASK.T > FRACTION_EPS).astype(float)  # (Q, latency terms)
    ov = np.broadcast_to(np.asarray(overlap, bool), (Q,))

    def apply(lin, lat):
        if P == 1:
            return X @ lin[0] + trig @ lat[0]
        return np.einsum("qx,qxk->qk", X, lin) + np.einsum("qt,qtk->qk", trig, lat)

    chan = apply(terms.chan_lin, terms.chan_lat).reshape(Q, len(CHANNELS), nseg, nsc)
    unit = chan.max(axis=1)
    res = apply(*terms.resource_terms()).reshape(Q, len(RESOURCES), nseg, nsc) if detail else None
    if not ov.all():
        serial = apply(terms.serial_lin, terms.serial_lat).reshape(Q, len(CHANNELS), nseg, nsc)
        unit = np.where(ov[:, None, None], unit, serial.max(axis=1))
        chan = np.where(ov[:, None, None, None], chan, serial)
    if P == 1:
        mem = X @ terms.mem[0].reshape(-1, N_X).T
    else:
        mem = np.einsum("qx,qfx->qf", X, terms.mem.reshape(P, -1, N_X))
    mult = terms.scope_mult if P > 1 else np.broadcast_to(terms.scope_mult, (Q, nseg, nsc))
    per_seg = np.einsum("qgs,qgs->qg", unit, mult)  # (Q, seg)
    pmult = terms.phase_mult if P > 1 else np.broadcast_to(terms.phase_mult, (Q, 2))
    bounds = _bounds(chan, res, terms.sync_bound) if detail else None
    return Evaluation(per_seg[:, 0] * pmult[:, 0], (per_seg[:, 1:] @ terms.seg_steps[1:]) * pmult[:, 1], unit, bounds,
                      mem.reshape(Q, 2, 3), chan if detail else None)


def cell_weights(terms: Terms) -> np.ndarray:
    """(P, cells): how often each (segment, scope) cell's time counts in one block's latency:
    steps x multiplicity of its scope x the pipeline stretch of its phase. Block latency =
    sum over cells of weight x cell time; the LP minimises exactly this."""
    base = terms.seg_steps[None, :, None] * terms.scope_mult  # (P, seg, scope)
    ph = np.ones(base.shape[1], int)
    ph[0] = 0
    return (base * terms.phase_mult[:, ph][:, :, None]).reshape(terms.coef.shape[0], -1)
