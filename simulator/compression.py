"""Group-wise 4-bit compression: the byte layout shared by the cost model and the executor.

Scheme (FlexGen, arXiv 2303.06865, section 5): values are split into groups of
``GROUP_SIZE`` consecutive elements along the last dimension (padded to a whole group);
each group stores ``BITS``-bit unsigned codes (two per byte) plus its minimum and scale in
fp16: ``x ~= min + code * scale``, ``scale = (max - min) / (2**BITS - 1)``.
"""

from __future__ import annotations

import math

GROUP_SIZE = 64
BITS = 4
SCALE_BYTES = 2  # one fp16 scale per group
MIN_BYTES = 2  # one fp16 minimum per group
GROUP_BYTES = GROUP_SIZE * BITS // 8 + SCALE_BYTES + MIN_BYTES  # 36 bytes per 64 values


def num_groups(rows: int, cols: int) -> int:
    """Groups of a (rows, cols) tensor grouped along its last dimension."""
    return rows * math.ceil(cols / GROUP_SIZE)


def packed_bytes(rows: int, cols: int) -> int:
    """Bytes of a (rows, cols) tensor after compression: codes + fp16 min + fp16 scale.

    >>> packed_bytes(1, 64)
    36
    """
    return num_groups(rows, cols) * GROUP_BYTES
