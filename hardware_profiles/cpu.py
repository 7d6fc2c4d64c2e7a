"""The host CPU and its memory: the ``cpu`` section of a profile.

Method
------
* Identity: model name from ``/proc/cpuinfo``, ``cores`` = logical CPUs this process may
  run on (``os.sched_getaffinity``), ``memory_GiB`` = ``MemTotal`` of ``/proc/meminfo``.
* Memory bandwidth: ``dst.copy_(src)`` of a random fp32 tensor of 1 GiB (``--quick``:
  256 MiB; both far beyond any last-level cache), torch's multi-threaded copy, timed with
  the wall clock. ``memory_GBps`` counts bytes read plus bytes written (2 x size), like
  the GPU's ``hbm_GBps`` (STREAM's "copy" convention); ``memcpy_GBps`` is the payload rate
  of the same copy (size / time), i.e. what moving a tensor from one RAM buffer to another
  achieves, which is the "link" of a CPU-only machine. Repeated for 1, 2, 4, ... threads
  up to the default (kept under ``measurements.cpu.threads``).
* Operator overhead: the small operators of a decode step as an executor issues them (a
  LayerNorm, an RMSNorm as torch composes it, a residual add, SiLU and multiply, a copy
  into a strided KV-cache slab; ``op_overhead``), at batch 4, width 768 and MLP width 3072
  - or, for a focused profile, at its models' decode sizes (batch 16) - each round right
  after a GEMM whose 16 MiB of weights evict the core's caches, as the layer GEMMs of a
  decode step do; ``op_overhead_us`` is the median time per operator (the GEMM is not
  timed). On the 2-core machine: 2.4 us per operator in a hot loop and 10-16 us after a
  GEMM at (4, 768); 20-60 us for the (16, 1408) activations of a small Llama. The bare
  dispatch cost, a ``torch.add(out=)`` on one-element tensors, is kept as
  ``measurements.cpu.bare_op_us``.
* Peak GEMM rate by dtype (fp32, bf16, fp16): an n x n x n product of random operands,
  n = 2048 (``--quick``: 1024; smaller where a dtype is too slow to time in a second), the
  result checked against fp64 on 64 rows; ``<dtype>_GFLOPs`` = ``2 n^3 / median time``.
  Repeated over thread counts for fp32 and the fast half-precision dtypes.
* GEMM table (all threads): fp32, plus bf16/fp16 where their peak is at least 1.25 x
  fp32's on this CPU ("fast": native units such as AMX or AVX512-BF16), over the
  model presets' (k, n) with k x n up to 64 Mi elements (``--quick``: OPT-125M's) and
  m = 1, 4, ..., 4096, timing ``F.linear(x, w)`` with ``nn.Linear``'s weight layout;
  points predicted slower than ``MAX_POINT_S`` are not measured. A focused profile
  measures its models' shapes instead, rotating over their whole weight stream, and adds
  ``staged_matmul_table``: the same GEMMs rotating over one layer's weights, as they run
  right after the executor copied the layer into its staging buffer (``ops.staged_table``).
* Decode attention: ``scaled_dot_product_attention`` of one query token per sequence, 32
  heads of 128, over a batch x context grid. The cache is stored in fp32 on a CPU-only
  machine (the policy's dtype there); on a GPU machine it is stored in fp16 and upcast to
  fp32 inside the timed call, as the executor's CPU attention does with the GPU's cache.
  A focused profile of a CPU-only machine adds a curve for each other dtype of its focus,
  stored and computed in that dtype (rows labelled by ``dtype``), and measures prefill
  attention (causal SDPA over the focus' batch x prompt points) in each of them.
Every figure: warm-up excluded, median (p10/p90 kept) of repeats, random inputs.
"""

from __future__ import annotations

import os
import platform

from hardware_profiles import ops, shapes
from hardware_profiles.timing import Deadline, Result, SubReporter, collect, host_time, sig
from simulator.units import GB, GiB, MiB

MAX_POINT_S = {True: 0.1, False: 0.5}  # by quick
PEAK_N = {True: 1024, False: 2048}
DTYPES = ("fp32", "bf16", "fp16")
# A half-precision dtype is "fast" (gets a GEMM table and a thread sweep) when its peak is at
# least this multiple of fp32's: native units (AMX, AVX512-BF16). A CPU that converts to
# fp32 inside the GEMM reaches about fp32's peak at n = 1024 but can be far slower at small m.
FAST_RATIO = 1.25


def point_plan(quick: bool) -> dict:
    if quick:
        return {"warmup": 1, "min_repeats": 3, "max_repeats": 10, "budget_s": 0.02}
    return {"warmup": 1, "min_repeats": 5, "max_repeats": 15, "budget_s": 0.05}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def meminfo_bytes(key: str = "MemTotal") -> int | None:
    """A /proc/meminfo entry in bytes (None where there is no /proc)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if key == "MemTotal" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            pass
    return None


def thread_counts(default: int) -> list[int]:
    """1, 2, 4, ... below ``default``, and ``default`` itself."""
    out, t = [], 1
    while t < default:
        out.append(t)
        t *= 2
    return out + [default]


def copy_bandwidth(torch, nbytes: int, plan: dict, buffers=None):
    """Summary of the time (s) of one ``dst.copy_(src)`` of ``nbytes`` (fp32, random);
    ``buffers`` = (src, dst) to reuse across calls."""
    src, dst = buffers or (torch.randn(nbytes // 4), torch.empty(nbytes // 4))
    s = ops.time_call(torch, torch.device("cpu"), lambda: dst.copy_(src), plan, f"copy {nbytes} B")
    if not torch.equal(dst[:1024], src[:1024]):
        raise RuntimeError("CPU copy produced wrong values")
    return s


def bare_op(torch, calls: int = 5000):
    a, b, c = torch.rand(1) + 0.5, torch.rand(1) + 0.5, torch.empty(1)
    return collect(lambda: host_time(lambda: torch.add(a, b, out=c), calls), warmup=2, min_repeats=7,
                   max_repeats=7, budget_s=0.0, what="bare op")


SMALL_OPS = 11  # operators per round of ``op_overhead``


def op_overhead(torch, rounds: int = 200, b: int = 4, h: int = 768, f: int = 3072):
    """Seconds per round of ``SMALL_OPS`` small operators of a decode step at batch ``b``,
    width ``h`` and MLP width ``f`` - a LayerNorm, an RMSNorm as torch composes it (pow,
    mean, add, rsqrt, mul, mul), a residual add_, silu_ and multiply on the MLP activation,
    a copy into a strided KV-cache slab - each round after an untimed cache-evicting GEMM,
    as in a decode step (module docstring)."""
    import time

    import torch.nn.functional as F

    x = torch.randn(b, 1, h)
    r = torch.randn(b, 1, h)
    w, bias = torch.randn(h), torch.randn(h)
    g, u = torch.randn(b, 1, f), torch.randn(b, 1, f)
    heads = max(1, h // 64)
    cache = torch.randn(64, 2, b * heads, 64)
    evict = torch.randn(4096, 1024)  # 16 MiB of fp32 weights
    xe = torch.randn(4, 1024)

    def rounds_time():
        total = 0.0
        for _ in range(rounds):
            F.linear(xe, evict)
            t0 = time.perf_counter()
            y = F.layer_norm(x, (h,), w, bias)
            z = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
            y += r
            F.silu(g, inplace=True)
            g.mul(u)
            cache[5, 0].copy_(z.view(b * heads, -1)[:, :64])
            total += time.perf_counter() - t0
        return total / rounds

    return collect(rounds_time, warmup=1, min_repeats=5, max_repeats=5, budget_s=0.0, what="op overhead")


def focus_op_overhead(torch, focus=None, rounds: int = 200):
    """``op_overhead`` at the sizes a profile times it: a focus's decode sizes (its
    ``op_batch``, attention width and widest MLP), else the defaults. The serving suite
    times it again around each case (``llmsim.serving_suite``)."""
    if not focus:
        return op_overhead(torch, rounds)
    big = max(focus.gemm_shapes, key=lambda kn: kn[0])  # (ffn, h) of the widest MLP down projection
    return op_overhead(torch, rounds, b=focus.op_batch, h=focus.attn_heads * focus.attn_head_dim, f=big[0])


def peak_size(torch, dtype_name: str, n_max: int, limit_s: float = 1.0) -> int:
    """The largest n <= n_max (halving, >= 256) whose n^3 GEMM a 256^3 probe predicts under
    ``limit_s``: slow dtypes (emulated half precision) get a smaller product."""
    dtype = getattr(torch, ops.TORCH_DTYPES[dtype_name])
    a = ops.randn(torch, (256, 256), dtype, "cpu")
    a @ a
    t = host_time(lambda: a @ a, 3)
    n = n_max
    while n > 256 and t * (n / 256) ** 3 > limit_s:
        n //= 2
    return n


def deadlines(quick: bool, cpu_only: bool) -> dict:
    """Wall-clock budgets (s) of the long sweeps: a CPU-only machine spends on its CPU the
    time a GPU machine spends on its GPU, and a full run must stay under 5 minutes."""
    if quick:
        return {"attention": 8, "table": 12}
    return {"attention": 40, "table": 120} if cpu_only else {"attention": 20, "table": 50}


def measure(torch, quick: bool, reporter, attention_storage: str = "fp32", cpu_only: bool = True,
            focus=None) -> Result:
    """Measure the ``cpu`` section. ``attention_storage``: the KV cache dtype of the
    decode-attention table (fp32 on a CPU-only machine, fp16 + upcast beside a GPU)."""
    cpu = torch.device("cpu")
    default_threads = torch.get_num_threads()
    plan = point_plan(quick)
    budget = deadlines(quick, cpu_only)
    copy_plan = {"warmup": 2, "min_repeats": 5, "max_repeats": 20, "budget_s": 0.5 if quick else 1.5}
    values: dict = {"name": cpu_name(), "cores": cpu_count(), "threads": torch.get_num_threads()}
    total = meminfo_bytes("MemTotal")
    if total:
        values["memory_GiB"] = sig(total / GiB, 5)
    meas: dict = {"torch_threads": default_threads}
    steps = 6
    try:
        # ---- memory bandwidth and memcpy, by thread count
        reporter.advance(0, steps, "memory bandwidth")
        nbytes = 256 * MiB if quick else GiB
        threads = [1, default_threads] if quick else thread_counts(default_threads)
        by_threads = {}
        buffers = (torch.randn(nbytes // 4), torch.empty(nbytes // 4))
        for t in threads:
            torch.set_num_threads(t)
            by_threads[t] = copy_bandwidth(torch, nbytes, copy_plan, buffers)
        torch.set_num_threads(default_threads)
        del buffers
        best = by_threads[default_threads]
        values["memory_GBps"] = sig(2 * nbytes / best.median / GB)
        values["memcpy_GBps"] = sig(nbytes / best.median / GB)
        meas["memory"] = {"op": "torch dst.copy_(src), fp32", "size_bytes": nbytes,
                          "counted": "memory_GBps: read + written (2 x size); memcpy_GBps: size",
                          "unit": "us", "threads": {t: s.as_dict(1e6) for t, s in by_threads.items()},
                          "GBps_read_plus_write": {t: sig(2 * nbytes / s.median / GB) for t, s in by_threads.items()}}

        # ---- operator overhead
        reporter.advance(1, steps, "operator overhead")
        ov = focus_op_overhead(torch, focus)
        values["op_overhead_us"] = sig(ov.median * 1e6 / SMALL_OPS)
        meas["bare_op_us"] = sig(bare_op(torch).median * 1e6)
        meas["op_overhead"] = {"ops": "layer_norm, rms_norm (6 ops), add_, silu_, mul, strided copy_, after a "
                               "cache-evicting GEMM", "unit": "us",
                               "per": f"round of {SMALL_OPS} operators", **ov.as_dict(1e6)}

        # ---- peak GEMM by dtype and threads
        reporter.advance(2, steps, "peak GEMM")
        peak_plan = {"warmup": 1, "min_repeats": 3 if quick else 5, "max_repeats": 10,
                     "budget_s": 0.3 if quick else 1.0}
        meas["peak"], rates = {}, {}
        for d in DTYPES:
            n = peak_size(torch, d, PEAK_N[quick])
            s, err = ops.matmul_square(torch, cpu, d, n, peak_plan)
            rates[d] = ops.flops_rate(n, n, n, s.median)
            values[f"{d}_GFLOPs"] = sig(rates[d] / 1e9)
            meas["peak"][d] = {"shape": [n] * 3, "rel_error_vs_fp64": sig(err, 3), "GFLOPs": values[f"{d}_GFLOPs"],
                               "unit": "us", **s.as_dict(1e6)}
        fast = [d for d in DTYPES if d == "fp32" or rates[d] >= FAST_RATIO * rates["fp32"]]
        meas["fast_dtypes"] = fast
        sweep = {}
        for d in fast:
            n = meas["peak"][d]["shape"][0]
            for t in threads:
                if t == default_threads:
                    sweep.setdefault(d, {})[t] = values[f"{d}_GFLOPs"]
                    continue
                torch.set_num_threads(t)
                s, _ = ops.matmul_square(torch, cpu, d, n, {**peak_plan, "min_repeats": 3, "budget_s": 0.2})
                sweep.setdefault(d, {})[t] = sig(ops.flops_rate(n, n, n, s.median) / 1e9)
            torch.set_num_threads(default_threads)
        meas["peak_GFLOPs_by_threads"] = sweep

        # ---- decode attention
        reporter.advance(3, steps, "decode attention")
        grid = list(focus.attn_grid) if focus else shapes.attention_grid("cpu_quick" if quick else "cpu_full")
        H, D = (focus.attn_heads, focus.attn_head_dim) if focus else (shapes.ATTN_HEADS, shapes.ATTN_HEAD_DIM)
        KV = (focus.attn_kv_heads or H) if focus else H
        upcast = attention_storage != "fp32"
        att, att_skipped = ops.decode_attention(torch, cpu, grid, attention_storage, plan,
                                                Deadline(budget["attention"]), SubReporter(reporter, 3, 4, steps),
                                                upcast=upcast, heads=H, head_dim=D, kv_heads=KV)
        rows = []
        if att:
            elem = 4 if attention_storage == "fp32" else 2
            rows = ops.attention_rows(att, attention_storage, elem, H, D, KV, compute_dtype="fp32")
        # A CPU-only machine computes in the policy's dtype: a focus on other dtypes gets their
        # own curves (torch's CPU kernels differ by dtype beyond the bytes they read).
        other = [d for d in (focus.dtypes if focus and not upcast else ()) if d != attention_storage]
        for d in other:
            more, sk = ops.decode_attention(torch, cpu, grid, d, plan, Deadline(budget["attention"]),
                                            SubReporter(reporter, 3, 4, steps), heads=H, head_dim=D, kv_heads=KV)
            att_skipped += [[*p, d] for p in sk]
            if more:
                rows += ops.attention_rows(more, d, 4 if d == "fp32" else 2, H, D, KV, compute_dtype=d)
        if rows:
            values["decode_attention_table"] = rows
        # Prefill attention (a CPU-only machine's focus): the fused causal kernel at the focus'
        # (batch, prompt) points, in each of its dtypes.
        pre_rows, pre_skipped = [], []
        for d in (focus.dtypes if focus and not upcast else ()):
            pts, sk = ops.prefill_attention(torch, cpu, grid, d, plan, Deadline(budget["attention"]),
                                            SubReporter(reporter, 3, 4, steps), heads=H, head_dim=D, kv_heads=KV)
            pre_skipped += [[*p, d] for p in sk]
            if pts:
                pre_rows += ops.prefill_attention_rows(pts, d, H, D, KV)
        if pre_rows:
            values["prefill_attention_table"] = pre_rows
            meas["prefill_attention"] = {"kernel": "torch.nn.functional.scaled_dot_product_attention, is_causal",
                                         "repeat_plan": plan, "skipped_for_time_or_memory": pre_skipped}
        meas["decode_attention"] = {"kernel": "torch.nn.functional.scaled_dot_product_attention, one query token",
                                    "storage_dtype": attention_storage, "upcast_to_fp32_in_timed_call": upcast,
                                    "other_storage_dtypes": other,
                                    "repeat_plan": plan, "skipped_for_time_or_memory": att_skipped}

        # ---- GEMM table
        reporter.advance(4, steps, "GEMM table")
        mem_bps = 2 * nbytes / best.median

        def predict(d, m, k, n):
            e = 4 if d == "fp32" else 2
            return max(2.0 * m * k * n / rates[d], (m * k + k * n + m * n) * e * 2 / mem_bps)

        if focus and not focus.cpu_gemm_tables:
            table, skipped = {}, {}
            meas["matmul_table_absent"] = "not asked: the focus leaves the CPU's GEMM tables out"
        elif focus:
            table, skipped = ops.focused_table(torch, cpu, focus, plan, SubReporter(reporter, 4, 6, steps))
            staged, staged_skipped = ops.staged_table(torch, cpu, focus, plan, SubReporter(reporter, 4, 6, steps))
            if staged:
                values["staged_matmul_table"] = ops.matmul_rows(staged)
                meas["staged_matmul_table"] = {"rotate_bytes": focus.staged_bytes, "skipped": staged_skipped}
        else:
            m_list = shapes.CPU_M_QUICK if quick else shapes.CPU_M_FULL
            table, skipped = ops.matmul_table(torch, cpu, fast, shapes.cpu_shapes(quick), m_list, plan,
                                              Deadline(budget["table"]), SubReporter(reporter, 4, 6, steps),
                                              predict=predict, max_point_s=MAX_POINT_S[quick])
        rows = ops.matmul_rows(table)
        if rows:
            values["matmul_table"] = rows
        meas["deadlines_s"] = budget
        meas["matmul_table"] = {"repeat_plan": plan, "threads": default_threads, "rotate_bytes": (focus.rotate_bytes if focus else 0) or ops.rotation_bytes(cpu),
                                "max_point_s": MAX_POINT_S[quick], "skipped": skipped,
                                "timing": "wall clock around inner back-to-back GEMMs per sample"}
    finally:
        torch.set_num_threads(default_threads)
    machine = {"cpu": values["name"], "logical_cpus": values["cores"], "torch_threads": default_threads,
               "ram_bytes": total, "arch": platform.machine()}
    flags = cpu_flags()
    if flags:
        machine["cpu_flags"] = flags
    return Result(values=values, measurements=meas, machine=machine)


def cpu_flags() -> list[str]:
    """The vector/matrix ISA extensions that decide GEMM speed (AVX2, AVX-512, AMX, ...)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sve", "asimd")))
    except OSError:
        pass
    return []
