"""GEMM and decode-attention timing shared by the GPU and CPU profilers, and the pure
functions that turn measured points into the profile's tables.

Timing: on a CUDA device, ``inner`` back-to-back calls between CUDA events behind a spin
kernel (``devices.event_time_s``); on the CPU, the wall clock around ``inner`` calls
(``timing.host_time``). ``inner`` is chosen from one warm-up call so that a sample lasts
about ``SAMPLE_S[device type]``; the per-call time is the sample over ``inner``. Queued
back-to-back calls give the steady-state cost of one call as an eager executor issues it,
launch or dispatch cost included. Operands rotate over random copies totalling at least
``ROTATE_BYTES`` so that a small weight matrix is read from memory, as it is when a
model's layers follow one another, and not from a cache.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from hardware_profiles import devices, shapes
from hardware_profiles.timing import Deadline, Summary, collect, host_time, inner_count, sig, summarize

ROTATE_BYTES = 256 * 2**20
MAX_COPIES = 4096


def llc_bytes() -> int:
    """The CPU's last-level cache as sysfs reports it (0 when unknown)."""
    import glob
    best_level, size = 0, 0
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            level = int(open(f"{d}/level").read())
            text = open(f"{d}/size").read().strip().upper()
        except (OSError, ValueError):
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            val = int(text.rstrip("KMG")) * mult
        except ValueError:
            continue
        if level > best_level or (level == best_level and val > size):
            best_level, size = level, val
    return size


def cache_bytes(torch, device) -> int:
    """The last-level cache of ``device``: the GPU's L2 (CUDA), else the CPU's (sysfs)."""
    if getattr(device, "type", "cpu") == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
    return llc_bytes()


def rotation_bytes(device) -> int:
    """How many bytes of operands a timing rotates through so that they come from memory,
    as in a model's forward pass, and not from a cache: at least ``ROTATE_BYTES`` and twice
    the CPU's last-level cache (this VM reports 480 MiB of L3: a 256 MiB rotation measured
    GEMMs up to 2x faster than the executor saw streaming a 500 MB model)."""
    if getattr(device, "type", "cpu") == "cpu":
        return max(ROTATE_BYTES, 2 * llc_bytes())
    return ROTATE_BYTES
SAMPLE_S = {"cuda": 5e-4, "cpu": 2e-3}
TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


# ------------------------------------------------------------------ pure table builders
def gemm_memory_fit(points: dict[tuple[str, int, int], dict[int, Summary]],
                    max_m: int = 16) -> tuple[float, float] | None:
    """How weight-streaming GEMMs take their time (``gpu.gemm_memory_GBps``, ``gpu.gemm_fixed_us``):
    each half-precision curve of ``points`` ({(dtype, k, n): {m: Summary of seconds}}) at its
    smallest m (at most ``max_m``, where the GEMM is memory-bound) gives one point of bytes
    (``(m k + k n + m n) x 2``) against median time; a least-squares line through them,
    ``time = fixed + bytes / rate``, gives (rate, fixed). The line needs two weight matrices at
    least 2x apart in bytes and a positive slope and intercept; otherwise the largest matrix's
    bytes over its time is the rate and fixed is 0. Units: bytes/s and s; None without a point."""
    pts = []
    for (dtype, k, n), by_m in points.items():
        small = [m for m in by_m if m <= max_m]
        if dtype not in ("fp16", "bf16") or not small:
            continue
        m = min(small)
        pts.append(((m * k + k * n + m * n) * 2.0, by_m[m].median))
    if not pts:
        return None
    x = np.array([b for b, _ in pts])
    y = np.array([t for _, t in pts])
    if x.max() >= 2 * x.min():
        slope, fixed = np.polyfit(x, y, 1)
        if slope > 0 and fixed > 0:
            return float(1.0 / slope), float(fixed)
    i = int(np.argmax(x))
    return float(x[i] / y[i]), 0.0


def matmul_rows(points: dict[tuple[str, int, int], dict[int, Summary]]) -> list[dict]:
    """``matmul_table`` rows from {(dtype, k, n): {m: Summary of seconds}}: m ascending,
    median time in us with p10/p90 lists aligned with m. Curves without points are dropped."""
    rows = []
    for (dtype, k, n), by_m in points.items():
        ms = sorted(by_m)
        if not ms:
            continue
        rows.append({"dtype": dtype, "k": int(k), "n": int(n), "m": [int(m) for m in ms],
                     "time_us": [sig(by_m[m].median * 1e6) for m in ms],
                     "p10_us": [sig(by_m[m].p10 * 1e6) for m in ms],
                     "p90_us": [sig(by_m[m].p90 * 1e6) for m in ms]})
    return rows


def attention_rows(points: list[tuple[int, int, Summary]], dtype: str, elem_bytes: int,
                   heads: int = shapes.ATTN_HEADS, head_dim: int = shapes.ATTN_HEAD_DIM, kv_heads: int | None = None,
                   **extra) -> list[dict]:
    """``decode_attention_table`` rows from [(batch, context, Summary of seconds)], sorted by
    K+V bytes (``shapes.kv_bytes``); ``extra`` keys describe every row. Two points with the
    same K+V bytes would make the loader reject the table, so they raise ValueError."""
    rows = []
    for b, c, s in points:
        rows.append({"kv_bytes": shapes.kv_bytes(b, c, elem_bytes, kv_heads or heads, head_dim),
                     "time_us": sig(s.median * 1e6), "p10_us": sig(s.p10 * 1e6), "p90_us": sig(s.p90 * 1e6),
                     "batch": int(b), "context": int(c), "heads": heads, "kv_heads": kv_heads or heads,
                     "head_dim": head_dim, "dtype": dtype, "layout": "position-major", **extra})
    rows.sort(key=lambda r: r["kv_bytes"])
    sizes = [r["kv_bytes"] for r in rows]
    if len(set(sizes)) != len(sizes):
        raise ValueError("decode attention points share a K+V size")
    return rows


def flops_rate(m: int, k: int, n: int, seconds: float) -> float:
    """FLOP/s of one (m x k) @ (k x n) GEMM taking ``seconds``: ``2 m k n / t``."""
    return 2.0 * m * k * n / seconds


# ------------------------------------------------------------------ timing
def timer(torch, device):
    """``time(fn, inner) -> seconds per call`` for ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return lambda fn, inner=1: devices.event_time_s(torch, fn, inner)
    return lambda fn, inner=1: host_time(fn, inner)


def randn(torch, shape, dtype, device, gen=None):
    """Standard-normal values drawn directly in ``dtype`` (no fp32 temporary)."""
    return torch.randn(shape, device=device, dtype=dtype, generator=gen)


def time_call(torch, device, fn, plan: dict, what: str) -> Summary:
    """Summary of one call's time (s): one warm-up call sizes ``inner``, then ``collect``."""
    t = timer(torch, device)
    single = t(fn)
    inner = inner_count(single, SAMPLE_S[device.type], cap=200)
    return collect(lambda: t(fn, inner), what=what, **plan)


def gemm_launcher(torch, device, dtype, m: int, k: int, n: int, w_copies: list):
    """A callable running one ``F.linear(x, w)`` with x (m, k) and w (n, k), the layout of
    ``nn.Linear`` weights (an executor's layers), rotating over operand copies. The layout
    matters: torch's CPU bf16 GEMM takes a slow path for a row-major (k, n) right operand
    at 16 <= m <= 256 (~7 ms instead of ~50 us for 768 x 768 on torch 2.13)."""
    import torch.nn.functional as F

    copies = len(w_copies)  # sized by the caller to the rotation it wants (matmul_table)
    x_copies = [randn(torch, (m, k), dtype, device) for _ in range(min(copies, 64))]
    nx = len(x_copies)
    idx = itertools.count()

    def launch():
        j = next(idx)
        F.linear(x_copies[j % nx], w_copies[j % copies])

    return launch


def interleaved(torch, device, fns: dict, plan: dict, what: str) -> dict:
    """{key: Summary of one call's time (s)} for several callables measured in round-robin
    passes: each pass takes one sample of every callable. Background activity that lasts
    a fraction of a second then spoils one sample of several points instead of every
    sample of one point, and the median removes it. ``inner`` per callable is sized from
    one warm-up call; ``plan`` as for ``timing.collect`` (its budget is per callable)."""
    t = timer(torch, device)
    inner = {key: inner_count(t(fn), SAMPLE_S[device.type], cap=200) for key, fn in fns.items()}
    for _ in range(plan["warmup"]):
        for key, fn in fns.items():
            t(fn, inner[key])
    samples: dict = {key: [] for key in fns}
    start = time.perf_counter()
    for r in range(plan["max_repeats"]):
        for key, fn in fns.items():
            samples[key].append(t(fn, inner[key]))
        if r + 1 >= plan["min_repeats"] and time.perf_counter() - start >= plan["budget_s"] * len(fns):
            break
    return {key: summarize(v, f"{what} {key}") for key, v in samples.items()}


def matmul_table(torch, device, dtypes, shape_list, m_list, plan: dict, deadline: Deadline, reporter,
                 predict=None, max_point_s: float | None = None, rotate_bytes: int | None = None) -> tuple[dict, dict]:
    """Measure {(dtype, k, n): {m: Summary}} over shapes x dtypes x m; the m points of one
    (dtype, k, n) curve are measured together (``interleaved``).

    ``predict(dtype, m, k, n) -> s`` with ``max_point_s``: points predicted slower than that
    are not measured (a CPU would take minutes on the largest m). Curves not reached before
    ``deadline`` are skipped; shapes go from small to large, so a deadline drops the largest.
    Returns (points, {"too_slow": [...], "deadline": [...]}).
    """
    points: dict = {}
    skipped = {"too_slow": [], "deadline": []}
    total, done = len(dtypes) * len(shape_list), 0
    for k, n in shape_list:
        for dtype_name in dtypes:
            reporter.advance(done, total, f"GEMM {dtype_name} k={k} n={n}")
            done += 1
            dtype = getattr(torch, TORCH_DTYPES[dtype_name])
            elem = torch.tensor([], dtype=dtype).element_size()
            points[(dtype_name, k, n)] = {}
            todo = []
            for m in m_list:
                if predict is not None and max_point_s is not None and predict(dtype_name, m, k, n) > max_point_s:
                    skipped["too_slow"].append([dtype_name, k, n, m])
                else:
                    todo.append(m)
            if not todo:
                continue
            if deadline.expired():
                skipped["deadline"] += [[dtype_name, k, n, m] for m in todo]
                continue
            copies = max(1, min(MAX_COPIES, math.ceil((rotate_bytes or rotation_bytes(device)) / (k * n * elem))))
            w_copies = [randn(torch, (n, k), dtype, device) for _ in range(copies)]
            fns = {m: gemm_launcher(torch, device, dtype, m, k, n, w_copies) for m in todo}
            points[(dtype_name, k, n)] = interleaved(torch, device, fns, plan, f"gemm {dtype_name} k={k} n={n} m=")
            del w_copies, fns
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return points, skipped


def matmul_square(torch, device, dtype_name: str, n: int, plan: dict, check_rows: int = 64) -> tuple[Summary, float]:
    """(Summary of one n x n x n GEMM's time in s, relative error of ``check_rows`` rows
    against an fp32 product of the same inputs): the peak-rate measurement."""
    dtype = getattr(torch, TORCH_DTYPES[dtype_name])
    gen = torch.Generator(device=device).manual_seed(7)
    a = randn(torch, (n, n), dtype, device, gen)
    b = randn(torch, (n, n), dtype, device, gen)
    c = torch.empty((n, n), dtype=dtype, device=device)
    torch.mm(a, b, out=c)
    r = min(check_rows, n)
    ref = a[:r].double() @ b.double()
    err = float((c[:r].double() - ref).norm() / ref.norm())
    s = time_call(torch, device, lambda: torch.mm(a, b, out=c), plan, f"{dtype_name} {n}^3 GEMM")
    return s, err


def fits_in_memory(torch, device, nbytes: int) -> bool:
    """Whether ``nbytes`` of operands fit in a quarter of the free memory of ``device``
    (CUDA: ``mem_get_info``; CPU: MemAvailable), leaving room for temporaries."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        from hardware_profiles.cpu import meminfo_bytes
        free = meminfo_bytes("MemAvailable")
        if free is None:
            return True
    return nbytes <= free / 4


def focus_plan(plan: dict, focus) -> dict:
    """A focus measures few curves, so it can afford a full run's repeats even in --quick:
    the quick plan's single short samples left small-m curves non-monotone on a noisy VM."""
    return {**plan, "min_repeats": max(plan.get("min_repeats", 1), 5),
            "max_repeats": max(plan.get("max_repeats", 1), 15, int(focus.point_budget_s / 0.005)),
            "budget_s": max(plan.get("budget_s", 0.0), focus.point_budget_s)}


def focused_table(torch, device, focus, plan: dict, reporter) -> tuple[dict, dict]:
    """``matmul_table`` for a ``shapes.Focus``: layer shapes at its m values, LM heads at
    its head m values, its dtypes only, all within its budget."""
    deadline = Deadline(focus.table_budget_s)
    plan = focus_plan(plan, focus)
    # The models' own weight stream, as the executor reads it (not more: a model smaller than
    # the cache keeps part of its weights there between steps, and so does the executor).
    rot = focus.rotate_bytes or rotation_bytes(device)
    table, skipped = matmul_table(torch, device, focus.dtypes, list(focus.gemm_shapes), focus.m_values, plan,
                                  deadline, reporter, rotate_bytes=rot)
    if focus.head_shapes:
        heads, sk = matmul_table(torch, device, focus.dtypes, list(focus.head_shapes), focus.head_m_values, plan,
                                 deadline, reporter, rotate_bytes=rot)
        table.update(heads)
        for key in skipped:
            skipped[key] += sk[key]
    if focus.expert_shapes and focus.expert_m_values:  # merged into a layer shape's curve where they coincide
        experts, sk = matmul_table(torch, device, focus.dtypes, list(focus.expert_shapes), focus.expert_m_values,
                                   plan, deadline, reporter, rotate_bytes=rot)
        for key, pts in experts.items():
            table.setdefault(key, {}).update(pts)
        for key in skipped:
            skipped[key] += sk[key]
    return table, skipped


def staged_table(torch, device, focus, plan: dict, reporter) -> tuple[dict, dict]:
    """``staged_matmul_table`` for a ``shapes.Focus``: its layer shapes at its m values with
    the weights rotating over one layer's bytes (``focus.staged_bytes``), as the GEMMs see
    them right after the executor copied that layer into its staging buffer. Measured only
    when a layer fits in the device's last-level cache (``cache_bytes``); otherwise both
    read from memory alike and ({}, {}) is returned. On the 2-core CI VM, OPT-mini's and
    Llama-tiny's decode GEMMs (m = 16) ran 1.4-1.5x faster this way than rotating over the
    models' weights (validate/records/cpu-2core/profiles/ci-cpu.yaml), and the executor's
    decode GEMMs with weights streamed from the CPU tier took 0.150 s against 0.231 s
    resident for Llama-tiny, 0.172 s against 0.260 s for OPT-mini (the records beside it)."""
    if not focus.staged_bytes or focus.staged_bytes > cache_bytes(torch, device):
        return {}, {}
    plan = focus_plan(plan, focus)
    return matmul_table(torch, device, focus.dtypes, list(focus.gemm_shapes), focus.m_values, plan,
                        Deadline(focus.table_budget_s), reporter, rotate_bytes=focus.staged_bytes)


def decode_attention(torch, device, grid, dtype_name: str, plan: dict, deadline: Deadline, reporter,
                     upcast: bool = False, heads: int = shapes.ATTN_HEADS,
                     head_dim: int = shapes.ATTN_HEAD_DIM, kv_heads: int | None = None,
                     rotate_bytes: int | None = None) -> tuple[list, list]:
    """[(batch, context, Summary of s)] for ``scaled_dot_product_attention`` of one query
    token per sequence over ``context`` keys, with the KV cache laid out as the executor
    keeps it: position-major slabs (context, 2, batch x kv_heads, head_dim), K and V read
    through transposed views, the ``heads / kv_heads`` query heads of each KV row grouped
    (validate/executor: KVCache, layers.decode_attention_rows). On the 2-core machine this
    strided layout ran 1.3-1.5x slower than contiguous (batch, heads, context, d) tensors,
    which is why the layout is the executor's and not the textbook one. K and V are stored
    in ``dtype_name``; with ``upcast`` the timed call first converts them to fp32 (what
    the executor's CPU attention does with a half-precision cache). Also returns the grid
    points skipped because the deadline passed or they would not fit in a quarter of the
    free memory."""
    import torch.nn.functional as F

    dtype = getattr(torch, TORCH_DTYPES[dtype_name])
    H, D = heads, head_dim
    KV = kv_heads or heads
    g = H // KV
    elem = torch.tensor([], dtype=dtype).element_size()
    out, skipped = [], []
    for i, (b, ctx) in enumerate(grid):
        reporter.advance(i, len(grid), f"attention batch {b} context {ctx}")
        size = 2 * b * KV * ctx * D * elem
        if deadline.expired() or not fits_in_memory(torch, device, size * (3 if upcast else 1)):
            skipped.append([b, ctx])
            continue
        copies = max(1, min(MAX_COPIES, math.ceil((rotate_bytes or rotation_bytes(device)) / size)))
        R = b * KV
        q = randn(torch, (R, g, 1, D), dtype, device)  # (rows, g, 1, d)
        kv = [randn(torch, (ctx, 2, R, D), dtype, device) for _ in range(copies)]  # position-major slabs
        idx = itertools.count()

        def run():
            c = kv[next(idx) % copies]
            k, v = c[:, 0].transpose(0, 1).unsqueeze(1), c[:, 1].transpose(0, 1).unsqueeze(1)  # (R, 1, L, d)
            qq = q
            if upcast:
                qq, k, v = q.float(), k.float(), v.float()
            return F.scaled_dot_product_attention(qq, k, v, enable_gqa=g > 1)

        out.append((b, ctx, time_call(torch, device, run, plan, f"attention {b}x{ctx}")))
        del q, kv
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out, skipped


def prefill_attention(torch, device, grid, dtype_name: str, plan: dict, deadline: Deadline, reporter,
                      heads: int = shapes.ATTN_HEADS, head_dim: int = shapes.ATTN_HEAD_DIM,
                      kv_heads: int | None = None) -> tuple[list, list]:
    """[(batch, seq, Summary of s)] for causal ``scaled_dot_product_attention`` of ``seq``
    prompt tokens per sequence, laid out as the executor's prefill passes it (q, k, v
    ``(b, s, heads, d)`` viewed as ``(b, heads, s, d)``; validate/executor/layers.
    prefill_attention), in ``dtype_name``. Also returns the grid points skipped because the
    deadline passed or they would not fit in a quarter of the free memory."""
    import torch.nn.functional as F

    dtype = getattr(torch, TORCH_DTYPES[dtype_name])
    H, D = heads, head_dim
    KV = kv_heads or heads
    elem = torch.tensor([], dtype=dtype).element_size()
    out, skipped = [], []
    for i, (b, s) in enumerate(grid):
        reporter.advance(i, len(grid), f"prefill attention batch {b} prompt {s}")
        size = b * s * (2 * H + 2 * KV) * D * elem
        if deadline.expired() or not fits_in_memory(torch, device, size):
            skipped.append([b, s])
            continue
        q = randn(torch, (b, s, H, D), dtype, device)
        k = randn(torch, (b, s, KV, D), dtype, device)
        v = randn(torch, (b, s, KV, D), dtype, device)

        def run():
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True, enable_gqa=H != KV)

        out.append((b, s, time_call(torch, device, run, plan, f"prefill attention {b}x{s}")))
        del q, k, v
    return out, skipped


def prefill_attention_rows(points: list[tuple[int, int, Summary]], dtype: str, heads: int, head_dim: int,
                           kv_heads: int) -> list[dict]:
    """``prefill_attention_table`` rows from [(batch, seq, Summary of seconds)]: FLOP
    ``2 b s (s + 1) heads head_dim`` (``simulator.ops.prefill_attention_time_s``), sorted."""
    rows = [{"flop": float(2 * b * s * (s + 1) * heads * head_dim), "time_us": sig(t.median * 1e6),
             "p10_us": sig(t.p10 * 1e6), "p90_us": sig(t.p90 * 1e6), "batch": int(b), "seq": int(s),
             "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "dtype": dtype, "causal": True}
            for b, s, t in points]
    rows.sort(key=lambda r: r["flop"])
    if len({r["flop"] for r in rows}) != len(rows):
        raise ValueError("prefill attention points share a FLOP count")
    return rows

