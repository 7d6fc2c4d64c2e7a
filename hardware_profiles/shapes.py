"""Which GEMM and attention shapes the profilers measure.

GEMM (k, n): every dense GEMM of one layer of every model preset
(``simulator.cost.layer_gemms``), plus the expert GEMMs of MoE presets, deduplicated, so
the cost model's table look-up (``ComputeDevice._rate_points``) finds a measured curve of
the very shape it needs for every preset. ``m`` is the token dimension (batch x tokens).

Decode attention: a grid of (batch, context) whose products ``batch x context`` are all
distinct (batches are powers of 4 and contexts 128 x powers of 3, so by unique
factorisation no two points share a KV size), because the profile's table is keyed by the
K+V bytes read.
"""

from __future__ import annotations

from simulator.cost import layer_gemms
from simulator.models import PRESETS, get_model

# m sweeps (the token dimension): GPU 1..8192 in powers of 2; CPU in powers of 4.
GPU_M_FULL = tuple(2**i for i in range(14))
GPU_M_QUICK = (1, 16, 128, 1024, 8192)
CPU_M_FULL = (1, 4, 16, 64, 256, 1024, 4096)
CPU_M_QUICK = (1, 16, 256, 2048)
# --quick measures the GEMMs of these presets only.
QUICK_PRESETS = ("opt-125m", "llama-2-7b")
# A CPU measures GEMMs up to this many weight elements (k x n) in a full run; larger layers
# are far from anything a CPU-only deployment runs, and each point would take seconds.
CPU_MAX_KN_FULL = 64 * 2**20
# Attention geometry of the grid (a 7B-class layer: 32 heads of 128).
ATTN_HEADS = 32
ATTN_HEAD_DIM = 128
ATTN_GRID = {
    "gpu_full": ((1, 4, 16, 64, 256), (128, 384, 1152, 3456, 10368)),
    "gpu_quick": ((1, 16, 64), (128, 1152)),
    "cpu_full": ((1, 4, 16, 64), (128, 384, 1152)),
    "cpu_quick": ((1, 4, 16), (128, 384)),
}


def model_gemm_shapes(presets=None) -> list[tuple[int, int]]:
    """Deduplicated (k, n) of the layer GEMMs of ``presets`` (default: all), by size."""
    names = list(PRESETS) if presets is None else list(presets)
    shapes = set()
    for name in names:
        model = get_model(name)
        shapes |= {(k, n) for k, n, _ in layer_gemms(model)}
        if model.is_moe:
            shapes |= {(model.hidden_size, model.ffn_dim), (model.ffn_dim, model.hidden_size)}
    return sorted(shapes, key=lambda s: (s[0] * s[1], s))


def gpu_shapes(quick: bool) -> list[tuple[int, int]]:
    return model_gemm_shapes(QUICK_PRESETS if quick else None)


def cpu_shapes(quick: bool) -> list[tuple[int, int]]:
    if quick:
        return model_gemm_shapes(("opt-125m",))
    return [s for s in model_gemm_shapes() if s[0] * s[1] <= CPU_MAX_KN_FULL]


def attention_grid(kind: str) -> list[tuple[int, int]]:
    """(batch, context) points of ``ATTN_GRID[kind]``, distinct in batch x context."""
    batches, contexts = ATTN_GRID[kind]
    grid = [(b, c) for b in batches for c in contexts]
    products = [b * c for b, c in grid]
    assert len(set(products)) == len(products), "attention grid points must differ in batch x context"
    return grid


def kv_bytes(batch: int, context: int, elem_bytes: int, heads: int = ATTN_HEADS, head_dim: int = ATTN_HEAD_DIM) -> int:
    """K and V bytes one decode-attention step reads: ``2 x batch x heads x context x head_dim x elem``."""
    return 2 * batch * heads * context * head_dim * elem_bytes
