"""Partition layouts for inference (Pope et al., "Efficiently Scaling Transformer Inference",
arXiv 2211.05102, sections 3.1-3.3 and Appendix A): how one layer's weights, activations and
KV cache are split over the ``n`` chips of a tensor-parallel group, what each chip computes,
and the collectives that move data between them, costed per mesh axis on the profile's
interconnect.

Notation (the paper's, section 3.1): B sequences of L tokens (L = prompt length in the
prefill, 1 per decode step), E = hidden size, F = MLP width, ``e`` bytes per element. The
chips form a logical mesh X x Y x Z (``Mesh``; on a TPU v4 torus the physical sub-slice); a
subscript names the axes a dimension is split over (``BLE_xyz``: E split over all chips).

Layouts of the feed-forward (and, alike, the attention projections) - section 3.2:

- ``1d-ws`` (Megatron-LM, arXiv 1909.08053): weights E F_xyz; activations BLE whole on every
  chip; per layer one all-reduce of BLE after each of the attention and the MLP (two; one
  for a parallel attention+MLP block such as PaLM's). Per chip ``2 (n-1)/n x BLE e`` bytes
  per all-reduce: it does not shrink with n (section 3.2.1, Appendix A.2.1).
- ``2d-ws``: weights E_x F_yz (E over the "e axes", F over the others, X x YZ = n). Per matmul
  pair (an in-projection of width W_in and an out-projection reading W_mid):
  all-gather BLE/X over yz, reduce-scatter BL W_in/YZ over x, all-gather BL W_mid/YZ over x,
  reduce-scatter BLE/X over yz. For an MLP (W_in = W_mid = F) that is
  ``2 BLE/X + 2 BLF/YZ`` per chip (to the (K-1)/K factors), smallest at X = sqrt(n E / F):
  ``8 BLE / sqrt(n)`` when F = 4E (Appendix A.2.1) - communication that shrinks with the
  square root of the chips. The reduce-scatter over x scatters the batch, so attention runs
  on B/X sequences and heads/YZ per chip.
- ``wg-x`` / ``wg-xy`` / ``wg-xyz`` (weight-gathered, section 3.2.3): weights stored as in 2D,
  all-gathered over N = X, XY or XYZ chips before the layer (each chip receives the layer's
  ``W_layer N / n`` bytes); the batch is split N ways and the remaining n/N chips run 1D
  over the other axes on their B/N sequences. Per chip ``W_layer N/n + 2 BLE/N`` (to the
  (K-1)/K factors), smallest at N = sqrt(BLn/F): ``4 E sqrt(BLF/n)`` bytes per element
  (Appendix A.2.2). Weight-gathered wins once BL is large (the prefill of a large batch).

Attention (section 3.3): ``heads`` splits the KV cache over heads - with multi-query (or
grouped-query) attention its single head (or few) is then replicated on every chip;
``batch`` splits it over sequences, so a chip holds only its own sequences' cache (KV bytes
per chip / n), at the price of an all-to-all of the queries before attention and of the
outputs after it (and of K and V when they have several heads). When prefill and decode
shard the cache differently, the prompt's K/V is all-to-all'ed once after the prefill.

Collectives (Appendix A.1, alpha-beta): over a group of K chips with per-chip ring bandwidth
beta and a per-step latency alpha,

    all-gather of D bytes gathered per chip:    (K-1) alpha + (K-1)/K x D / beta
    reduce-scatter of D bytes per chip:         (K-1) alpha + (K-1)/K x D / beta
    all-reduce (reduce-scatter + all-gather):   2 (K-1) alpha + 2 (K-1)/K x D / beta
    all-to-all of D bytes per chip:             switch: (K-1) alpha + (K-1)/K x D / beta;
                                                torus axis of k chips: (k-1) alpha + D k / (8 W)
                                                (wraparound; D k / (4 W) on a line), axis by axis

On a switch (GPUs) beta is the profile's busbw of NVLink/NVSwitch when the group lies in one
node, of the network otherwise (nccl-tests' convention, ``simulator.parallel``). On a torus
a group spanning axes A has ``beta = sum_a w_a``, each axis a bidirectional ring of
``w_a = 2 W`` (W = one link, one way) when it wraps around, else ``W``; steps
``sum_a (k_a - 1)``. The all-to-all moves D/k to each of k-1 chips along a ring of 2k
directed links at mean distance k/4: ``D k / (8 W)``.

Choices this model makes (and the paper's analysis does not):

- each collective gets the links of the axes it spans, not the chip's whole bandwidth (the
  paper's Appendix A charges every collective the per-chip 270 GB/s): a 2D layout's
  collectives over one axis of a 4x4x4 torus get a third of it, so 2D's gain over 1D at 64
  chips is smaller here than the square-root law alone says;
- collectives run after the compute they feed, in the engine's compute chain: the looped
  collective einsums of section 3.5, which overlap them, are not modelled (conservative);
- a weight-gathered layout gathers one matrix at a time (its memory) but moves the whole
  layer per layer (its time).

Units: bytes, seconds, bytes/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from simulator.errors import PolicyError
from simulator.hardware import HardwareProfile
from simulator.models import DTYPE_BYTES, ModelSpec
from simulator.parallel import group_link
from simulator.ops import (decode_attention_time_s, kv_share, layer_elementwise_time_s, layer_gemm_splits,
                           layer_matmul_time_s, prefill_attention_time_s, split_gemm)
from simulator.vocabulary import AttentionSharding, Collective, PartitionLayout, Phase, Topology as TopologyKind

AXES = ("x", "y", "z")
WS_1D, WS_2D = PartitionLayout.WS_1D, PartitionLayout.WS_2D
GATHER_AXES = {PartitionLayout.WG_X: ("x",), PartitionLayout.WG_XY: ("x", "y"), PartitionLayout.WG_XYZ: AXES}
DEFAULT = (WS_1D.value, WS_1D.value, AttentionSharding.HEADS.value)  # (prefill, decode, attention): Megatron
WEIGHT_GATHER = "layer weights"


def parse_layout(value, flag: str) -> PartitionLayout:
    try:
        return PartitionLayout(value)
    except ValueError:
        raise PolicyError(f"{flag}: {value!r} is not a partition layout (allowed: "
                          f"{', '.join(x.value for x in PartitionLayout)})") from None


def parse_attention(value, flag: str = "--attention-layout") -> AttentionSharding:
    try:
        return AttentionSharding(value)
    except ValueError:
        raise PolicyError(f"{flag}: {value!r} is not an attention layout (allowed: "
                          f"{', '.join(x.value for x in AttentionSharding)})") from None


# ------------------------------------------------------------------ mesh and topology
@dataclass(frozen=True)
class Mesh:
    """The chips of one tensor-parallel group as three logical axes (x, y, z); in rank order
    z varies fastest (consecutive ranks share a node first)."""

    shape: tuple[int, int, int]

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    def size(self, axes) -> int:
        return math.prod(self.shape[AXES.index(a)] for a in axes)

    def live(self, axes) -> tuple[str, ...]:
        """The axes of ``axes`` with more than one chip."""
        return tuple(a for a in axes if self.shape[AXES.index(a)] > 1)

    def __str__(self) -> str:
        return "x".join(map(str, self.shape))


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


@dataclass(frozen=True)
class Group:
    """The chips a collective runs over: mesh axes ``axes`` (``sizes`` chips each, ``size``
    in all), per-chip ring bandwidth ``bytes_per_s``, ``steps`` latency steps of
    ``latency_s`` for an all-gather, and the all-to-all cost ``a2a_s_per_byte`` (s per byte
    of D, latency apart)."""

    axes: tuple[str, ...]
    sizes: tuple[int, ...]
    size: int
    bytes_per_s: float
    latency_s: float
    steps: int
    a2a_s_per_byte: float
    a2a_steps: int


@dataclass(frozen=True)
class Topology:
    """The interconnect of a profile as the layouts see it (``HardwareProfile.interconnect``)."""

    kind: TopologyKind
    gpus_per_node: int = 1
    intra_bytes_per_s: float | None = None
    intra_latency_s: float = 0.0
    inter_bytes_per_s: float | None = None
    inter_latency_s: float = 0.0
    torus_shape: tuple = ()
    wraparound: bool = False
    link_bytes_per_s: float = 0.0
    link_latency_s: float = 0.0
    name: str = ""

    @classmethod
    def of(cls, hw: HardwareProfile) -> "Topology":
        ic = hw.interconnect
        if ic.topology == TopologyKind.TORUS.value:
            return cls(TopologyKind.TORUS, torus_shape=ic.torus_shape, wraparound=ic.torus_wraparound,
                       link_bytes_per_s=ic.ici_link_bytes_per_s, link_latency_s=ic.ici_link_latency_s, name=hw.name)
        return cls(TopologyKind.SWITCH, gpus_per_node=max(1, hw.gpu_count), intra_bytes_per_s=ic.intra_node_bytes_per_s,
                   intra_latency_s=ic.intra_node_latency_s, inter_bytes_per_s=ic.inter_node_bytes_per_s,
                   inter_latency_s=ic.inter_node_latency_s, name=hw.name)

    def mesh(self, n: int) -> Mesh:
        """The mesh of n chips: on a torus the near-cubic sub-slice that fits the physical
        one (64 of 4x4x4: 4x4x4; 16: 4x2x2); on a switch a near-cubic factorization filled
        from z (the innermost, in-node axis). Prime factors go, largest first, to the
        smallest axis that can take them."""
        sizes = [1, 1, 1]
        order = (0, 1, 2) if self.kind is TopologyKind.TORUS else (2, 1, 0)
        for f in sorted(_prime_factors(n), reverse=True):
            fits = [i for i in order if self.kind is not TopologyKind.TORUS or sizes[i] * f <= self.torus_shape[i]]
            if not fits:
                raise PolicyError(f"--tp {n}: {n} chips are not a sub-slice of {self.name}'s "
                                  f"{'x'.join(map(str, self.torus_shape))} torus")
            i = min(fits, key=lambda k: (sizes[k], fits.index(k)))
            sizes[i] *= f
        return Mesh(tuple(sizes))

    def group(self, mesh: Mesh, axes) -> Group:
        """The collective group over ``axes`` of ``mesh`` (axes of one chip drop out)."""
        axes = mesh.live(axes)
        sizes = tuple(mesh.shape[AXES.index(a)] for a in axes)
        K = math.prod(sizes)
        if K == 1:
            return Group((), (), 1, 1.0, 0.0, 0, 0.0, 0)
        if self.kind is TopologyKind.TORUS:
            W = self.link_bytes_per_s
            wraps = [self.wraparound and k >= 3 and k == self.torus_shape[AXES.index(a)] for a, k in zip(axes, sizes)]
            beta = sum(2 * W if w else W for w in wraps)
            a2a = sum(k / ((8 if w else 4) * W) for k, w in zip(sizes, wraps))
            steps = sum(k - 1 for k in sizes)
            return Group(axes, sizes, K, beta, self.link_latency_s, steps, a2a, steps)
        bw, lat = self._switch_link(mesh, axes, K)
        return Group(axes, sizes, K, bw, lat, K - 1, (K - 1) / K / bw, K - 1)

    def _switch_link(self, mesh: Mesh, axes, K: int) -> tuple[float, float]:
        """(busbw, latency) of a GPU group: NVLink/NVSwitch when all its ranks share a node
        (ranks numbered with z fastest), else the network."""
        ranks = np.arange(mesh.n).reshape(mesh.shape)
        inside = [AXES.index(a) for a in axes]
        other = [i for i in range(3) if i not in inside]
        groups = ranks.transpose(other + inside).reshape(-1, K) // self.gpus_per_node
        return group_link(self.name, bool((groups == groups[:, :1]).all()),
                          (self.intra_bytes_per_s, self.intra_latency_s),
                          (self.inter_bytes_per_s, self.inter_latency_s), f"a collective over {K} GPUs")


def collective_time_s(kind: Collective, nbytes, group: Group):
    """Alpha-beta time of one collective (module docstring; Appendix A.1 of arXiv 2211.05102).
    ``nbytes``: the gathered bytes per chip (all-gather), the bytes per chip before the
    reduction (reduce-scatter, all-reduce) or sent by each chip (all-to-all); may be an
    array. Unit: s."""
    nbytes = np.asarray(nbytes, dtype=float)
    K = group.size
    if K <= 1:
        return 0.0 * nbytes
    ring = (K - 1) / K * nbytes / group.bytes_per_s
    if kind in (Collective.ALL_GATHER, Collective.REDUCE_SCATTER):
        return group.steps * group.latency_s + ring
    if kind is Collective.ALL_REDUCE:
        return 2 * group.steps * group.latency_s + 2 * ring
    if kind is Collective.ALL_TO_ALL:
        return group.a2a_steps * group.latency_s + nbytes * group.a2a_s_per_byte
    raise AssertionError(kind)


@dataclass(frozen=True)
class CollectiveOp:
    """One collective of a layer: its kind, the mesh axes it spans, the bytes per chip (see
    ``collective_time_s``) and what it moves. ``group_size`` caps the chips of the group (an
    all-to-all among a part of the axes' chips)."""

    kind: Collective
    axes: tuple[str, ...]
    nbytes: object
    what: str
    group_size: int = 0


# ------------------------------------------------------------------ a layer in one phase
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _ceil(a, b):
    return np.ceil(np.asarray(a, dtype=float) / b)


@dataclass(frozen=True)
class PhasePlan:
    """One phase's layout on the mesh: what each chip of the group computes per layer and
    which collectives it takes part in. ``attention`` is how this phase shards attention;
    ``cache`` how the decode phase shards the stored cache (they differ only in the
    prefill, which then re-shards the prompt's K/V)."""

    model: ModelSpec
    layout: PartitionLayout
    attention: AttentionSharding
    mesh: Mesh
    topology: Topology
    e_axes: tuple[str, ...] = ()  # 2d-ws: the axes E is split over

    @property
    def n(self) -> int:
        return self.mesh.n

    @property
    def gather_axes(self) -> tuple[str, ...]:
        return GATHER_AXES.get(self.layout, ())

    @property
    def gather(self) -> int:
        """N: chips each layer's weights are all-gathered over (1 when weight-stationary)."""
        return self.mesh.size(self.gather_axes)

    @property
    def rest_axes(self) -> tuple[str, ...]:
        """The axes a weight-gathered layout runs 1D over; 2D's F axes; 1D's every axis."""
        if self.layout is WS_2D:
            return tuple(a for a in AXES if a not in self.e_axes)
        return tuple(a for a in AXES if a not in self.gather_axes)

    @property
    def batch_base(self) -> int:
        """Batch shards before attention: N (weight-gathered), X (2D: its reduce-scatter
        over x scatters the batch), 1 (1D)."""
        return self.mesh.size(self.e_axes) if self.layout is WS_2D else self.gather

    def attention_split(self, b):
        """(batch shards, head shards) of attention per element of ``b`` (sequences of the
        GPU batch): heads - (base, n / base); batch - the remaining n / base chips also split
        the sequences, as many of them as divide n / base and do not exceed the sequences
        (arXiv 2211.05102 Appendix D: batch-sharded attention needs B >= the chips)."""
        b = np.atleast_1d(np.asarray(b, dtype=float))
        base = self.batch_base
        r = self.n // base
        k = np.ones_like(b)
        if self.attention is AttentionSharding.BATCH:
            per = np.maximum(1.0, np.floor(b / base))
            for d in _divisors(r):
                k = np.where(d <= per, float(d), k)
        return base * k, r / k

    def cache_share(self, b):
        """K+V bytes a chip stores per token and layer, as a share of ``kv_bytes_per_token``,
        averaged over the b sequences: ``ceil(b / batch shards) / b x kv_share(head shards)``."""
        b = np.atleast_1d(np.asarray(b, dtype=float))
        kb, kh = self.attention_split(b)
        heads = np.array([kv_share(self.model, int(h)) for h in kh])
        return _ceil(b, kb) / b * heads

    # -------------------------------------------------------------- compute per chip
    def gemm_shapes(self, b, tokens: int):
        """(m, k, n, count) of each GEMM one chip runs per layer: 1D - m = b L tokens, weights
        split n ways (Megatron's col/row); 2D - m = b L, (k / X, n / YZ) for the
        in-projections and (k / YZ, n / X) for the out-projections; weight-gathered - m =
        ceil(b / N) L, 1D over the n / N chips left."""
        m = np.asarray(b, dtype=float) * tokens
        out = []
        if self.layout is WS_2D:
            X, YZ = self.mesh.size(self.e_axes), self.mesh.size(self.rest_axes)
            for k, n_, c, sp in layer_gemm_splits(self.model):
                if sp == "col":
                    out.append((m, -(-k // X), -(-n_ // YZ), c))
                else:
                    out.append((m, -(-k // YZ), -(-n_ // X), c))
            return out
        r = self.n // self.gather
        m = _ceil(b, self.gather) * tokens
        return [(m, *split_gemm(k, n_, sp, r), c) for k, n_, c, sp in layer_gemm_splits(self.model)]

    def matmul_time_s(self, dev, b, tokens: int, dtype: str, staged: bool = False, ep=1):
        """The layer's GEMMs on one chip (``ComputeDevice.matmul_time_s`` per shape); 1D is
        ``ops.layer_matmul_time_s`` at tp = n (with a mixture of experts' routed experts over
        ``ep`` expert-parallel replicas; ``partition`` refuses other layouts for MoE). Unit: s."""
        if self.layout is WS_1D:
            return layer_matmul_time_s(self.model, dev, np.asarray(b, dtype=float) * tokens, dtype, self.n, staged,
                                       ep)
        e = DTYPE_BYTES[dtype]
        return sum(c * dev.matmul_time_s(m, k, n_, dtype, e, staged) for m, k, n_, c in self.gemm_shapes(b, tokens))

    def prefill_attention_time_s(self, dev, b, s: int, dtype: str):
        """Causal attention of a chip's ceil(b / batch shards) sequences over its heads
        (``ops.prefill_attention_time_s`` at tp = head shards). Unit: s."""
        kb, kh = self.attention_split(b)
        return self._per_split(lambda bb, h: prefill_attention_time_s(self.model, dev, bb, s, dtype, h), b, kb, kh)

    def decode_attention_time_s(self, dev, b, ctx, dtype: str, ops: int = 1, compute_dtype=None):
        """One decode step's attention of a chip's sequences over ``ctx`` keys (b: (P, 1)
        against ctx (1, S), as the engines call it). Unit: s."""
        bb = np.asarray(b, dtype=float)
        kb, kh = self.attention_split(bb.reshape(-1))
        shape = bb.shape

        def one(bc, h):
            return decode_attention_time_s(self.model, dev, bc.reshape(-1, *shape[1:]), ctx, dtype, ops,
                                           compute_dtype, tp=h)
        return self._per_split(one, bb.reshape(-1), kb, kh)

    @staticmethod
    def _per_split(fn, b, kb, kh):
        b = np.atleast_1d(np.asarray(b, dtype=float))
        out = None
        for h in np.unique(kh):
            sel = kh == h
            t = fn(_ceil(b[sel], kb[sel]), int(h))
            if out is None:
                out = np.zeros((len(b),) + np.shape(t)[1:])
            out[sel] = t
        return out

    def elementwise_time_s(self, dev, b, tokens: int, dtype: str, kernels):
        """Norms, activation, residuals, rotary, cache writes (``ops.layer_elementwise_time_s``)
        on a chip's share: 1D - b L tokens, the F side split n ways; 2D - every activation is
        split n ways (BLE_xyz, BLF_xyz); weight-gathered - ceil(b / N) L tokens, 1D over the rest."""
        m = np.asarray(b, dtype=float) * tokens
        if self.layout is WS_2D:
            return layer_elementwise_time_s(self.model, dev, m / self.n, dtype, 1, kernels)
        r = self.n // self.gather
        return layer_elementwise_time_s(self.model, dev, _ceil(b, self.gather) * tokens, dtype, r, kernels)

    # -------------------------------------------------------------- communication
    def _pairs(self) -> list[tuple[str, int, int]]:
        """(what, W_in, W_mid) of the layer's matmul pairs: attention (q, k, v in; q out) and
        MLP (F, or 2F gated, in; F out) - or one pair of their sums for a parallel block."""
        m = self.model
        kv = 2 * m.kv_dim
        gated = 1 if m.is_opt else 2
        if m.parallel_block:
            return [("attention+mlp", m.q_dim + kv + gated * m.ffn_dim, m.q_dim + m.ffn_dim)]
        return [("attention", m.q_dim + kv, m.q_dim), ("mlp", gated * m.ffn_dim, m.ffn_dim)]

    def collectives(self, b, tokens: int, e: int, layer_bytes: float = 0.0,
                    prefill_of: "PhasePlan | None" = None) -> list[CollectiveOp]:
        """The collectives of one layer for a GPU batch of b sequences of ``tokens`` tokens
        (module docstring). ``layer_bytes``: the layer's weights one chip stores (what a
        weight-gathered layout all-gathers N of); ``prefill_of``: in the prefill, the decode
        phase's plan, whose cache sharding the prompt's K/V is re-sharded to. Bytes per chip."""
        m = self.model
        b = np.atleast_1d(np.asarray(b, dtype=float))
        E = m.hidden_size
        ops: list[CollectiveOp] = []
        if self.layout is WS_2D:
            X, YZ = self.mesh.size(self.e_axes), self.mesh.size(self.rest_axes)
            T = b * tokens
            f, x = self.rest_axes, self.e_axes
            for what, w_in, w_mid in self._pairs():
                ops += [CollectiveOp(Collective.ALL_GATHER, f, T * E / X * e, f"{what} input BLE/X"),
                        CollectiveOp(Collective.REDUCE_SCATTER, x, T * w_in / YZ * e, f"{what} in-projection"),
                        CollectiveOp(Collective.ALL_GATHER, x, T * w_mid / YZ * e, f"{what} out-projection input"),
                        CollectiveOp(Collective.REDUCE_SCATTER, f, T * E / X * e, f"{what} output BLE/X")]
        else:
            N = self.gather
            if N > 1:
                ops.append(CollectiveOp(Collective.ALL_GATHER, self.gather_axes, np.full_like(b, layer_bytes * N),
                                        WEIGHT_GATHER))
            Tg = _ceil(b, N) * tokens
            for what, _, _ in self._pairs():
                ops.append(CollectiveOp(Collective.ALL_REDUCE, self.rest_axes, Tg * E * e, f"{what} output"))
        kb, kh = self.attention_split(b)
        k_in = kb / self.batch_base
        if (k_in > 1).any():
            r = self.n // self.batch_base
            Tg = _ceil(b, self.batch_base) * tokens
            on = (k_in > 1).astype(float)
            group = int(k_in.max())
            q = on * Tg * m.q_dim / r * e
            ops += [CollectiveOp(Collective.ALL_TO_ALL, self.rest_axes, q, "queries to batch shards", group),
                    CollectiveOp(Collective.ALL_TO_ALL, self.rest_axes, q, "attention outputs back", group)]
            if m.num_kv_heads > 1:
                kv = on * Tg * 2 * m.kv_dim * kv_share(m, r) * e
                ops.append(CollectiveOp(Collective.ALL_TO_ALL, self.rest_axes, kv, "new K/V to batch shards", group))
        if prefill_of is not None:
            kb_d, kh_d = prefill_of.attention_split(b)
            moved = ((kb_d != kb) | (kh_d != kh)).astype(float)
            if moved.any():
                heads = np.array([kv_share(m, int(h)) for h in kh])
                cache = moved * _ceil(b, kb) * tokens * 2 * m.kv_dim * e * heads
                ops.append(CollectiveOp(Collective.ALL_TO_ALL, AXES, cache, "prompt K/V to the decode sharding"))
        return ops

    def time_s(self, ops: list[CollectiveOp], latency: bool = True):
        """Sum of ``collective_time_s`` over ``ops`` (``latency=False``: bandwidth terms only). Unit: s."""
        total = 0.0
        for op in ops:
            g = self.topology.group(self.mesh, op.axes)
            if op.group_size and op.group_size < g.size:
                g = _capped(g, op.group_size)
            if not latency:
                g = Group(g.axes, g.sizes, g.size, g.bytes_per_s, 0.0, g.steps, g.a2a_s_per_byte, g.a2a_steps)
            total = total + collective_time_s(op.kind, op.nbytes, g)
        return total

    def comm_time_s(self, b, tokens: int, e: int, layer_bytes: float = 0.0, prefill_of=None, nb=1):
        """One layer's collectives for ``nb`` GPU batches of b sequences: the activations'
        once per GPU batch, a weight-gathered layout's weight all-gather once (the zig-zag
        block reuses a layer's weights for every GPU batch). Unit: s."""
        ops = self.collectives(b, tokens, e, layer_bytes, prefill_of)
        weights = [op for op in ops if op.what == WEIGHT_GATHER]
        rest = [op for op in ops if op.what != WEIGHT_GATHER]
        return np.asarray(nb, dtype=float) * self.time_s(rest) + self.time_s(weights)

    def hidden_share(self, b):
        """Share of a GPU batch's hidden states (B L E) one chip holds between layers: 1D -
        all of them (replicated); 2D - 1/n (BLE_xyz); weight-gathered - its ceil(b / N) sequences."""
        b = np.atleast_1d(np.asarray(b, dtype=float))
        if self.layout is WS_2D:
            return np.full_like(b, 1.0 / self.n)
        return _ceil(b, self.gather) / b

    def in_flight_bytes(self, b, tokens: int, e: int):
        """Activations one chip holds while it computes a layer (the llmsim executor's: hidden
        in and out and the residual, q and the attention output, new K and V, the MLP
        intermediate - SwiGLU's three, OPT's one): 1D - ``b L (3E + 2q/n + 2kv_n + M/n)``;
        2D - the gathered ``BLE_x`` and the in-projections' partial sums over YZ chips,
        ``b L (3E/X + (2q + 2kv + M)/YZ)``; weight-gathered - 1D over the n/N chips left on
        ``ceil(b/N) L`` tokens. Unit: bytes."""
        m = self.model
        M = m.ffn_dim * (1 if m.is_opt else 3)
        b = np.atleast_1d(np.asarray(b, dtype=float))
        if self.layout is WS_2D:
            X, YZ = self.mesh.size(self.e_axes), self.mesh.size(self.rest_axes)
            return b * tokens * (3 * m.hidden_size / X + (2 * m.q_dim + 2 * m.kv_dim + M) / YZ) * e
        r = self.n // self.gather
        kv = m.kv_dim * kv_share(m, r)
        return _ceil(b, self.gather) * tokens * (3 * m.hidden_size + (2 * m.q_dim + M) / r + 2 * kv) * e

    def gathered_bytes(self, e: int) -> float:
        """Extra GPU memory of a weight-gathered layout: each weight is all-gathered just
        before its matmul (the looped collective einsums of section 3.5), so a chip holds the
        other N - 1 shards of the layer's largest matrix: ``(N - 1) x max |W| e / n``. Unit: bytes."""
        largest = max(t.numel for t in self.model.layer_tensors() if t.is_matrix)
        return (self.gather - 1) * largest * e / self.n


def _capped(g: Group, k: int) -> Group:
    """The group of k of g's chips (an all-to-all among part of an axis group): the same
    links, k chips."""
    scale = k / g.size
    return Group(g.axes, g.sizes, k, g.bytes_per_s, g.latency_s, max(1, round(g.steps * scale)),
                 g.a2a_s_per_byte * scale, max(1, round(g.a2a_steps * scale)))


# ------------------------------------------------------------------ the partition of a run
@dataclass(frozen=True)
class Partition:
    """The layouts of one run: per phase (prefill, decode) and the attention sharding, on the
    mesh of its tensor-parallel group. ``phase(Phase.PREFILL)`` is the prefill's plan."""

    model: ModelSpec
    prefill: PartitionLayout
    decode: PartitionLayout
    attention: AttentionSharding
    mesh: Mesh
    topology: Topology
    e_axes: tuple[str, ...] = ()

    def phase(self, phase: Phase) -> PhasePlan:
        layout = self.prefill if Phase(phase) is Phase.PREFILL else self.decode
        return PhasePlan(self.model, layout, self.attention, self.mesh, self.topology, self.e_axes)

    @property
    def names(self) -> tuple[str, str, str]:
        return self.prefill.value, self.decode.value, self.attention.value

    def describe(self) -> dict:
        return {"prefill": self.prefill.value, "decode": self.decode.value, "attention": self.attention.value,
                "mesh": str(self.mesh), "topology": self.topology.kind.value,
                "e_axes": "".join(self.e_axes) if WS_2D in (self.prefill, self.decode) else ""}


def partition(model: ModelSpec, hw: HardwareProfile, tp: int, names=DEFAULT) -> Partition:
    """The ``Partition`` of names (prefill layout, decode layout, attention sharding) for a
    tensor-parallel group of ``tp`` chips on ``hw``. 2D's E axes are the split of the mesh
    whose per-token 2D communication (bandwidth terms) is least: X ~ sqrt(n E / F) on a
    uniform network (Appendix A.2.1), the in-node axes on GPU nodes. Raises PolicyError for
    a layout the model or mesh cannot take."""
    pre, dec = parse_layout(names[0], "--prefill-layout"), parse_layout(names[1], "--decode-layout")
    att = parse_attention(names[2])
    topo = Topology.of(hw)
    mesh = topo.mesh(tp)
    if (pre, dec, att) != tuple(map(_enum_of, DEFAULT)) and model.is_moe:
        raise PolicyError(f"{model.name}: partition layouts other than 1d-ws with heads are not modelled for "
                          "mixture-of-experts models")
    e_axes: tuple[str, ...] = ()
    if WS_2D in (pre, dec):
        live = mesh.live(AXES)
        if len(live) < 2:
            raise PolicyError(f"--tp {tp}: 2d-ws needs two mesh axes of more than one chip, the mesh of {tp} "
                              f"on {hw.name} is {mesh}")
        best = None
        for r in range(1, len(live)):
            for ex in combinations(live, r):
                plan = PhasePlan(model, WS_2D, att, mesh, topo, ex)
                t = float(np.max(plan.time_s(plan.collectives(np.array([1.0]), 1, 2), latency=False)))
                if best is None or t < best[0] - 1e-18:
                    best = (t, ex)
        e_axes = best[1]
    for lay in (pre, dec):
        if lay in GATHER_AXES and len(mesh.live(GATHER_AXES[lay])) == 0:
            raise PolicyError(f"--tp {tp}: {lay.value} gathers over axes {''.join(GATHER_AXES[lay])} of the mesh "
                              f"{mesh}, which hold one chip")
    return Partition(model, pre, dec, att, mesh, topo, e_axes)


def megatron_plan(model: ModelSpec, tp: int) -> PhasePlan:
    """Megatron's 1D split with heads-sharded attention on tp chips: the plan of a run
    without a ``Partition`` (its collectives stay ``simulator.parallel``'s all-reduces)."""
    return PhasePlan(model, WS_1D, AttentionSharding.HEADS, Mesh((1, 1, tp)), Topology(TopologyKind.SWITCH))


def _enum_of(value: str):
    try:
        return PartitionLayout(value)
    except ValueError:
        return AttentionSharding(value)


def is_default(names) -> bool:
    return names is None or tuple(names) == DEFAULT


# ------------------------------------------------------------------ choosing the layouts of a plan
PARTITION_BATCH_SIZES = (384, 512, 768, 1024)  # beyond the search's batch sizes: the paper's large decode batches


@dataclass
class Choice:
    """The partition layouts chosen for a plan: the policy and its estimate, whether they beat
    the plan they started from, and every (layout, phase) evaluated at the chosen batch shape
    and parallel degrees (``rows``: layout, attention, phase, time_s, feasible)."""

    policy: object
    estimate: object
    improved: bool
    rows: list
    mesh: str = ""

    def describe(self) -> dict:
        p = self.policy
        if p is None:
            return {"improved": False, "evaluated": self.rows}
        return {"prefill": p.prefill_layout, "decode": p.decode_layout, "attention": p.attention_layout,
                "tp": p.tp, "pp": p.pp, "dp": p.dp, "gpu_batch_size": p.gpu_batch_size, "mesh": self.mesh,
                "improved": self.improved, "evaluated": self.rows}


def choose(model: ModelSpec, hw: HardwareProfile, workload, policy, est, engine, objective: str = "throughput",
           max_latency_s: float | None = None, min_throughput_tok_s: float | None = None, gpus: int = 1,
           batch_sizes: tuple = ()) -> Choice | None:
    """The layout of each phase (and the attention sharding) for a GPU-resident plan on
    ``gpus`` chips: for the plan's (tp, pp, dp) and for all chips in one tensor-parallel
    group, each attention sharding and each batch size of ``batch_sizes`` (the search adds
    ``PARTITION_BATCH_SIZES`` to its default sizes: batch-sharded multi-query caches fit far
    larger batches),
    every layout is estimated in both phases; the prefill takes the layout of least prefill
    time, the decode the one of least decode time (the phases are separate in time: section
    3 of arXiv 2211.05102 chooses them apart), and the combination is estimated again (its
    memory, the re-sharding of the prompt's cache). The best feasible combination under the
    objective and bounds replaces the plan when it beats it. ``None`` when the engine takes
    no layouts. Pure."""
    from simulator.cost import estimate as estimate_of
    from simulator.errors import LlmsimError
    from simulator.policy import Placement, Policy

    if not getattr(engine, "partition_layouts", False):
        return None
    dtype = policy.dtype if policy is not None else model.dtype
    shapes = {(policy.tp, policy.pp, policy.dp)} if policy is not None else set()
    if model.num_heads % gpus == 0:
        shapes.add((gpus, 1, 1))
    shapes = sorted(s for s in shapes if s[0] > 1)

    def score(e) -> float:
        if e is None or not e.feasible:
            return -math.inf
        if max_latency_s is not None and e.total_latency_s > max_latency_s * (1 + 1e-9):
            return -math.inf
        if min_throughput_tok_s is not None and e.throughput_tok_s < min_throughput_tok_s * (1 - 1e-9):
            return -math.inf
        return e.throughput_tok_s if objective == "throughput" else -e.total_latency_s

    def run(pol):
        try:
            return estimate_of(model, hw, workload, pol, engine)
        except LlmsimError:
            return None

    base = score(est)
    best: tuple | None = None
    for tp, pp, dp in shapes:
        for att in AttentionSharding:
            for b in sorted(set(batch_sizes)):
                per = {}
                for lay in PartitionLayout:
                    pol = Policy(gpu_batch_size=b, weights=Placement(), cache=Placement(), activations=Placement(),
                                 dtype=dtype, tp=tp, pp=pp, dp=dp, prefill_layout=lay.value, decode_layout=lay.value,
                                 attention_layout=att.value)
                    e = run(pol)
                    if e is not None:
                        per[lay] = e
                if not per:
                    continue
                pre = min(per, key=lambda k: per[k].prefill_latency_s)
                dec = min(per, key=lambda k: per[k].decode_latency_s)
                pol = Policy(gpu_batch_size=b, dtype=dtype, tp=tp, pp=pp, dp=dp, prefill_layout=pre.value,
                             decode_layout=dec.value, attention_layout=att.value)
                e = per[pre] if pre is dec else run(pol)
                sc = score(e)
                if sc > -math.inf and (best is None or sc > best[0]):
                    rows = [{"layout": k.value, "attention": att.value, "phase": ph, "time_s": t,
                             "feasible": bool(v.feasible)}
                            for k, v in per.items()
                            for ph, t in (("prefill", v.prefill_latency_s), ("decode", v.decode_latency_s))]
                    best = (sc, pol, e, rows)
    topo = Topology.of(hw)

    def mesh_of(p) -> str:
        return str(topo.mesh(p.tp)) if p is not None else ""

    if best is None:
        return Choice(policy, est, False, [], mesh_of(policy))
    sc, pol, e, rows = best
    if sc > base + 1e-9 * abs(base):
        return Choice(pol, e, True, rows, mesh_of(pol))
    return Choice(policy, est, False, rows, mesh_of(policy))
