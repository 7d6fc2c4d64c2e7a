"""Cross-checks of a profile's headline figures against independent torch measurements.

The independent measurements share no code with the profilers: fresh buffers, no rotation,
no spin kernel, no CUDA events; a plain loop of ``repeats`` operations between two
synchronizations, timed with ``time.perf_counter`` (the loop is long enough, >= 0.1 s,
that the clock's and the synchronization's overheads are under 0.1%). Each check is
taken twice in the same run: the profiler's own code path again ("profiler now") and the
independent loop, so a ratio far from 1 points at the method, not at the machine's drift.

GPU: pinned 1 GiB host->device rate (GB/s) and the 8192^3 fp16 GEMM rate (TFLOP/s).
CPU-only equivalents: the 1 GiB RAM copy's payload rate (``cpu.memcpy_GBps``) and the
fp32 n^3 GEMM rate (``cpu.fp32_GFLOPs``, n as recorded in the profile). The copy size and
the GEMM size are parameters only so that the dry run of ``scripts/gpu_check.sh`` can take
the same path with small ones on ``hardware_profiles.fakecuda``.
"""

from __future__ import annotations

import time

from simulator.units import GB, GiB

TOLERANCE = 0.05


def independent_h2d_GBps(torch, device, size: int = GiB, repeats: int = 10) -> float:
    """Payload GB/s of ``repeats`` pinned host->device copies of ``size`` bytes in a loop."""
    src = torch.rand(size // 4, pin_memory=True)
    dst = torch.empty(size // 4, device=device)
    for _ in range(2):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)
    return size * repeats / (time.perf_counter() - t0) / GB


def independent_matmul_rate(torch, device, n: int, dtype, repeats: int) -> float:
    """FLOP/s of ``repeats`` n^3 GEMMs (random operands) in a loop."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2.0 * n**3 * repeats / (time.perf_counter() - t0)


def independent_copy_GBps(torch, size: int = GiB, repeats: int = 5) -> float:
    """Payload GB/s of ``repeats`` RAM-to-RAM tensor copies of ``size`` bytes."""
    src = torch.rand(size // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    return size * repeats / (time.perf_counter() - t0) / GB


def profiler_h2d_GBps(torch, device, size: int = GiB) -> float:
    """The links profiler's own measurement of one pinned H2D size (median, GB/s)."""
    from hardware_profiles import pcie

    pools = pcie.Pools(torch, device, size, pageable=False)
    with torch.cuda.device(device):
        s = pcie.time_copy(torch, pools, "h2d", "pinned", size, pcie.repeat_plan(False), None)
    del pools
    return size / s.median / GB


def profiler_matmul_rate(torch, device, dtype_name: str, n: int, quick: bool = False) -> float:
    """The GPU/CPU profilers' own peak-GEMM measurement (FLOP/s)."""
    from hardware_profiles import gpu, ops

    plan = gpu.peak_plan(quick) if device.type == "cuda" else {"warmup": 1, "min_repeats": 5, "max_repeats": 10,
                                                               "budget_s": 1.0}
    s, _ = ops.matmul_square(torch, device, dtype_name, n, plan)
    return ops.flops_rate(n, n, n, s.median)


def profiler_copy_GBps(torch, size: int = GiB) -> float:
    from hardware_profiles import cpu

    s = cpu.copy_bandwidth(torch, size, {"warmup": 2, "min_repeats": 5, "max_repeats": 20, "budget_s": 1.5})
    return size / s.median / GB


def _size_label(nbytes: int) -> str:
    return f"{nbytes // GiB}GiB" if nbytes % GiB == 0 else f"{nbytes // 2**20}MiB"


def h2d_figure(nbytes: int = GiB) -> str:
    return f"h2d_pinned_{_size_label(nbytes)}_GBps"


def gemm_figure(n: int = 8192) -> str:
    return f"fp16_{n}_TFLOPs"


def file_figures(path, h2d_bytes: int = GiB) -> dict:
    """The headline figures of a profile file: {figure: value} in the checks' units
    (the pinned H2D rate measured at ``h2d_bytes``, the peak fp16 GEMM rate)."""
    from hardware_profiles import pcie
    from simulator.errors import ProfileError
    from simulator.files import load_yaml, read_text

    doc = load_yaml(read_text(path, None, ProfileError), str(path), ProfileError)
    out = {}
    links = (doc.get("measurements") or {}).get("links") or {}
    rate = pcie.point_rate_bytes_per_s(links, "h2d_pinned", h2d_bytes)
    if rate:
        out[h2d_figure(h2d_bytes)] = rate / GB
    if "gpu" in doc:
        shape = (((doc.get("measurements") or {}).get("gpu") or {}).get("peak") or {}).get("fp16", {}).get("shape")
        out[gemm_figure(shape[0] if shape else 8192)] = doc["gpu"]["fp16_TFLOPs"]
    cpu = doc.get("cpu", {})
    if "memcpy_GBps" in cpu:
        out["cpu_memcpy_GBps"] = cpu["memcpy_GBps"]
    if "fp32_GFLOPs" in cpu:
        out["cpu_fp32_GFLOPs"] = cpu["fp32_GFLOPs"]
        shape = (((doc.get("measurements") or {}).get("cpu") or {}).get("peak") or {}).get("fp32", {}).get("shape")
        out["cpu_fp32_n"] = shape[0] if shape else 2048
    return out


def run_checks(torch, device, profile_path=None, h2d_bytes: int = GiB, gemm_n: int = 8192) -> dict:
    """Rows {figure, unit, profile (from the file or None), profiler_now, independent,
    ratios} for the GPU figures (CUDA ``device``: pinned H2D of ``h2d_bytes``, fp16
    ``gemm_n``^3 GEMM) or the CPU equivalents."""
    figs = file_figures(profile_path, h2d_bytes) if profile_path else {}
    rows = []
    if device.type == "cuda":
        h2d, gemm = h2d_figure(h2d_bytes), gemm_figure(gemm_n)
        rows.append((h2d, "GB/s", figs.get(h2d), profiler_h2d_GBps(torch, device, h2d_bytes),
                     independent_h2d_GBps(torch, device, h2d_bytes)))
        rows.append((gemm, "TFLOP/s", figs.get(gemm), profiler_matmul_rate(torch, device, "fp16", gemm_n) / 1e12,
                     independent_matmul_rate(torch, device, gemm_n, torch.float16, 60) / 1e12))
        skipped = None
    else:
        n = figs.get("cpu_fp32_n", 2048)
        rows.append(("cpu_memcpy_GBps", "GB/s", figs.get("cpu_memcpy_GBps"), profiler_copy_GBps(torch),
                     independent_copy_GBps(torch)))
        rows.append(("cpu_fp32_GFLOPs", "GFLOP/s", figs.get("cpu_fp32_GFLOPs"),
                     profiler_matmul_rate(torch, device, "fp32", n) / 1e9,
                     independent_matmul_rate(torch, device, n, torch.float32, 10) / 1e9))
        skipped = "GPU checks skipped: no CUDA device (CPU equivalents instead)"
    out = []
    for name, unit, in_file, now, indep in rows:
        row = {"figure": name, "unit": unit, "profile": in_file, "profiler_now": now, "independent": indep,
               "ratio_now": now / indep}
        if in_file is not None:
            row["ratio_profile"] = in_file / indep
        row["ok"] = all(abs(row[k] - 1) <= TOLERANCE for k in ("ratio_now", "ratio_profile") if k in row)
        out.append(row)
    return {"device": str(device), "tolerance": TOLERANCE, "rows": out, "skipped": skipped,
            "ok": all(r["ok"] for r in out)}
