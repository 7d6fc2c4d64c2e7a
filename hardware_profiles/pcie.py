"""Host<->GPU transfers: the ``links`` section of a profile.

Method (in the spirit of NVIDIA's nvbandwidth)
---------------------------------------------
* Directions: host->device (H2D), device->host (D2H), and both at once (one H2D and one
  D2H of the same size on two streams, started together; the rate counts both payloads).
* Host memory: pinned (page-locked, ``pin_memory=True``; the DMA engines read it directly)
  and pageable (ordinary memory; the driver stages it through its own pinned buffers).
* Sizes: 64 KiB to 1 GiB on a log sweep (powers of 2; ``--quick``: powers of 4, so the
  1 GiB point that ``hardware_profiles/check.py`` compares is in both). Each copy reads and writes a different slice of 1 GiB pools (rotating offsets),
  so small copies are not served from the host's last-level cache; pools hold random bytes.
* Timing: pinned copies with CUDA events around one copy, behind a spin kernel that hides
  the host's launch lag (``devices.event_time_s``); pageable copies, which the host performs
  synchronously, with the wall clock between two ``synchronize()`` calls. Warm-up copies are
  discarded; figures are medians with p10/p90 of the repeats.
* Fit: per direction and memory kind, ``time = latency + bytes / bandwidth`` by least
  squares on relative residuals (``timing.fit_latency_bandwidth``). The profile's
  ``*_GBps`` keys are the fitted bandwidths (1e9 bytes/s), ``*_latency_us`` the fitted
  latencies; the raw points and the fits are kept under ``measurements.pcie``.
* PCIe generation and width: read from nvidia-smi while a copy loop keeps the link busy
  (an idle link may train down to a lower generation to save power).
"""

from __future__ import annotations

import time

from hardware_profiles import devices
from hardware_profiles.timing import Result, Summary, collect, fit_latency_bandwidth, sig
from simulator.units import GB, KiB, MiB

SIZES_FULL = tuple(64 * KiB * 2**i for i in range(15))  # 64 KiB .. 1 GiB
SIZES_QUICK = tuple(64 * KiB * 4**i for i in range(8))  # 64 KiB .. 1 GiB
# (direction, memory kind) in measuring order; "both" is H2D and D2H at once.
KINDS = (("h2d", "pinned"), ("d2h", "pinned"), ("both", "pinned"), ("h2d", "pageable"), ("d2h", "pageable"))
RANDOM_BLOCK = 4 * MiB


def repeat_plan(quick: bool) -> dict:
    """Warm-up and repeat counts per size (the repeats stop at max or after budget_s)."""
    if quick:
        return {"warmup": 2, "min_repeats": 5, "max_repeats": 20, "budget_s": 0.08}
    return {"warmup": 3, "min_repeats": 10, "max_repeats": 50, "budget_s": 0.4}


def payload_bytes(direction: str, size: int) -> int:
    """Bytes a copy of ``size`` moves: both directions at once move two payloads."""
    return 2 * size if direction == "both" else size


def build(points: dict[str, tuple[list[int], list[Summary]]], pcie: dict | None = None) -> tuple[dict, dict]:
    """``links`` values and ``measurements.pcie`` from measured points.

    ``points``: ``"h2d_pinned"`` etc. -> (sizes in bytes, Summary of copy time in s per
    size). Required: h2d_pinned, d2h_pinned, both_pinned. ``pcie``: optional
    {"generation": int, "width": int}. Returns (values in YAML units, measurements).
    """
    fits, meas = {}, {}
    for key, (sizes, summaries) in points.items():
        direction = key.split("_")[0]
        moved = [payload_bytes(direction, s) for s in sizes]
        fit = fit_latency_bandwidth(moved, [s.median for s in summaries], what=f"pcie {key} fit")
        fits[key] = fit
        meas[key] = {
            "size_bytes": list(sizes),
            "moved_bytes": moved,
            "median_us": [sig(s.median * 1e6) for s in summaries],
            "p10_us": [sig(s.p10 * 1e6) for s in summaries],
            "p90_us": [sig(s.p90 * 1e6) for s in summaries],
            "GBps": [sig(b / s.median / GB) for b, s in zip(moved, summaries)],
            "repeats": [s.n for s in summaries],
            "samples_us": [[sig(x * 1e6) for x in s.samples] for s in summaries],
            "fit": fit.as_dict(),
        }
    values = {
        "h2d_pinned_GBps": sig(fits["h2d_pinned"].bytes_per_s / GB),
        "d2h_pinned_GBps": sig(fits["d2h_pinned"].bytes_per_s / GB),
        "duplex_pinned_GBps": sig(fits["both_pinned"].bytes_per_s / GB),
        "h2d_latency_us": sig(fits["h2d_pinned"].latency_s * 1e6),
        "d2h_latency_us": sig(fits["d2h_pinned"].latency_s * 1e6),
    }
    for key in ("h2d_pageable", "d2h_pageable"):
        if key in fits:
            values[f"{key}_GBps"] = sig(fits[key].bytes_per_s / GB)
    if pcie:
        if pcie.get("generation"):
            values["pcie_generation"] = int(pcie["generation"])
        if pcie.get("width"):
            values["pcie_width"] = int(pcie["width"])
    return values, meas


def point_rate_bytes_per_s(measurements: dict, key: str, size: int) -> float | None:
    """The measured (not fitted) rate of one size from ``measurements.pcie[key]``, or None."""
    m = measurements.get(key)
    if not m or size not in m["size_bytes"]:
        return None
    i = m["size_bytes"].index(size)
    return m["moved_bytes"][i] / (m["median_us"][i] * 1e-6)


class Pools:
    """Rotating host and device buffers (uint8) of ``pool`` bytes each, random contents:
    pinned host A/B, device A/B (B for the second direction of the duplex test), pageable."""

    def __init__(self, torch, device, pool: int, pageable: bool = True):
        self.torch, self.device, self.pool = torch, device, pool
        gen = torch.Generator().manual_seed(4)
        block = torch.randint(0, 256, (RANDOM_BLOCK,), dtype=torch.uint8, generator=gen)
        self.host_a = self._host(pool, True, block)
        self.host_b = self._host(pool, True, block)
        self.host_p = self._host(pool, False, block) if pageable else None
        self.dev_a = torch.randint(0, 256, (pool,), dtype=torch.uint8, device=device)
        self.dev_b = torch.randint(0, 256, (pool,), dtype=torch.uint8, device=device)
        torch.cuda.synchronize(device)

    def _host(self, n: int, pinned: bool, block):
        t = self.torch.empty(n, dtype=self.torch.uint8, pin_memory=pinned)
        for off in range(0, n, RANDOM_BLOCK):
            m = min(RANDOM_BLOCK, n - off)
            t[off:off + m].copy_(block[:m])
        return t

    def offsets(self, size: int):
        """Offsets cycling through the pool in steps of ``size`` (rotation beyond caches)."""
        slots = max(1, self.pool // size)
        i = 0
        while True:
            yield (i % slots) * size
            i += 1


def time_copy(torch, pools: Pools, direction: str, kind: str, size: int, plan: dict, streams) -> Summary:
    """Summary of the time (s) of one copy of ``size`` bytes; see the module docstring."""
    offs = pools.offsets(size)
    dev = pools.device

    if kind == "pageable":
        host = pools.host_p

        def sample():
            o = next(offs)
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            if direction == "h2d":
                pools.dev_a[o:o + size].copy_(host[o:o + size])
            else:
                host[o:o + size].copy_(pools.dev_a[o:o + size])
            torch.cuda.synchronize(dev)
            return time.perf_counter() - t0
    elif direction in ("h2d", "d2h"):
        def sample():
            o = next(offs)
            if direction == "h2d":
                src, dst = pools.host_a[o:o + size], pools.dev_a[o:o + size]
            else:
                src, dst = pools.dev_a[o:o + size], pools.host_a[o:o + size]
            return devices.event_time_s(torch, lambda: dst.copy_(src, non_blocking=True))
    else:  # both directions at once, on two streams
        s_up, s_down = streams

        def sample():
            o = next(offs)
            cur = torch.cuda.current_stream(dev)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            devices.spin(torch)
            start.record(cur)
            s_up.wait_stream(cur)
            s_down.wait_stream(cur)
            with torch.cuda.stream(s_up):
                pools.dev_a[o:o + size].copy_(pools.host_a[o:o + size], non_blocking=True)
            with torch.cuda.stream(s_down):
                pools.host_b[o:o + size].copy_(pools.dev_b[o:o + size], non_blocking=True)
            cur.wait_stream(s_up)
            cur.wait_stream(s_down)
            end.record(cur)
            end.synchronize()
            return start.elapsed_time(end) * 1e-3

    return collect(sample, what=f"pcie {direction} {kind} {size} B", **plan)


def read_link(torch, pools: Pools) -> dict:
    """PCIe generation and width from nvidia-smi, read while H2D copies keep the link busy.
    Empty when nvidia-smi is unavailable or reports N/A."""
    fields = ["pcie.link.gen.current", "pcie.link.gen.max", "pcie.link.width.current", "pcie.link.width.max"]
    wait = devices.nvidia_smi(fields, torch, pools.device, popen=True)
    proc = getattr(wait, "proc", None)
    t_end = time.perf_counter() + 10.0
    while proc is not None and proc.poll() is None and time.perf_counter() < t_end:
        pools.dev_a.copy_(pools.host_a, non_blocking=True)  # keep the link trained up until it answers
        torch.cuda.synchronize(pools.device)
    row = wait() or {}
    gen_cur, gen_max = devices.parse_int(row.get(fields[0])), devices.parse_int(row.get(fields[1]))
    w_cur, w_max = devices.parse_int(row.get(fields[2])), devices.parse_int(row.get(fields[3]))
    out = {"nvidia_smi": row} if row else {}
    # Under load the current generation is the trained one; the max is a fallback.
    if gen_cur or gen_max:
        out["generation"] = gen_cur or gen_max
    if w_cur or w_max:
        out["width"] = w_cur or w_max
    return out


def measure(torch, device, quick: bool, reporter) -> Result:
    """Measure the ``links`` section on CUDA ``device`` (see the module docstring)."""
    sizes = list(SIZES_QUICK if quick else SIZES_FULL)
    plan = repeat_plan(quick)
    free, _ = torch.cuda.mem_get_info(device)
    pool = sizes[-1]
    while 2 * pool > 0.5 * free and pool > sizes[0]:  # two device pools must fit comfortably
        pool //= 2
    sizes = [s for s in sizes if s <= pool]
    pools = Pools(torch, device, pool)
    streams = (torch.cuda.Stream(device), torch.cuda.Stream(device))
    points: dict[str, tuple[list[int], list[Summary]]] = {}
    steps, done = len(KINDS) * len(sizes), 0
    with torch.cuda.device(device):
        for direction, kind in KINDS:
            summaries = []
            for size in sizes:
                reporter.advance(done, steps, f"{direction} {kind} {size // KiB} KiB")
                summaries.append(time_copy(torch, pools, direction, kind, size, plan, streams))
                done += 1
            points[f"{direction}_{kind}"] = (sizes, summaries)
        # The last pinned H2D copy must have landed bit for bit (the copy is real work).
        probe = min(sizes[-1], MiB)
        pools.dev_a[:probe].copy_(pools.host_a[:probe], non_blocking=True)
        torch.cuda.synchronize(device)
        copied_ok = bool(torch.equal(pools.dev_a[:probe].cpu(), pools.host_a[:probe]))
        link = read_link(torch, pools)
    values, meas = build(points, link)
    meas["method"] = ("pinned: CUDA events around one copy behind a spin kernel; pageable: wall clock between "
                      "synchronize() calls; rotating slices of random-filled pools; warm-up excluded; "
                      "median and p10/p90 of repeats")
    meas["repeat_plan"] = plan
    meas["pool_bytes"] = pool
    meas["copy_verified"] = copied_ok
    machine = {}
    if link.get("generation"):
        machine["pcie"] = f"Gen{link['generation']} x{link.get('width', '?')}"
    if link.get("nvidia_smi"):
        machine["pcie_nvidia_smi"] = link["nvidia_smi"]
    del pools
    torch.cuda.empty_cache()
    release_pinned = getattr(torch._C, "_host_emptyCache", None)  # give the pinned pools back to the OS
    if release_pinned is not None:
        release_pinned()
    return Result(values=values, measurements=meas, machine=machine)
