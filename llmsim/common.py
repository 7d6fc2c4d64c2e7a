"""What the commands share: strict JSON on stdout, the console, loading the inputs, and the
flags that more than one command takes."""

from __future__ import annotations

import json
import math
import sys
from typing import Optional


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "value"):
        return o.value
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o):
    """Replace non-finite floats by None so the output is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(_clean(obj), default=_json_default, indent=2, allow_nan=False) + "\n")


def console():
    from rich.console import Console
    return Console(highlight=False, soft_wrap=False, width=max(100, Console().width))


def build_policy(gpu_batch_size, num_gpu_batches, weights, cache, activations, cpu_attention, compress_weights,
                 compress_cache, no_overlap, disk_io, dtype, tp=1, pp=1, dp=1, expert_offload="prefetch"):
    from simulator.policy import Placement, Policy
    return Policy(expert_offload=expert_offload,
        gpu_batch_size=gpu_batch_size, num_gpu_batches=num_gpu_batches,
        weights=Placement.parse_percent(weights, "--weights"), cache=Placement.parse_percent(cache, "--cache"),
        activations=Placement.parse_percent(activations, "--activations"), cpu_attention=cpu_attention,
        compress_weights=compress_weights, compress_cache=compress_cache, overlap=not no_overlap,
        disk_io=disk_io, dtype=dtype, tp=tp, pp=pp, dp=dp)


def load_inputs(model: str, hardware: str):
    from simulator.hardware import load_profile
    from simulator.models import get_model
    return get_model(model), load_profile(hardware)


def check_writable_dir(path: str, flag: str) -> None:
    """Fail before any work when ``path`` cannot hold output files; creates the folder
    (for folders the command works in, such as --offload-dir)."""
    from simulator.files import check_output_dir as check, make_dirs
    make_dirs(check(path, flag), flag)


MAX_SIZE_BYTES = 2.0**60  # 1 EiB: more memory or disk than any one machine has


def size_flag(value: Optional[str], flag: str) -> Optional[float]:
    """A capacity flag (``--gpu-mem 12GiB``; a bare number is GiB) in bytes: finite, at
    least 1 byte and at most 1 EiB."""
    if value is None:
        return None
    from simulator.errors import PolicyError
    from simulator.units import parse_size
    try:
        n = parse_size(value, default_unit="GiB")
    except ValueError as e:
        raise PolicyError(f"{flag}: {e}") from None
    if not math.isfinite(n) or n < 1 or n > MAX_SIZE_BYTES:
        raise PolicyError(f"{flag} {value!r}: a size must be at least 1 byte and at most 1 EiB "
                          f"(2**30 GiB), got {n:g} bytes")
    return n


class Progress:
    """Progress of a long command on stderr: a live status line where stderr is a terminal, one
    line per stage otherwise (logs, CI). Call with the stage's text; use as a context manager."""

    def __init__(self, what: str):
        from rich.console import Console
        self._con = Console(stderr=True, highlight=False)
        self._what = what
        self._status = None

    def __enter__(self):
        if self._con.is_terminal:
            self._status = self._con.status(self._what)
            self._status.__enter__()
        return self

    def __call__(self, text: str) -> None:
        if self._status is not None:
            self._status.update(f"{self._what}: {text}")
        else:
            self._con.print(f"{self._what}: {text}")

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)
        return False


def count_flag(value: Optional[int], flag: str, maximum: int) -> Optional[int]:
    """A count flag (``--threads``, ``--repeats``): None, or an integer in 1..maximum."""
    from simulator.errors import PolicyError
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise PolicyError(f"{flag} must be a positive integer (at most {maximum}), got {value!r}")
    return value


def check_output_dir(path: str, flag: str) -> list:
    """Fail before any work when folder ``path`` cannot be created or written; creates
    nothing. Returns the folders still to create (``simulator.files.check_output_dir``)."""
    from simulator.files import check_output_dir as check
    return check(path, flag)
