"""Units: SI inside, human units only at the edges.

``GB = 1e9`` bytes and ``GiB = 2**30`` bytes both exist; every name says which it means.
Rates are bytes per second; ``GBps`` means 1e9 bytes/s.
"""

from __future__ import annotations

import math
import re

KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
KiB = 2**10
MiB = 2**20
GiB = 2**30
TiB = 2**40

US = 1e-6
MS = 1e-3

GFLOP = 1e9
TFLOP = 1e12

_SIZE_UNITS = {
    "b": 1,
    "kb": KB,
    "mb": MB,
    "gb": GB,
    "tb": TB,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
}

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, default_unit: str = "GiB") -> float:
    """Parse ``"16GiB"``, ``"1.5 TB"`` or a bare number (in ``default_unit``) into bytes.

    Raises ValueError with the offending text; callers wrap it with the flag or key name.
    """
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 16GiB, 1.5TB, 512MiB)")
    value = float(m.group(1))
    unit = (m.group(2) or default_unit).lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r}: unknown size unit {m.group(2)!r} (allowed: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    return value * _SIZE_UNITS[unit]


def format_bytes(n: float) -> str:
    """Binary units for memory sizes: ``format_bytes(3 * GiB) == '3.00 GiB'``."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{n:.0f} B"


def format_rate(bytes_per_s: float) -> str:
    """Decimal units for bandwidths, as link and disk vendors quote them."""
    for unit, size in (("TB/s", TB), ("GB/s", GB), ("MB/s", MB)):
        if bytes_per_s >= size:
            return f"{bytes_per_s / size:.2f} {unit}"
    return f"{bytes_per_s / KB:.2f} KB/s"


def format_duration(seconds: float) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.2f} min"
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


PERCENT_ZERO_FRAC = 1e-9  # a fraction this close to 0 (or to 1) prints as 0 (or 100): solver noise


def format_percent(frac: float) -> str:
    """A fraction 0..1 as a percent with sensible precision, the one formatter of every
    printed percent (CLI, report; JSON keeps fractions): whole percents from 10 to 90, one
    decimal below 10 and above 90 (a trailing ".0" dropped), "<0.1" and ">99.9" for what is
    not 0 or 100 but would round to it. ``format_percent(0.004821e-2) == '<0.1'``."""
    if frac is None or (isinstance(frac, float) and math.isnan(frac)):
        return "-"
    if frac <= PERCENT_ZERO_FRAC:
        return "0"
    if frac >= 1 - PERCENT_ZERO_FRAC:
        return "100"
    x = 100.0 * frac
    if x < 0.1:
        return "<0.1"
    if x > 99.9:
        return ">99.9"
    if 10 <= round(x, 1) and round(x, 1) <= 90:
        return f"{x:.0f}"
    text = f"{x:.1f}"
    return text[:-2] if text.endswith(".0") else text


_DURATION_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": MS, "us": US, "µs": US, "min": 60.0}
_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zµ]*)\s*$")


def parse_duration_s(text) -> float:
    """Parse ``"1s"``, ``"50ms"``, ``"200us"``, ``"2min"`` or a bare number (seconds) into
    seconds. Raises ValueError with the offending text; callers wrap it with the flag."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite duration")
        return value
    m = _DURATION_RE.match(str(text).lower())
    if not m or m.group(2) not in _DURATION_UNITS:
        raise ValueError(f"{text!r} is not a duration (examples: 1s, 50ms, 200us, 0.5)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def finite_float(value) -> float | None:
    """``value`` as a float when it is a number (int or float, not bool) whose float value is
    finite; None otherwise (strings, None, NaN, infinities, ints beyond the float range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None
