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
    """Fail before any work when ``path`` cannot hold output files."""
    import os
    import tempfile
    from simulator.errors import LlmsimError
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".llmsim-probe-"):
            pass
    except OSError as e:
        raise LlmsimError(f"{flag} {path}: cannot write: {e.strerror or e}") from None


def size_flag(value: Optional[str], flag: str) -> Optional[float]:
    if value is None:
        return None
    from simulator.errors import PolicyError
    from simulator.units import parse_size
    try:
        n = parse_size(value, default_unit="GiB")
    except ValueError as e:
        raise PolicyError(f"{flag}: {e}") from None
    if n <= 0:
        raise PolicyError(f"{flag} must be > 0, got {value!r}")
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
