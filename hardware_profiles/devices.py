"""torch import, ``--device`` validation and the CUDA timing primitives the profilers share.

CUDA work is asynchronous: a device-side region is timed with a pair of CUDA events
recorded on the stream around it (``event_time_s``). Before the start event a short spin
kernel (``torch.cuda._sleep``) is queued so that the host has enqueued the whole region
before the GPU reaches it; the events then time the GPU's work and not the host's launch
lag. Host-synchronous operations (pageable copies) are timed with the wall clock between
two ``synchronize()`` calls instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Callable

from simulator.errors import ProfileError

# ~50 us at 1.5-2 GHz: longer than the host needs to enqueue a few copies or kernels.
SPIN_CYCLES = 100_000


def import_torch():
    """torch, or a ProfileError saying how to install it (the planner itself runs without)."""
    try:
        import torch
    except ImportError:
        raise ProfileError("llmsim profile needs torch: pip install torch (CPU build or your CUDA build)") from None
    return torch


def resolve_device(torch, text: str | None):
    """``--device`` value -> torch.device. Accepts ``auto`` (cuda:0 when CUDA is usable,
    else cpu), ``cpu``, ``cuda`` and ``cuda:N``. Raises ProfileError naming the flag."""
    raw = "auto" if text is None else str(text).strip().lower()
    if raw in ("", "auto"):
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if raw == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", raw)
    if not m:
        raise ProfileError(f"--device: expected auto, cpu, cuda or cuda:N, got {text!r}")
    if not torch.cuda.is_available():
        raise ProfileError(f"--device {text}: no CUDA device is usable on this machine "
                           f"(torch {torch.__version__}); use --device cpu")
    index = int(m.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ProfileError(f"--device {text}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return torch.device(f"cuda:{index}")


def spin(torch) -> None:
    """Queue a busy-wait kernel on the current stream (no-op where torch lacks it)."""
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is not None:
        sleep(SPIN_CYCLES)


def event_time_s(torch, launch: Callable[[], object], inner: int = 1, stream=None) -> float:
    """GPU time of ``inner`` back-to-back calls of ``launch()`` divided by ``inner``, from
    CUDA events on ``stream`` (default: the current stream), after a spin kernel. Unit: s."""
    stream = stream or torch.cuda.current_stream()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        spin(torch)
        start.record(stream)
        for _ in range(inner):
            launch()
        end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) * 1e-3 / inner


def gpu_uuid(torch, device) -> str | None:
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    return str(uuid) if uuid is not None else None


def nvidia_smi(fields: list[str], torch=None, device=None, popen: bool = False):
    """Query ``nvidia-smi --query-gpu=<fields>`` for the GPU behind ``device``.

    The row is matched by UUID when torch reports one (CUDA and nvidia-smi may order GPUs
    differently), else by index. Returns {field: text} or None when nvidia-smi is missing or
    fails. With ``popen=True`` returns a callable that waits for a query started now, with
    the running process as its ``proc`` attribute (used to read the PCIe link state while
    a transfer keeps the link busy).
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return (lambda: None) if popen else None
    cmd = [exe, f"--query-gpu=uuid,{','.join(fields)}", "--format=csv,noheader,nounits"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return (lambda: None) if popen else None

    def finish():
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return None
        if proc.returncode != 0:
            return None
        rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]
        rows = [r for r in rows if len(r) == len(fields) + 1]
        if not rows:
            return None
        row = rows[0]
        if torch is not None and device is not None:
            uuid = gpu_uuid(torch, device)
            match = [r for r in rows if uuid and r[0].lower().endswith(uuid.lower().removeprefix("gpu-"))]
            if match:
                row = match[0]
            elif device.index is not None and device.index < len(rows):
                row = rows[device.index]
        return dict(zip(fields, row[1:]))

    finish.proc = proc  # the caller may poll it while it keeps the link busy
    return finish if popen else finish()


def parse_int(text) -> int | None:
    """A positive int from nvidia-smi's text ("16", "[N/A]" -> None)."""
    try:
        v = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None
