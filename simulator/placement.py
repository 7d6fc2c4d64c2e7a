"""From placement fractions to what an executor can really place.

Real placements move whole tensors or whole rows; the cost model takes continuous
fractions. These pure functions are shared by the search (to round its LP solution to an
executable policy) and the executor (to place tensors), so both agree exactly.

- Decoder-layer weights: whole tensors, in ``ModelSpec.layer_tensors()`` order, by the
  midpoint rule (FlexGen's ``get_choice``): a tensor goes to the tier whose share of the
  cumulative size range contains the tensor's midpoint. The GPU gets a prefix of the list,
  the CPU the middle, the disk the rest; every layer is split alike.
- LM head / embedding matrices, KV cache and activations: whole rows, by largest-remainder
  rounding of the fractions (``split_counts``). The cache splits its (sequence x kv head)
  rows, activations their sequences, the head matrices their vocabulary rows.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from simulator.policy import Placement
from simulator.vocabulary import Tier


def assign_tensors(sizes: Sequence[float], placement: Placement) -> list[Tier]:
    """Tier of each tensor (sizes in bytes, in placement order) by the midpoint rule."""
    sizes = np.asarray(sizes, dtype=float)
    total = sizes.sum()
    if total <= 0:
        return [Tier.GPU] * len(sizes)
    ends = np.cumsum(sizes) / total
    mids = ends - sizes / (2 * total)
    g = placement.gpu_frac
    gc = placement.gpu_frac + placement.cpu_frac
    out = []
    for m in mids:
        out.append(Tier.GPU if m < g else Tier.CPU if m < gc else Tier.DISK)
    return out


def realized_placement(sizes: Sequence[float], tiers: Sequence[Tier]) -> Placement:
    """The fractions (by bytes) that an assignment of tensors to tiers really holds."""
    sizes = np.asarray(sizes, dtype=float)
    total = sizes.sum()
    share = {t: float(sizes[[x is t for x in tiers]].sum() / total) for t in (Tier.GPU, Tier.CPU)}
    return Placement(share[Tier.GPU], share[Tier.CPU], max(0.0, 1.0 - share[Tier.GPU] - share[Tier.CPU]))


def achievable_tensor_placements(sizes: Sequence[float]) -> list[Placement]:
    """Every placement the midpoint rule can realize exactly: a GPU prefix, a CPU middle
    and a disk suffix of the tensor list; O(n^2) of them."""
    sizes = np.asarray(sizes, dtype=float)
    cum = np.concatenate([[0.0], np.cumsum(sizes) / sizes.sum()])
    out = {}
    for i, j in itertools.combinations_with_replacement(range(len(cum)), 2):
        g, c = cum[i], cum[j] - cum[i]
        out[(round(g, 12), round(c, 12))] = Placement(float(g), float(c), float(max(0.0, 1.0 - g - c)))
    return list(out.values())


def split_counts(n: int, placement: Placement) -> tuple[int, int, int]:
    """Whole rows per tier (gpu, cpu, disk) summing to n: largest-remainder rounding."""
    raw = np.array(placement.as_tuple()) * n
    base = np.floor(raw + 1e-9).astype(int)
    short = n - int(base.sum())
    order = np.argsort(-(raw - base), kind="stable")
    for k in order[:short]:
        base[k] += 1
    return int(base[0]), int(base[1]), int(base[2])


def row_options(n_rows: int, frac) -> list[tuple[int, int, int]]:
    """Integer row splits (gpu, cpu, disk) near the fractions: floor/ceil of gpu and cpu,
    and the largest-remainder split."""
    import math
    out = set()
    for g in {math.floor(frac[0] * n_rows + 1e-9), math.ceil(frac[0] * n_rows - 1e-9)}:
        for c in {math.floor(frac[1] * n_rows + 1e-9), math.ceil(frac[1] * n_rows - 1e-9)}:
            g2 = max(0, min(g, n_rows))
            c2 = max(0, min(c, n_rows - g2))
            out.add((g2, c2, n_rows - g2 - c2))
    out.add(split_counts(n_rows, Placement(*frac)))
    return sorted(out)


def realized_rows(n: int, placement: Placement) -> Placement:
    """The fractions that ``split_counts`` really realizes for n rows."""
    g, c, d = split_counts(n, placement)
    return Placement(g / n, c / n, d / n)
