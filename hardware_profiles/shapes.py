"""Which GEMM and attention shapes the profilers measure.

GEMM (k, n): every dense GEMM of one layer of every model preset
(``simulator.ops.layer_gemms``), plus the expert GEMMs of MoE presets, deduplicated, so
the cost model's table look-up (``ComputeDevice._rate_points``) finds a measured curve of
the very shape it needs for every preset. ``m`` is the token dimension (batch x tokens).

Decode attention: a grid of (batch, context) whose products ``batch x context`` are all
distinct (batches are powers of 4 and contexts 128 x powers of 3, so by unique
factorisation no two points share a KV size), because the profile's table is keyed by the
K+V bytes read.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.ops import layer_gemms
from simulator.models import PRESETS, ModelSpec, get_model

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


def gemm_shapes_of(model: ModelSpec) -> set[tuple[int, int]]:
    """(k, n) of one model's GEMMs: its layers' (and experts'), and the LM head's (hidden x vocab)."""
    out = {(k, n) for k, n, _ in layer_gemms(model)}
    if model.is_moe:
        out |= {(model.hidden_size, model.ffn_dim), (model.ffn_dim, model.hidden_size)}
    out.add((model.hidden_size, model.vocab_size))
    return out


def model_gemm_shapes(presets=None) -> list[tuple[int, int]]:
    """Deduplicated (k, n) of the GEMMs (layers and LM head) of ``presets`` (default: all), by size."""
    names = list(PRESETS) if presets is None else list(presets)
    shapes = set()
    for name in names:
        shapes |= gemm_shapes_of(get_model(name))
    return sorted(shapes, key=lambda s: (s[0] * s[1], s))


# The m values a focused profile measures: every power of two up to 2048, because small-m
# GEMM speed is not smooth in m (MKL switches from GEMV to GEMM kernels between m = 1 and 4:
# a 768 x 3072 fp32 product took 0.65 ms at m = 1 and 1.25 ms at m = 4 on the 2-core machine).
FOCUS_M = tuple(2**i for i in range(12))


@dataclass(frozen=True)
class Focus:
    """Measure for these models: their layer GEMM shapes at ``m_values``, their LM heads
    (hidden x vocab) at ``head_m_values`` (the head runs on one token per sequence, so m is
    a batch size), in ``dtypes`` only, and decode attention with their head geometry over
    ``attn_grid``; within ``table_budget_s``. Validation suites profile this way, so every
    GEMM they run has a measured curve."""

    gemm_shapes: tuple
    m_values: tuple
    head_shapes: tuple
    head_m_values: tuple
    dtypes: tuple
    attn_heads: int
    attn_head_dim: int
    attn_grid: tuple
    table_budget_s: float = 90.0
    attn_kv_heads: int = 0  # 0: as many as attn_heads
    rotate_bytes: int = 0  # rotate GEMM weights over this many bytes: the models' per-step weight stream
    op_batch: int = 16  # the batch at which small operators are timed
    point_budget_s: float = 0.05  # sampling time per GEMM point (more for few, well-chosen points)
    staged_bytes: int = 0  # one layer's weights, what the executor's staging buffer holds (ops.staged_table)
    # Measure the GEMM tables on the CPU too. Beside a GPU the CPU computes only decode
    # attention (``cpu_attention``), so a GPU validation's focus leaves them out.
    cpu_gemm_tables: bool = True
    # Mixture of experts: the routed experts' GEMMs (h x f, f x h) at the token counts one
    # expert gets (``simulator.moe.token_support`` of the m values), merged into their curves.
    expert_shapes: tuple = ()
    expert_m_values: tuple = ()

    @classmethod
    def of(cls, models, m_values=FOCUS_M, head_m_values=(1, 2, 4, 8, 16, 32), dtypes=("fp32",),
           batches=(1, 2, 4, 8, 16), contexts=(32, 96, 288), op_batch: int = 16,
           point_budget_s: float = 0.05, table_budget_s: float = 90.0, cpu_gemm_tables: bool = True,
           expert_m_values=None) -> "Focus":
        """``expert_m_values`` (mixture-of-experts models): the m values of their expert GEMMs;
        default: ``simulator.moe.token_support`` of each m value."""
        from simulator.moe import token_support
        models = list(models)
        layer, head, experts, expert_m = set(), set(), set(), set()
        for m in models:
            layer |= {(k, n) for k, n, _ in layer_gemms(m)}
            head.add((m.hidden_size, m.vocab_size))
            if m.is_moe:
                experts |= {(m.hidden_size, m.ffn_dim), (m.ffn_dim, m.hidden_size)}
                for mv in m_values:
                    expert_m |= set(token_support(m, mv))
        if expert_m_values is not None:
            expert_m = set(expert_m_values)
        big = max(models, key=lambda m: m.hidden_size)
        grid = tuple((b, c) for b in batches for c in contexts)
        assert len({b * c for b, c in grid}) == len(grid), "attention grid points must differ in batch x context"
        order = lambda xs: tuple(sorted(xs, key=lambda s: (s[0] * s[1], s)))  # noqa: E731
        # A forward pass reads every weight once per step: between two uses of a layer's
        # weights the rest of the model streams through the caches. Rotating over the
        # largest model's weights reproduces that.
        stream = max(m.weight_bytes(m.dtype) for m in models)
        # The staging buffer holds a dense layer; an expert layer's experts are copied one by one.
        staged = max(m.layer_weight_bytes(m.dtype) for m in ([x for x in models if not x.is_moe] or models))
        return cls(order(layer), tuple(m_values), order(head - layer), tuple(head_m_values), tuple(dtypes),
                   big.num_heads, big.head_dim, grid, attn_kv_heads=big.num_kv_heads, rotate_bytes=int(stream),
                   op_batch=op_batch, point_budget_s=point_budget_s, staged_bytes=int(staged),
                   table_budget_s=float(table_budget_s), cpu_gemm_tables=bool(cpu_gemm_tables),
                   expert_shapes=order(experts), expert_m_values=tuple(sorted(expert_m)))


def gpu_shapes(quick: bool) -> list[tuple[int, int]]:
    return model_gemm_shapes(QUICK_PRESETS if quick else None)


def cpu_shapes(quick: bool) -> list[tuple[int, int]]:
    if quick:  # OPT-125M's layer GEMMs (its 768 x 50272 head does not fit --quick's minute)
        m = get_model("opt-125m")
        return sorted({(k, n) for k, n, _ in layer_gemms(m)}, key=lambda s: (s[0] * s[1], s))
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
