"""Group-wise 4-bit (de)quantization in the byte layout of ``simulator.compression``.

A tensor ``(..., D)`` is cut into ``G = ceil(D / 64)`` groups along its last dimension
(zero-padded to whole groups). Each group is stored as 36 contiguous bytes: 32 bytes of
codes, then its fp16 minimum, then its fp16 scale, so a packed tensor is ``(..., G, 36)``
uint8 and takes exactly ``compression.packed_bytes`` bytes. Byte ``i`` of a group holds
element ``i`` in its low nibble and element ``i + 32`` in its high nibble, so unpacking is
one concatenation, not an interleave. ``x ~= min + code x scale``,
``scale = (max - min) / 15``.
"""

from __future__ import annotations

import math

import torch

from simulator import compression

GROUP = compression.GROUP_SIZE  # 64 values per group
HALF = GROUP // 2  # codes bytes per group (two 4-bit codes per byte)
LEVELS = 2 ** compression.BITS - 1  # 15
ROW = compression.GROUP_BYTES  # 36 bytes per group: 32 codes + fp16 min + fp16 scale
assert ROW == HALF + compression.MIN_BYTES + compression.SCALE_BYTES
_TINY_SCALE = 2.0 ** -24  # smallest fp16 subnormal: keeps constant groups finite


def num_groups(cols: int) -> int:
    return math.ceil(cols / GROUP)


def packed_row_bytes(cols: int) -> int:
    """Bytes of one packed row of ``cols`` values (``compression.packed_bytes(1, cols)``)."""
    return num_groups(cols) * ROW


def quantize(x: torch.Tensor) -> torch.Tensor:
    """(..., D) float -> (..., G, 36) uint8 packed groups."""
    d = x.shape[-1]
    g = num_groups(d)
    if d % GROUP:
        x = torch.nn.functional.pad(x, (0, g * GROUP - d))
    xg = x.unflatten(-1, (g, GROUP))  # (..., G, 64)
    mn, mx = torch.aminmax(xg, dim=-1, keepdim=True)  # (..., G, 1) each
    mn16 = mn.to(torch.float16)
    scale16 = ((mx - mn) / LEVELS).to(torch.float16).clamp_(min=_TINY_SCALE)  # (..., G, 1)
    # Codes from the stored (fp16) min and scale, so decoding inverts exactly what is kept.
    codes = ((xg - mn16) / scale16).round_().clamp_(0, LEVELS).to(torch.uint8)  # (..., G, 64)
    packed = codes[..., :HALF] | (codes[..., HALF:] << 4)  # (..., G, 32)
    return torch.cat([packed, mn16.view(torch.uint8), scale16.view(torch.uint8)], dim=-1)  # (..., G, 36)


def dequantize(p: torch.Tensor, cols: int, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """(..., G, 36) uint8 -> (..., cols) in ``dtype``; written into ``out`` (shape (..., cols)) if given."""
    codes = p[..., :HALF]  # (..., G, 32)
    mn = p[..., HALF:HALF + 2].view(torch.float16)  # (..., G, 1)
    scale = p[..., HALF + 2:ROW].view(torch.float16)  # (..., G, 1)
    q = torch.cat([codes & 15, codes >> 4], dim=-1)  # (..., G, 64) uint8 codes in element order
    g = p.shape[-2]
    if out is not None and cols == g * GROUP and out.dtype == dtype:
        torch.addcmul(mn, q, scale, out=out.unflatten(-1, (g, GROUP)))
        return out
    x = torch.addcmul(mn, q, scale).flatten(-2)[..., :cols]  # (..., cols) fp16
    if out is not None:
        return out.copy_(x)
    return x.to(dtype)
