"""Statistics, fits and timing loops shared by the profilers. No torch here.

Conventions (see ``/work/shared/DESIGN.md``): every time is in seconds, every size in bytes,
every rate in bytes/s. A sample is one timed run of one operation after warm-up; samples
are never zero (a non-positive sample means the timer could not resolve the run, and is an
error rather than a value to average in). Figures are medians with the 10th and 90th
percentiles beside them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from simulator.errors import ProfileError


# ------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Summary:
    """Median and 10th/90th percentiles of positive samples (seconds or any other unit)."""

    median: float
    p10: float
    p90: float
    n: int
    samples: tuple[float, ...]

    def as_dict(self, scale: float = 1.0, digits: int = 4, samples: bool = True) -> dict:
        """Plain-Python mapping for YAML, values multiplied by ``scale`` (e.g. 1e6 for us)."""
        out = {"median": sig(self.median * scale, digits), "p10": sig(self.p10 * scale, digits),
               "p90": sig(self.p90 * scale, digits), "n": self.n}
        if samples:
            out["samples"] = [sig(s * scale, digits) for s in self.samples]
        return out


def summarize(samples: Sequence[float], what: str = "samples") -> Summary:
    """Median, p10 and p90 (linear interpolation between order statistics, numpy's default).

    Raises ProfileError when there is no sample or a sample is not a finite positive number.
    """
    arr = np.asarray(list(samples), dtype=float)
    if arr.size == 0:
        raise ProfileError(f"{what}: no samples were taken")
    bad = arr[~np.isfinite(arr) | (arr <= 0)]
    if bad.size:
        raise ProfileError(f"{what}: sample {bad[0]!r} is not a positive finite number (timer resolution?)")
    p10, med, p90 = np.percentile(arr, [10, 50, 90])
    return Summary(float(med), float(p10), float(p90), int(arr.size), tuple(float(x) for x in arr))


def sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits, as a plain float (for readable YAML)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


# ------------------------------------------------------------------ latency + bandwidth fit
@dataclass(frozen=True)
class LinearFit:
    """``time = latency_s + nbytes / bytes_per_s`` fitted to measured points.

    ``max_rel_residual`` is the largest ``|fit - measured| / measured`` over the points.
    """

    latency_s: float
    bytes_per_s: float
    max_rel_residual: float
    n_points: int

    def time_s(self, nbytes):
        return self.latency_s + np.asarray(nbytes, dtype=float) / self.bytes_per_s

    def as_dict(self) -> dict:
        return {"latency_us": sig(self.latency_s * 1e6), "GBps": sig(self.bytes_per_s / 1e9),
                "max_rel_residual": sig(self.max_rel_residual, 3), "points": self.n_points,
                "model": "time = latency + bytes / bandwidth, least squares on relative residuals"}


def fit_latency_bandwidth(nbytes: Sequence[float], times_s: Sequence[float], what: str = "fit") -> LinearFit:
    """Least-squares fit of ``t = a + x / B`` to points (x bytes, t seconds).

    Method: minimise the sum of squared *relative* residuals ``((a + b x_i) - t_i) / t_i``
    with ``b = 1/B``. Points on a log sweep of sizes span four or more decades of time; plain
    least squares on absolute residuals would let the largest transfers decide everything
    and leave the latency undetermined, while relative residuals weigh every size alike
    (as nvbandwidth-style sweeps are read). The problem is linear in (a, b): rows
    ``[1/t_i, x_i/t_i]`` against a target of ones. A negative intercept is not a latency:
    then the fit is redone through the origin (``a = 0``). Units: bytes, seconds, bytes/s.

    Raises ProfileError with fewer than two distinct sizes or a non-positive slope.
    """
    x = np.asarray(nbytes, dtype=float)
    t = np.asarray(times_s, dtype=float)
    if x.shape != t.shape or x.ndim != 1:
        raise ProfileError(f"{what}: sizes and times must be two lists of the same length")
    if np.unique(x).size < 2:
        raise ProfileError(f"{what}: needs at least two distinct sizes, got {x.tolist()}")
    if np.any(~np.isfinite(t) | (t <= 0)) or np.any(x <= 0):
        raise ProfileError(f"{what}: sizes and times must be positive")
    A = np.column_stack([1.0 / t, x / t])
    (a, b), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if a < 0:
        w = x / t
        a, b = 0.0, float(np.sum(w) / np.sum(w * w))
    if not b > 0:
        raise ProfileError(f"{what}: time does not grow with size (slope {b:g} s/byte); cannot fit a bandwidth")
    resid = np.abs((a + b * x) - t) / t
    return LinearFit(float(a), float(1.0 / b), float(resid.max()), int(x.size))


# ------------------------------------------------------------------ repeat loops
def collect(sample: Callable[[], float], *, warmup: int, min_repeats: int, max_repeats: int,
            budget_s: float, what: str = "samples") -> Summary:
    """Call ``sample()`` (which returns one timing in seconds) ``warmup`` times and discard
    the results, then keep calling until ``max_repeats`` samples or, once ``min_repeats``
    are in, until ``budget_s`` of wall time has passed. Returns their Summary."""
    for _ in range(warmup):
        sample()
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < max_repeats:
        out.append(sample())
        if len(out) >= min_repeats and time.perf_counter() - start >= budget_s:
            break
    return summarize(out, what)


def host_time(fn: Callable[[], object], inner: int = 1) -> float:
    """Wall time of ``inner`` back-to-back calls of ``fn`` divided by ``inner`` (perf_counter)."""
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def inner_count(single_s: float, target_s: float, cap: int = 1000) -> int:
    """How many back-to-back calls make one sample last about ``target_s``, at least 1."""
    if not single_s > 0:
        return cap
    return int(max(1, min(cap, math.ceil(target_s / single_s))))


class Deadline:
    """A wall-clock budget for a section: long sweeps stop early (and say which points
    they skipped) rather than overrun the command's promised duration."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()

    def left_s(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def expired(self) -> bool:
        return self.left_s() <= 0


# ------------------------------------------------------------------ progress
class Reporter:
    """Progress over weighted sections. ``NullReporter`` for tests; ``RichReporter`` draws a
    rich progress bar on stderr. A profiler calls ``section(name, weight)`` once and then
    ``advance(done, total, what)`` as its steps finish."""

    def __init__(self, weights: dict[str, float] | None = None):
        self.weights = dict(weights or {})
        self._base = 0.0
        self._current: tuple[str, float] | None = None

    @property
    def total(self) -> float:
        return sum(self.weights.values()) or 1.0

    def section(self, name: str, what: str = "") -> None:
        if self._current is not None:
            self._base += self._current[1]
        self._current = (name, self.weights.get(name, 0.0))
        self._show(self._base, f"{name}: {what}" if what else name)

    def advance(self, done: float, total: float, what: str = "") -> None:
        name, weight = self._current or ("", 0.0)
        frac = min(1.0, done / total) if total else 1.0
        self._show(self._base + weight * frac, f"{name}: {what}" if what else name)

    def finish(self) -> None:
        self._show(self.total, "done")

    def _show(self, completed: float, description: str) -> None:  # overridden
        pass


NullReporter = Reporter


class RichReporter(Reporter):
    """A rich progress bar on stderr; use as a context manager."""

    def __init__(self, weights: dict[str, float]):
        super().__init__(weights)
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("[bold]profile[/bold]"), BarColumn(),
                                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                                  TextColumn("{task.description}"),
                                  console=Console(stderr=True), transient=False)
        self._task = None

    def __enter__(self):
        self._progress.start()
        self._task = self._progress.add_task("starting", total=self.total)
        return self

    def __exit__(self, *exc):
        self._progress.stop()
        return False

    def _show(self, completed: float, description: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=completed, description=description)


# ------------------------------------------------------------------ section results
@dataclass
class Result:
    """What one profiler returns. ``values``: the schema section in YAML units (keys of
    the pydantic model of that section in ``simulator.profile_schema``: Gpu, Cpu, Disk,
    Links, Interconnect), or None when the section could not be measured
    (it is then absent from the profile, never zero, and ``absent`` says why).
    ``measurements``: raw samples and fits, kept under the profile's ``measurements``.
    ``machine``: facts for ``metadata.machine`` (names, versions, link widths)."""

    values: dict | None
    measurements: dict
    machine: dict | None = None
    absent: str | None = None


class SubReporter:
    """Maps a sub-step's ``advance(done, total)`` into steps [lo, hi) of ``of`` steps of a
    parent reporter, so a long loop inside one step still moves the bar."""

    def __init__(self, reporter, lo: float, hi: float, of: float):
        self.reporter, self.lo, self.hi, self.of = reporter, lo, hi, of

    def advance(self, done, total, what=""):
        frac = min(1.0, done / total) if total else 1.0
        self.reporter.advance(self.lo + (self.hi - self.lo) * frac, self.of, what)
