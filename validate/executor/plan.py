"""From a Policy to concrete placements and byte layouts (no torch).

Everything here goes through ``simulator.placement`` so the executor places exactly what
the planner assumed:

- decoder-layer weights: ``assign_tensors`` over each tensor's storage bytes
  (``TensorSpec.nbytes`` of the compute dtype, or of ``int4`` when compressing weights);
  every layer is split alike. Each tier's tensors of a layer are packed into one buffer
  (``Pack``), so loading a layer is one copy per source tier.
- LM head / embedding matrices: whole vocabulary (or position) rows by ``split_counts``.
- KV cache: the ``gpu_batch_size x num_kv_heads`` (sequence, kv head) rows of each GPU
  batch by ``split_counts``; activations: each GPU batch's sequences by ``split_counts``.
- Mixture of experts (Mixtral): a layer's tensors are placed in an order that interleaves the
  routed experts' tensors with the others (``simulator.moe.assign_layer_tensors``). The other
  tensors form the packs; each
  tier's share of the experts is an ``ExpertRegion``: expert e's tensors on that tier as
  one unit, the units back to back (each disk unit ``ALIGN``-aligned), so one expert's share
  is one copy and a tier's whole share is one copy too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.models import DTYPE_BYTES, ModelSpec
from simulator.moe import assign_layer_tensors, is_routed_expert
from simulator.placement import assign_tensors, realized_placement, split_counts
from simulator.policy import Placement, Policy, Workload
from simulator.vocabulary import TIERS, Tier
from validate.executor.errors import UnsupportedModelError
from validate.executor.quant import ROW, packed_row_bytes
from validate.executor.storage import ALIGN, round_up

PACK_ALIGN = 16  # byte alignment of each tensor inside a packed buffer


@dataclass(frozen=True)
class Layout:
    """How one tensor is stored: ``compressed`` matrices as (rows, G, 36) uint8 groups."""

    name: str
    shape: tuple[int, ...]
    compressed: bool
    nbytes: int  # bytes the executor stores
    placement_bytes: int  # the size the placement rule uses (TensorSpec.nbytes)
    offset: int = 0  # byte offset inside its tier's pack


@dataclass(frozen=True)
class Pack:
    """One tier's share of a layer: tensors at offsets in one buffer of ``nbytes``.

    Compressed matrices come first, back to back, so bytes ``[0, compressed_bytes)`` are
    ``compressed_groups`` whole 36-byte groups that one dequantization call expands; the
    other tensors follow at ``PACK_ALIGN``-aligned offsets.
    """

    layouts: tuple[Layout, ...]
    nbytes: int
    compressed_bytes: int = 0

    @property
    def compressed_groups(self) -> int:
        return self.compressed_bytes // ROW


@dataclass(frozen=True)
class ExpertRegion:
    """One tier's share of a layer's routed experts: ``units[e]`` (a Pack, possibly empty)
    at byte ``offsets[e]`` of a region of ``nbytes``."""

    units: tuple[Pack, ...]
    offsets: tuple[int, ...]
    nbytes: int

    def span(self, e: int) -> tuple[int, int]:
        """Bytes [lo, hi) of expert e's unit in the region."""
        return self.offsets[e], self.offsets[e] + self.units[e].nbytes


@dataclass(frozen=True)
class RowSplit:
    """A (rows, cols) head matrix split by whole rows: [0, gpu), [gpu, gpu + cpu), the rest on disk."""

    name: str
    rows: int
    cols: int
    counts: tuple[int, int, int]
    row_bytes: int
    compressed: bool


@dataclass(frozen=True)
class Plan:
    spec: ModelSpec
    policy: Policy
    workload: Workload
    num_sequences: int
    num_blocks: int
    max_tokens: int  # cache positions per sequence: prompt_len + gen_len - 1
    layer_tiers: tuple[Tier, ...]
    packs: dict  # Tier -> Pack
    lm_head: RowSplit
    embed: RowSplit | None  # the input embedding when untied (else the LM head serves)
    positions: RowSplit | None  # OPT's learned positions
    head_vectors: tuple[tuple[str, tuple[int, ...]], ...]
    cache_rows: tuple[int, int, int]  # rows of each GPU batch's cache per tier
    cache_row_bytes: int  # bytes of one (sequence, kv head) row for one token
    act_rows: tuple[int, int, int]  # sequences of each GPU batch per tier
    experts: dict | None = None  # Tier -> ExpertRegion (mixture of experts), else None

    # ----------------------------------------------------------------- sizes
    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.policy.dtype]

    def cache_slab_bytes(self, tier: Tier) -> int:
        """Bytes per token position of one tier's part of a GPU batch's cache (K rows, then V rows)."""
        n = 2 * self.cache_rows[TIERS.index(tier)] * self.cache_row_bytes
        return round_up(n) if tier is Tier.DISK and n else n

    def act_disk_region(self) -> int:
        return round_up(self.act_rows[2] * self.workload.prompt_len * self.spec.hidden_size * self.dtype_bytes)

    def head_matrices(self) -> list[RowSplit]:
        return [m for m in (self.lm_head, self.embed, self.positions) if m is not None]

    def disk_bytes(self) -> dict[str, int]:
        """Bytes of each offload file: weights, cache and activations (0 when unused)."""
        L, nb = self.spec.num_layers, self.policy.num_gpu_batches
        w = L * round_up(self.packs[Tier.DISK].nbytes) + sum(
            round_up(m.counts[2] * m.row_bytes) for m in self.head_matrices())
        if self.experts:
            w += L * self.experts[Tier.DISK].nbytes
        c = L * nb * self.max_tokens * self.cache_slab_bytes(Tier.DISK)
        a = nb * self.act_disk_region() if self.act_rows[2] else 0
        return {"weights": w, "cache": c, "activations": a}

    # ----------------------------------------------------------------- realized fractions
    def realized(self) -> dict[str, Placement]:
        """Fractions really placed: weights by placement bytes (layers and head matrices; head
        vectors stay on the GPU), cache by rows, activations by sequences."""
        L = self.spec.num_layers
        sizes = [x.placement_bytes * L for x in self.packs[Tier.GPU].layouts + self.packs[Tier.CPU].layouts
                 + self.packs[Tier.DISK].layouts]
        tiers = [Tier.GPU] * len(self.packs[Tier.GPU].layouts) + [Tier.CPU] * len(self.packs[Tier.CPU].layouts) \
            + [Tier.DISK] * len(self.packs[Tier.DISK].layouts)
        for tier, region in (self.experts or {}).items():
            for unit in region.units:
                sizes += [x.placement_bytes * L for x in unit.layouts]
                tiers += [tier] * len(unit.layouts)
        for m in self.head_matrices():
            for tier, n in zip(TIERS, m.counts):
                sizes.append(n * m.row_bytes)
                tiers.append(tier)
        e = self.dtype_bytes
        sizes.append(sum(math.prod(s) * e for _, s in self.head_vectors))
        tiers.append(Tier.GPU)
        return {
            "weights": realized_placement(sizes, tiers),
            "cache": Placement(*(n / sum(self.cache_rows) for n in self.cache_rows)),
            "activations": Placement(*(n / sum(self.act_rows) for n in self.act_rows)),
        }


def weight_layouts(spec: ModelSpec, policy: Policy) -> list[Layout]:
    """Storage of one layer's tensors in ``layer_tensors()`` order."""
    e = DTYPE_BYTES[policy.dtype]
    fmt = "int4" if policy.compress_weights else policy.dtype
    out = []
    for t in spec.layer_tensors():
        compressed = policy.compress_weights and t.is_matrix
        nbytes = t.shape[0] * packed_row_bytes(t.shape[1]) if compressed else t.numel * e
        out.append(Layout(t.name, t.shape, compressed, nbytes, t.nbytes(fmt)))
    return out


def pack(layouts: list[Layout]) -> Pack:
    placed, offset = [], 0
    for x in [x for x in layouts if x.compressed]:
        placed.append(Layout(x.name, x.shape, x.compressed, x.nbytes, x.placement_bytes, offset))
        offset += x.nbytes
    compressed = offset
    for x in [x for x in layouts if not x.compressed]:
        offset = round_up(offset, PACK_ALIGN)
        placed.append(Layout(x.name, x.shape, x.compressed, x.nbytes, x.placement_bytes, offset))
        offset += x.nbytes
    return Pack(tuple(placed), round_up(offset, PACK_ALIGN), compressed)


def make_plan(spec: ModelSpec, workload: Workload, policy: Policy) -> Plan:
    """The executor's placement of everything for this case (raises PolicyError on a bad case)."""
    check_experts(spec, policy)
    n = policy.num_sequences(workload)
    layouts = weight_layouts(spec, policy)
    experts = None
    if spec.is_moe:
        tiers = assign_layer_tensors([x.name for x in layouts], [x.placement_bytes for x in layouts], policy.weights)
        routed = [is_routed_expert(x.name) for x in layouts]
        packs = {tier: pack([x for x, t, r in zip(layouts, tiers, routed) if t is tier and not r]) for tier in TIERS}
        experts = {tier: expert_region(spec, [(x, t) for x, t, r in zip(layouts, tiers, routed) if r], tier)
                   for tier in TIERS}
    else:
        tiers = assign_tensors([x.placement_bytes for x in layouts], policy.weights)
        packs = {tier: pack([x for x, t in zip(layouts, tiers) if t is tier]) for tier in TIERS}
    e = DTYPE_BYTES[policy.dtype]
    cw = policy.compress_weights
    h = spec.hidden_size

    def rows(name: str, count: int) -> RowSplit:
        rb = packed_row_bytes(h) if cw else h * e
        return RowSplit(name, count, h, split_counts(count, policy.weights), rb, cw)

    lm = spec.lm_head_tensor()
    embed_name = "model.decoder.embed_tokens.weight" if spec.is_opt else "model.embed_tokens.weight"
    embed = None if spec.tie_word_embeddings else rows(embed_name, spec.vocab_size)
    positions = None
    vectors = []
    for t in spec.head_tensors():
        if t.name == "model.decoder.embed_positions.weight":
            positions = rows(t.name, t.shape[0])
        elif not t.is_matrix:
            vectors.append((t.name, t.shape))
    b = policy.gpu_batch_size
    row_bytes = packed_row_bytes(spec.head_dim) if policy.compress_cache else spec.head_dim * e
    return Plan(
        spec=spec, policy=policy, workload=workload, num_sequences=n, num_blocks=n // policy.block_size,
        max_tokens=workload.prompt_len + workload.gen_len - 1,
        layer_tiers=tuple(tiers), packs=packs, lm_head=rows(lm.name, spec.vocab_size), embed=embed,
        positions=positions, head_vectors=tuple(vectors),
        cache_rows=split_counts(b * spec.num_kv_heads, policy.cache), cache_row_bytes=row_bytes,
        act_rows=split_counts(b, policy.activations), experts=experts,
    )


def check_experts(spec: ModelSpec, policy: Policy) -> None:
    """What the executor's expert layer runs: Mixtral-style experts (top-k softmax routing,
    no shared experts, every layer with experts), uncompressed, on one replica's GPUs."""
    if not spec.is_moe:
        return
    if spec.family != "mixtral" or spec.shared_expert_dim or spec.dense_layers or spec.is_mla:
        raise UnsupportedModelError(f"model {spec.name}: the executor runs Mixtral-style experts only; "
                                    f"{spec.family} (shared experts, dense layers or MLA) is planned, not executed")
    if policy.compress_weights:
        raise UnsupportedModelError(f"--compress-weights: the executor does not compress the experts of "
                                    f"{spec.name}; run its weights uncompressed")
    if policy.expert_parallel:
        raise UnsupportedModelError("--expert-parallel: the executor runs every replica's experts on its own "
                                    "GPUs; expert parallelism is planned, not executed")


def expert_region(spec: ModelSpec, placed: list, tier: Tier) -> ExpertRegion:
    """One tier's ExpertRegion from the routed experts' (Layout, tier) in layer order."""
    align = ALIGN if tier is Tier.DISK else PACK_ALIGN
    units, offsets, offset = [], [], 0
    for e in range(spec.num_experts):
        marker = f".experts.{e}."
        unit = pack([x for x, t in placed if t is tier and marker in x.name])
        units.append(unit)
        offsets.append(offset)
        offset = round_up(offset + unit.nbytes, align)
    return ExpertRegion(tuple(units), tuple(offsets), offset)
