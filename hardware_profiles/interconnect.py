"""Between processes and GPUs: the ``interconnect`` section (two or more GPUs) and the gloo
figures kept in ``measurements.interconnect`` (any machine).

Method (in the spirit of nccl-tests)
-----------------------------------
One process per rank (``torch.multiprocessing``, spawn), ``torch.distributed`` with NCCL
over the GPUs, or with gloo over CPU tensors (two processes on one host: what a CPU
process group achieves, through shared memory or loopback TCP). For message sizes on a log
sweep, each rank runs ``inner`` operations back to back between two barriers-and-
synchronizes; the time of one operation is the slowest rank's median. Random fp32 data.

* all-reduce (sum): ``algbw = bytes / time``; ``busbw = algbw x 2 (n - 1) / n``, the
  bytes each rank's link carries in a ring (nccl-tests' convention), so busbw compares
  with the link's bandwidth whatever n is.
* send/recv: rank 0 sends to rank 1, ``algbw = busbw = bytes / time``.

The profile's ``interconnect.intra_node_GBps`` and ``intra_node_latency_us`` are the fit
of ``time = latency + bus_bytes / bandwidth`` to the all-reduce points (bus bytes =
``2 (n-1)/n x bytes``), so the planner's ring formula reproduces the measured times. With
fewer than two GPUs the section is absent (never zero).
"""

from __future__ import annotations

import datetime
import os
import queue as queue_mod
import shutil
import subprocess
import tempfile
import time

from hardware_profiles.timing import Result, fit_latency_bandwidth, sig, summarize
from simulator.units import GB, KiB, MiB

SIZES = {  # by (backend, quick)
    ("nccl", False): tuple(64 * KiB * 4**i for i in range(8)),  # 64 KiB .. 1 GiB
    ("nccl", True): tuple(MiB * 8**i for i in range(4)),  # 1 MiB .. 512 MiB
    ("gloo", False): tuple(64 * KiB * 4**i for i in range(6)),  # 64 KiB .. 64 MiB
    ("gloo", True): (64 * KiB, 4 * MiB),
}
TIMEOUT_S = 180


def bus_factor(op: str, world: int) -> float:
    """busbw / algbw: ``2 (n-1) / n`` for a ring all-reduce, 1 for point-to-point."""
    return 2.0 * (world - 1) / world if op == "all_reduce" else 1.0


def inner_for(size: int) -> int:
    """Operations per timed sample, the same on every rank (a deterministic function of
    the size, so that no rank waits on a collective the others never issue)."""
    return int(max(1, min(50, (8 * MiB) // size)))


def summarize_ops(world: int, results: dict) -> dict:
    """``measurements`` entry from {op: {size: [seconds per op per rank (slowest rank's
    samples)]}}: per size the median/p10/p90 time, algbw and busbw in GB/s."""
    out = {}
    for op, by_size in results.items():
        rows = []
        for size in sorted(by_size):
            s = summarize(by_size[size], f"{op} {size} B")
            alg = size / s.median
            rows.append({"size_bytes": size, "median_us": sig(s.median * 1e6), "p10_us": sig(s.p10 * 1e6),
                         "p90_us": sig(s.p90 * 1e6), "algbw_GBps": sig(alg / GB),
                         "busbw_GBps": sig(alg * bus_factor(op, world) / GB), "repeats": s.n})
        out[op] = rows
    return out


def section_values(world: int, summary: dict, link: str) -> tuple[dict, dict]:
    """``interconnect`` values (YAML units) and the fit, from ``summarize_ops`` output of NCCL."""
    rows = summary["all_reduce"]
    bus = [r["size_bytes"] * bus_factor("all_reduce", world) for r in rows]
    fit = fit_latency_bandwidth(bus, [r["median_us"] * 1e-6 for r in rows], "nccl all_reduce fit")
    values = {"gpus_per_node": world, "nodes": 1, "intra_node_link": link,
              "intra_node_GBps": sig(fit.bytes_per_s / GB), "intra_node_latency_us": sig(fit.latency_s * 1e6)}
    return values, fit.as_dict()


def _worker(rank: int, world: int, backend: str, init_file: str, sizes, repeats: int, out_q) -> None:
    """One rank: time all-reduce and send/recv over ``sizes``; rank 0 puts the slowest
    rank's samples {op: {size: [s]}} (or an error text) on ``out_q``."""
    import torch
    import torch.distributed as dist

    try:
        if backend == "gloo":
            torch.set_num_threads(1)
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S / 2))
        dev = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        gen = torch.Generator().manual_seed(rank + 1)
        results: dict = {"all_reduce": {}, "send_recv": {}}
        for size in sizes:
            x = torch.randn(size // 4, generator=gen).to(dev)
            inner = inner_for(size)
            for op in ("all_reduce", "send_recv"):
                def once():
                    if op == "all_reduce":
                        dist.all_reduce(x)
                    elif rank == 0:
                        dist.send(x, 1)
                    elif rank == 1:
                        dist.recv(x, 0)

                samples = []
                for rep in range(repeats + 2):  # two warm-up samples
                    dist.barrier()
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(inner):
                        once()
                    sync()
                    dt = (time.perf_counter() - t0) / inner
                    if op == "all_reduce":
                        x.div_(world ** inner)  # keep values finite; outside the timed region
                    if rep >= 2:
                        samples.append(dt)
                # The slowest rank decides: element-wise max of the samples over ranks.
                t = torch.tensor(samples, dtype=torch.float64, device=dev)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                results[op][size] = t.cpu().tolist()
        if rank == 0:
            out_q.put(("ok", results))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as e:  # reported by the parent; never hang it
        if rank == 0:
            out_q.put(("error", f"{type(e).__name__}: {e}"))
        raise


def run_group(backend: str, world: int, sizes, repeats: int, timeout_s: float = TIMEOUT_S) -> dict:
    """Spawn ``world`` ranks and return their results (see ``_worker``). Raises
    RuntimeError on a worker error or timeout; the processes are always ended."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out_q = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="llmsim-dist-") as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [ctx.Process(target=_worker, args=(r, world, backend, init_file, tuple(sizes), repeats, out_q),
                             daemon=True) for r in range(world)]
        for p in procs:
            p.start()
        try:
            status, payload = out_q.get(timeout=timeout_s)
        except queue_mod.Empty:
            raise RuntimeError(f"{backend}: no result within {timeout_s:.0f} s") from None
        finally:
            deadline = time.monotonic() + 10
            for p in procs:
                p.join(timeout=max(0.1, deadline - time.monotonic()))
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join(5)
    if status != "ok":
        raise RuntimeError(payload)
    return payload


def intra_node_link() -> str:
    """"nvlink" when ``nvidia-smi nvlink --status`` reports active links on GPU 0, else "pcie"."""
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "nvlink", "--status", "-i", "0"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and "GB/s" in out.stdout:
                return "nvlink"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "pcie"


def measure(torch, quick: bool, reporter, gpus: int) -> Result:
    """NCCL over ``gpus`` GPUs when there are two or more (else the section is absent) and,
    in a full run, gloo between two CPU processes (measurements only)."""
    meas: dict = {}
    values = None
    absent = None
    repeats = 5 if quick else 10
    if gpus >= 2 and torch.distributed.is_nccl_available():
        reporter.advance(0, 2, f"NCCL over {gpus} GPUs")
        raw = run_group("nccl", gpus, SIZES[("nccl", quick)], repeats)
        summary = summarize_ops(gpus, raw)
        link = intra_node_link()
        values, fit = section_values(gpus, summary, link)
        meas["nccl"] = {"world": gpus, **summary, "all_reduce_fit": fit}
    else:
        absent = "fewer than two GPUs" if gpus < 2 else "NCCL is not available in this torch"
    if quick:
        meas["gloo"] = {"absent": "skipped in --quick"}
    elif torch.distributed.is_gloo_available():
        reporter.advance(1, 2, "gloo between two CPU processes")
        raw = run_group("gloo", 2, SIZES[("gloo", quick)], repeats)
        meas["gloo"] = {"world": 2, "device": "cpu", **summarize_ops(2, raw)}
    else:
        meas["gloo"] = {"absent": "gloo is not available in this torch"}
    return Result(values=values, measurements=meas, absent=absent)
