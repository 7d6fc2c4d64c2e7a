"""The GPU: the ``gpu`` section of a profile.

Method
------
* Memory: ``torch.cuda.mem_get_info`` right after the CUDA context is created, before the
  profiler allocates anything: ``memory_GiB`` is the total, ``reserved_GiB`` what is
  already in use then (the context itself, and anything other processes hold).
* HBM bandwidth: device-to-device copies of 64 MiB / 256 MiB / 1 GiB (far beyond L2),
  counting bytes read plus bytes written (2 x size), CUDA events; ``hbm_GBps`` is the
  median rate at the largest size.
* Peak GEMM rate: ``C = A @ B`` with 8192 x 8192 x 8192 random fp16 / bf16 operands,
  ``2 m k n / median time``; int8 (``torch._int_mm``) and fp8 (``torch._scaled_mm``) where
  this torch and GPU support them (absent otherwise). The product is checked against an
  fp64 reference on 64 rows first (relative error recorded).
* GEMM table: for every (k, n) of the model presets' layers (``shapes.gpu_shapes``) and
  m = 1..8192 (powers of 2), fp16 and bf16: the median time of one ``F.linear(x, w)``
  (x: m x k, w: n x k, the layout of ``nn.Linear``), measured as ``inner`` back-to-back
  GEMMs between CUDA events (so the queue stays full and the time is the steady-state
  cost of one GEMM as an eager executor issues it, launch included).
  Operands rotate over several random copies totalling >= 256 MiB so that small weight
  matrices are not served from L2.
* GEMM read rate and fixed time (``gemm_memory_GBps``, ``gemm_fixed_us``): each of the
  table's half-precision curves at its smallest m (<= 16) gives its bytes (weights, input,
  output) against its time; a least-squares line ``time = fixed + bytes / rate`` through
  them (``ops.gemm_memory_fit``; with one shape, or matrices within 2x of each other, the
  largest one's bytes over its time and no fixed time). The roofline uses both for shapes no
  table entry covers: weight-streaming GEMMs read below a copy's ``hbm_GBps``, and a short
  one spends a few microseconds beside its bytes (on an H100, published cuBLAS timings at
  m = 1 fit 3.18 TB/s and 4.4 us).
* Decode attention: ``scaled_dot_product_attention`` of one query token per sequence over
  a cache of ``context`` keys (fp16, 32 heads of 128), over a batch x context grid
  (``shapes.attention_grid``); rows keyed by the K+V bytes read.
* Kernel launch: the host's cost to issue one tiny kernel (``x.add_(c)`` on a one-element
  tensor) in a loop of 2000 (``--quick``: 500) then one synchronize: ``kernel_launch_us`` is the median per
  launch. The GPU-side time per kernel, from a replayed CUDA graph of the same kernels, is
  kept in ``measurements.gpu.launch`` for comparison.
Every figure: warm-up excluded, median (p10/p90 kept) of repeats. Inputs are random,
never zeros (zeros can run faster than real data).
"""

from __future__ import annotations

import time

from hardware_profiles import devices, ops, shapes
from hardware_profiles.timing import Deadline, Result, Summary, SubReporter, collect, sig
from simulator.units import GB, GiB, MiB

# Time budgets of the table sweeps, by --quick (seconds): past them the largest shapes are skipped
# and listed in measurements. The CPU stand-in (fakecuda.shrink) lifts them: it is checking code
# paths, and a slow CI machine must not change which shapes it gets through.
GEMM_TABLE_BUDGET_S = {True: 15, False: 90}
ATTENTION_BUDGET_S = {True: 10, False: 30}

PEAK_N = 8192


def point_plan(quick: bool) -> dict:
    """Warm-up and repeats of one table point (GEMM shape or attention grid point)."""
    if quick:
        return {"warmup": 1, "min_repeats": 3, "max_repeats": 10, "budget_s": 0.02}
    return {"warmup": 1, "min_repeats": 5, "max_repeats": 20, "budget_s": 0.05}


def peak_plan(quick: bool) -> dict:
    return {"warmup": 2, "min_repeats": 5 if quick else 10, "max_repeats": 5 if quick else 10, "budget_s": 0.0}


# ------------------------------------------------------------------ measurements
def device_info(torch, device) -> dict:
    """Name, count, memory and versions; call before allocating anything on ``device``."""
    torch.cuda.init()
    with torch.cuda.device(device):
        torch.empty(1, device=device)  # creates the context
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
    props = torch.cuda.get_device_properties(device)
    smi = devices.nvidia_smi(["driver_version", "name", "memory.total"], torch, device) or {}
    return {"name": props.name, "count": torch.cuda.device_count(), "total_bytes": int(total),
            "free_bytes": int(free), "sm_count": getattr(props, "multi_processor_count", None),
            "capability": f"{props.major}.{props.minor}", "driver": smi.get("driver_version"),
            "l2_bytes": getattr(props, "L2_cache_size", None)}


def hbm_bandwidth(torch, device, quick: bool) -> dict[int, Summary]:
    """{size: Summary of one device copy's time (s)} for device-to-device copies."""
    sizes = [256 * MiB] if quick else [64 * MiB, 256 * MiB, GiB]
    free, _ = torch.cuda.mem_get_info(device)
    sizes = [s for s in sizes if 2 * s < 0.5 * free] or [min(sizes[0], int(free // 8))]
    plan = {"warmup": 3, "min_repeats": 10, "max_repeats": 20 if quick else 50, "budget_s": 0.1 if quick else 0.3}
    out = {}
    for size in sizes:
        src = torch.randint(0, 256, (size,), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        out[size] = collect(lambda: devices.event_time_s(torch, lambda: dst.copy_(src)),
                            what=f"hbm copy {size} B", **plan)
        if not torch.equal(dst[:4096], src[:4096]):
            raise RuntimeError("device copy produced wrong bytes")
        del src, dst
    torch.cuda.empty_cache()
    return out


def low_precision_peak(torch, device, kind: str, n: int) -> Summary:
    """Time of one n^3 int8 or fp8 GEMM (s). Raises when unsupported (the caller records
    the section as absent)."""
    if kind == "int8":
        a = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=device)
        fn = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        f8 = torch.float8_e4m3fn
        a = torch.randn((n, n), device=device).to(f8)
        b = torch.randn((n, n), device=device).to(f8).t().contiguous().t()  # column-major operand
        one = torch.tensor(1.0, device=device)
        fn = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
    fn()
    torch.cuda.synchronize(device)
    return collect(lambda: devices.event_time_s(torch, fn, 5), warmup=2, min_repeats=8, max_repeats=8,
                   budget_s=0.0, what=f"{kind} peak gemm")


def launch_overhead(torch, device, quick: bool) -> dict:
    """Host cost per tiny kernel (s, Summary) and, where CUDA graphs work, GPU time per
    kernel inside a replayed graph."""
    x = torch.rand(1, device=device) + 0.5
    n = 500 if quick else 2000

    def loop():
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n):
            x.add_(1e-6)
        torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) / n

    host = collect(loop, warmup=2, min_repeats=5, max_repeats=7, budget_s=0.0, what="kernel launch")
    out = {"host": host}
    try:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                x.add_(1e-6)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        kernels = 200
        with torch.cuda.graph(graph):
            for _ in range(kernels):
                x.add_(1e-6)
        out["graph"] = collect(lambda: devices.event_time_s(torch, graph.replay) / kernels, warmup=2,
                               min_repeats=5, max_repeats=5, budget_s=0.0, what="graph kernel")
    except Exception as e:  # graphs are informational only
        out["graph_error"] = f"{type(e).__name__}: {e}"
    return out


def measure(torch, device, quick: bool, reporter, info: dict, focus=None) -> Result:
    """Measure the ``gpu`` section on CUDA ``device``; ``info`` from ``device_info``."""
    plan = point_plan(quick)
    meas: dict = {}
    values: dict = {"name": info["name"], "count": int(info["count"]),
                    "memory_GiB": sig(info["total_bytes"] / GiB, 5),
                    "reserved_GiB": sig((info["total_bytes"] - info["free_bytes"]) / GiB, 4)}
    with torch.cuda.device(device):
        reporter.advance(0, 6, "HBM copy")
        hbm = hbm_bandwidth(torch, device, quick)
        largest = max(hbm)
        values["hbm_GBps"] = sig(2 * largest / hbm[largest].median / GB)
        meas["hbm"] = {"counted": "bytes read + bytes written (2 x size)", "unit": "us",
                       "points": [{"size_bytes": s, "GBps": sig(2 * s / v.median / GB), **v.as_dict(1e6)}
                                  for s, v in sorted(hbm.items())]}

        reporter.advance(1, 6, "peak GEMM")
        meas["peak"] = {}
        for d in ("fp16", "bf16"):
            s, err = ops.matmul_square(torch, device, d, PEAK_N, peak_plan(quick))
            values[f"{d}_TFLOPs"] = sig(ops.flops_rate(PEAK_N, PEAK_N, PEAK_N, s.median) / 1e12)
            meas["peak"][d] = {"shape": [PEAK_N] * 3, "rel_error_vs_fp64": sig(err, 3), "unit": "us",
                               "TFLOPs": values[f"{d}_TFLOPs"], **s.as_dict(1e6)}
        torch.cuda.empty_cache()
        for d in ("int8", "fp8"):
            try:
                s = low_precision_peak(torch, device, d, PEAK_N)
            except Exception as e:  # unsupported by this torch or GPU: absent, never zero
                meas["peak"][d] = {"absent": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}
                continue
            finally:
                torch.cuda.empty_cache()
            values[f"{d}_TFLOPs"] = sig(ops.flops_rate(PEAK_N, PEAK_N, PEAK_N, s.median) / 1e12)
            meas["peak"][d] = {"shape": [PEAK_N] * 3, "unit": "us", "TFLOPs": values[f"{d}_TFLOPs"], **s.as_dict(1e6)}

        reporter.advance(2, 6, "kernel launch")
        launch = launch_overhead(torch, device, quick)
        values["kernel_launch_us"] = sig(launch["host"].median * 1e6)
        meas["launch"] = {"host_per_kernel": launch["host"].as_dict(1e6), "unit": "us",
                          "method": "x.add_(c) on a one-element tensor, a loop of launches then synchronize"}
        if "graph" in launch:
            meas["launch"]["graph_gpu_per_kernel"] = launch["graph"].as_dict(1e6)
        else:
            meas["launch"]["graph_error"] = launch["graph_error"]

        reporter.advance(3, 6, "decode attention")
        grid = list(focus.attn_grid) if focus else shapes.attention_grid("gpu_quick" if quick else "gpu_full")
        H, D = (focus.attn_heads, focus.attn_head_dim) if focus else (shapes.ATTN_HEADS, shapes.ATTN_HEAD_DIM)
        KV = (focus.attn_kv_heads or H) if focus else H
        att, att_skipped = ops.decode_attention(torch, device, grid, "fp16", plan, Deadline(ATTENTION_BUDGET_S[quick]),
                                                SubReporter(reporter, 3, 4, 6), heads=H, head_dim=D, kv_heads=KV)
        if att:
            values["decode_attention_table"] = ops.attention_rows(att, "fp16", 2, H, D, KV)
        meas["decode_attention"] = {"kernel": "torch.nn.functional.scaled_dot_product_attention, one query token",
                                    "repeat_plan": plan, "skipped_for_time_or_memory": att_skipped}

        reporter.advance(4, 6, "GEMM table")
        if focus:
            table, skipped = ops.focused_table(torch, device, focus, plan, SubReporter(reporter, 4, 6, 6))
            staged, staged_skipped = ops.staged_table(torch, device, focus, plan, SubReporter(reporter, 4, 6, 6))
            if staged:
                values["staged_matmul_table"] = ops.matmul_rows(staged)
                meas["staged_matmul_table"] = {"rotate_bytes": focus.staged_bytes, "skipped": staged_skipped}
        else:
            m_list = shapes.GPU_M_QUICK if quick else shapes.GPU_M_FULL
            table, skipped = ops.matmul_table(torch, device, ("fp16", "bf16"), shapes.gpu_shapes(quick), m_list,
                                              plan, Deadline(GEMM_TABLE_BUDGET_S[quick]), SubReporter(reporter, 4, 6, 6))
        rows = ops.matmul_rows(table)
        if rows:
            values["matmul_table"] = rows
        fit = ops.gemm_memory_fit(table)
        if fit:
            values["gemm_memory_GBps"] = sig(fit[0] / GB)
            if fit[1] > 0:
                values["gemm_fixed_us"] = sig(fit[1] * 1e6)
        meas["matmul_table"] = {"repeat_plan": plan, "rotate_bytes": (focus.rotate_bytes if focus else 0) or ops.rotation_bytes(device), "skipped": skipped,
                                "timing": "inner back-to-back GEMMs between CUDA events per sample"}
    return Result(values=values, measurements=meas,
                  machine={"gpu": info["name"], "gpu_count": info["count"], "driver": info.get("driver"),
                           "compute_capability": info.get("capability"), "sm_count": info.get("sm_count"),
                           "gpu_memory_bytes": info["total_bytes"]})
