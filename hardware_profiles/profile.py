"""Orchestration of ``llmsim profile``: run the profilers, assemble the YAML profile with its
metadata and raw measurements, validate it with the planner's own loader, and write it
atomically.

Order: the GPU's memory is read first (before anything is allocated on it), then the
host<->GPU links, the GPU, the CPU, the disk and the interconnect. A CPU-only machine gets
a profile with ``cpu`` and ``disk`` and no ``gpu`` or ``links`` (the planner then treats the
host as the device). A section that cannot be measured is absent, and
``measurements.absent`` says why; nothing is ever written as zero.

Writing: the YAML goes to a temporary file in the destination's directory, is flushed and
fsynced, loaded with ``simulator.hardware.load_profile`` (strict schema), and only then
renamed over the destination (``os.replace``, atomic on POSIX). Any error or Ctrl-C
before the rename removes the temporary file, so a half-written profile never exists.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from hardware_profiles import cpu as cpu_prof
from hardware_profiles import devices, disk, gpu, interconnect, pcie
from hardware_profiles.timing import Reporter, Result, sig
from simulator.errors import ProfileError
from simulator.hardware import SCHEMA_VERSION, HardwareProfile, load_profile

DEFAULT_OUT = "llmsim-profile.yaml"
# Expected seconds per section, only to move the progress bar evenly.
WEIGHTS = {
    True: {"gpu info": 1, "links": 5, "gpu": 30, "cpu": 15, "disk": 3, "interconnect": 1},
    False: {"gpu info": 1, "links": 30, "gpu": 150, "cpu": 90, "disk": 25, "interconnect": 15},
}

METHOD = (
    "Measured by llmsim profile (hardware_profiles/). Every figure is the median of repeated "
    "timings after warm-up runs that are discarded; p10/p90 and raw samples are under measurements. "
    "GPU work is timed with CUDA events behind a spin kernel; host work and pageable copies with the "
    "wall clock between synchronizations. Inputs are random, never zeros; buffers rotate beyond the "
    "caches. links: H2D, D2H and both at once over 64 KiB..1 GiB, pinned and pageable; *_GBps and "
    "*_latency_us are the least-squares fit of time = latency + bytes / bandwidth (relative residuals). "
    "gpu: HBM = device copy, bytes read + written; TFLOPs = 8192^3 GEMM; matmul_table = the model "
    "presets' layer GEMMs over m; decode attention = SDPA over batch x context; kernel_launch_us = "
    "host cost per launch. cpu: memory_GBps = multi-threaded copy, read + written; memcpy_GBps = the "
    "same copy's payload rate; GFLOPs = n^3 GEMM; op_overhead_us = one tiny torch op. disk: O_DIRECT "
    "sequential passes with page-aligned buffers, fdatasync inside write timings, 64 MiB blocks for "
    "the headline figures; cached = re-reads from / writes into the page cache. interconnect: NCCL "
    "all-reduce fit on bus bytes (nccl-tests' busbw convention)."
)


@dataclass(frozen=True)
class Options:
    out: Path
    quick: bool
    device: str | None
    disk_dir: Path
    force: bool
    focus: object = None  # shapes.Focus: measure the GEMMs and attention geometry of given models
    note: str = ""  # appended to metadata.notes (who ran the profile and for what)


def check_out(out: str | os.PathLike | None, force: bool) -> Path:
    """The destination, checked before anything is measured. ProfileError naming --out."""
    import stat

    from simulator.files import check_output_dir, kind_of, stat_path
    p = Path(out if out is not None else DEFAULT_OUT).expanduser()
    st = stat_path(p, "--out", ProfileError)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise ProfileError(f"--out {str(p)!r}: is a directory; give a file name such as {p / DEFAULT_OUT}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ProfileError(f"--out {str(p)!r}: is {kind_of(st.st_mode)}, not a regular file")
    if st is not None and not force:
        raise ProfileError(f"--out {str(p)!r}: file exists; pass --force to overwrite it")
    if p.suffix not in (".yaml", ".yml"):
        raise ProfileError(f"--out {str(p)!r}: a profile file must end in .yaml or .yml")
    if len(os.fsencode(p.name)) > 255:
        raise ProfileError(f"--out {str(p)!r}: file name too long ({len(os.fsencode(p.name))} bytes; at most 255)")
    parent = p.parent if str(p.parent) else Path(".")
    pst = stat_path(parent, "--out", ProfileError)
    if pst is None or not stat.S_ISDIR(pst.st_mode):
        raise ProfileError(f"--out {str(p)!r}: directory {str(parent)!r} does not exist")
    check_output_dir(parent, f"--out {str(p)!r}: directory", ProfileError)
    return p


def check_options(out, quick: bool, device: str | None, disk_dir, force: bool, focus=None, note: str = "") -> Options:
    """Validate every flag that can be validated without torch (fail before measuring)."""
    path = check_out(out, force)
    if disk_dir is None:
        ddir = disk.check_dir(path.parent if str(path.parent) else ".",
                              flag="--disk-dir (default: the --out directory)")
    else:
        ddir = disk.check_dir(disk_dir)
    return Options(out=path, quick=bool(quick), device=device, disk_dir=ddir, force=bool(force), focus=focus,
                   note=str(note))


# ------------------------------------------------------------------ assembling
def versions(torch) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        from importlib.metadata import version
        out["llmsim"] = version("llmsim")
    except Exception:  # not installed as a distribution (a source checkout)
        pass
    import numpy
    out["numpy"] = numpy.__version__
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        try:
            out["cudnn"] = str(torch.backends.cudnn.version())
        except Exception:
            pass
        try:
            nccl = torch.cuda.nccl.version()
            out["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except Exception:
            pass
    return out


def plain(obj):
    """Plain Python for yaml.safe_dump: numpy scalars -> float/int, tuples -> lists, str subclasses -> str."""
    if isinstance(obj, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, str):
        return str(obj)  # str subclasses (torch's TorchVersion) are not safe_dump-able
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def assemble(name: str, results: dict[str, Result], meta: dict) -> dict:
    """The profile document from section results: sections in schema order, then
    ``measurements`` with every section's raw data and the reasons for absent sections."""
    doc = {"schema_version": SCHEMA_VERSION, "name": name, "metadata": meta}
    for section in ("gpu", "cpu", "disk", "links", "interconnect"):
        r = results.get(section)
        if r is not None and r.values is not None:
            doc[section] = r.values
    measurements = {sec: r.measurements for sec, r in results.items() if r.measurements}
    absent = {sec: r.absent for sec, r in results.items() if r.values is None and r.absent}
    if absent:
        measurements["absent"] = absent
    doc["measurements"] = measurements
    return plain(doc)


def to_yaml(doc: dict, header: str = "") -> str:
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110, allow_unicode=False)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    return ("\n".join(lines) + "\n" if lines else "") + body


def write_profile(doc: dict, out: Path, force: bool, header: str = "") -> HardwareProfile:
    """Write ``doc`` to ``out`` atomically (``simulator.files.atomic_write``: a unique
    temporary name beside ``out``, fsync, rename) after loading the temporary file with the
    strict loader; any failure, or Ctrl-C, before the rename removes the temporary file."""
    from simulator.files import atomic_write
    text = to_yaml(doc, header)
    loaded = {}

    def check(tmp: Path) -> None:
        try:
            loaded["profile"] = load_profile(tmp)
        except ProfileError as e:
            raise ProfileError(f"the measured profile does not validate, nothing written: {e}") from None
        if out.exists() and not force:
            raise ProfileError(f"--out {str(out)!r}: file exists; pass --force to overwrite it")

    atomic_write(out, text, "--out", check=check)
    return loaded["profile"]


def cpu_snapshot() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its
    finished children) from /proc/stat and os.times(); None where /proc is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / hz  # user..steal
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def interference(before, after, elapsed_s: float, cpus: int) -> float | None:
    """Share of the machine's CPU time used by *other* processes while profiling (0..1).
    Other work steals cores from multi-threaded measurements (a preempted OpenMP thread
    stalls the whole GEMM), so the profile records it and warns above ``BUSY_WARN``."""
    if before is None or after is None or elapsed_s <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return min(1.0, max(0.0, others / (elapsed_s * max(cpus, 1))))


BUSY_WARN = 0.1


def _run_section(name: str, fn, required: bool):
    """Run one profiler. Ctrl-C and ProfileError pass through; another failure of a
    required section becomes a one-line ProfileError, of an optional one an absent section."""
    try:
        return fn()
    except (KeyboardInterrupt, ProfileError):
        raise
    except Exception as e:
        msg = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
        if required:
            raise ProfileError(f"llmsim profile: the {name} profiler failed ({msg}); nothing written") from e
        return Result(values=None, measurements={"error": msg}, absent=f"the {name} profiler failed: {msg}")


def measure_all(opts: Options, torch, device, reporter: Reporter) -> tuple[dict, dict, float]:
    """Run every profiler for ``device``; returns (results by section, machine facts, seconds)."""
    t0 = time.perf_counter()
    snap = cpu_snapshot()
    results: dict[str, Result] = {}
    machine: dict = {"hostname": socket.gethostname(), "os": platform.platform(), "python": sys.version.split()[0]}
    on_gpu = device.type == "cuda"
    if on_gpu:
        reporter.section("gpu info")
        info = _run_section("gpu", lambda: gpu.device_info(torch, device), True)
        reporter.section("links")
        results["links"] = _run_section("links", lambda: pcie.measure(torch, device, opts.quick, reporter), True)
        reporter.section("gpu")
        results["gpu"] = _run_section("gpu", lambda: gpu.measure(torch, device, opts.quick, reporter, info, opts.focus), True)
    else:
        reason = ("--device cpu was given" if torch.cuda.is_available() else "no CUDA device on this machine")
        results["gpu"] = Result(values=None, measurements={}, absent=reason)
        results["links"] = Result(values=None, measurements={}, absent=reason)
    reporter.section("cpu")
    storage = "fp16" if on_gpu else "fp32"
    results["cpu"] = _run_section(
        "cpu", lambda: cpu_prof.measure(torch, opts.quick, reporter, storage, not on_gpu, opts.focus), True)
    reporter.section("disk")
    results["disk"] = _run_section(
        "disk", lambda: disk.measure(opts.disk_dir, opts.quick, reporter, torch if on_gpu else None, device), True)
    reporter.section("interconnect")
    gpus = torch.cuda.device_count() if on_gpu else 0
    results["interconnect"] = _run_section(
        "interconnect", lambda: interconnect.measure(torch, opts.quick, reporter, gpus), False)
    for r in results.values():
        machine.update(r.machine or {})
    reporter.finish()
    elapsed = time.perf_counter() - t0
    busy = interference(snap, cpu_snapshot(), elapsed, cpu_prof.cpu_count())
    machine["other_processes_cpu_frac"] = None if busy is None else sig(busy, 3)
    return results, machine, elapsed


def metadata(opts: Options, results: dict, machine: dict, torch, device, elapsed_s: float) -> dict:
    absent = {sec: r.absent for sec, r in results.items() if r.values is None and r.absent}
    notes = [f"{'--quick run' if opts.quick else 'full run'} on {device} in {elapsed_s:.0f} s."]
    if absent:
        notes.append("Absent sections: " + "; ".join(f"{k} ({v})" for k, v in absent.items()) + ".")
    cpu_meas = results["cpu"].measurements
    att = cpu_meas["decode_attention"]
    notes.append(f"CPU decode attention stores the cache in {att['storage_dtype']}"
                 f"{' and upcasts it to fp32' if att['upcast_to_fp32_in_timed_call'] else ''}.")
    notes.append(f"CPU GEMM tables for: {', '.join(cpu_meas['fast_dtypes'])}.")
    if opts.note:
        notes.append(opts.note)
    busy = machine.get("other_processes_cpu_frac")
    if busy is not None and busy > BUSY_WARN:
        notes.append(f"WARNING: other processes used {100 * busy:.0f}% of the CPUs while profiling; "
                     "CPU figures may be low. Profile again on an idle machine.")
    return {
        "source": "measured",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "method": METHOD,
        "notes": " ".join(notes),
        "machine": machine,
        "versions": versions(torch),
    }


def section_weights(quick: bool, on_gpu: bool) -> dict:
    """Progress-bar weights of the sections that will run."""
    return {k: v for k, v in WEIGHTS[quick].items() if on_gpu or k not in ("gpu info", "links", "gpu")}


def profile_machine(opts: Options, make_reporter=None, torch=None) -> tuple[HardwareProfile, dict]:
    """Measure this machine and write ``opts.out``. Returns (loaded profile, JSON summary).

    ``make_reporter(weights)`` returns a context manager yielding a ``Reporter`` (default:
    a silent one)."""
    import contextlib

    torch = torch or devices.import_torch()
    device = devices.resolve_device(torch, opts.device)
    weights = section_weights(opts.quick, device.type == "cuda")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cm = make_reporter(weights) if make_reporter else contextlib.nullcontext(Reporter(weights))
    with cm as reporter:
        results, machine, elapsed = measure_all(opts, torch, device, reporter)
    meta = metadata(opts, results, machine, torch, device, elapsed)
    doc = assemble(opts.out.stem, results, meta)
    doc["measurements"]["run"] = {"started_utc": started, "elapsed_s": sig(elapsed, 3), "quick": opts.quick,
                                  "device": str(device), "disk_dir": str(opts.disk_dir)}
    header = (f"Measured by `llmsim profile{' --quick' if opts.quick else ''}` on {machine['hostname']} "
              f"({device}), {started}.\nKey figures are medians; see metadata.method and measurements.")
    busy = machine.get("other_processes_cpu_frac")
    if busy is not None and busy > BUSY_WARN:
        sys.stderr.write(f"warning: other processes used {100 * busy:.0f}% of the CPUs while profiling; "
                         "CPU figures may be low\n")
    profile = write_profile(doc, opts.out, opts.force, header)
    summary = {
        "path": str(opts.out), "name": profile.name, "quick": opts.quick, "device": str(device),
        "elapsed_s": round(elapsed, 1), "other_processes_cpu_frac": busy,
        "sections": [s for s in ("gpu", "cpu", "disk", "links", "interconnect") if s in doc],
        "absent": {s: r.absent for s, r in results.items() if r.values is None and r.absent},
        "figures": profile.summary(),
    }
    return profile, summary
