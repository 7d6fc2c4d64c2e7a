"""Request streams: when requests arrive and how long their prompts and outputs are.

A ``RequestStream`` is arrays indexed by request id (arrival order): ``arrival_s``,
``prompt_tokens``, ``output_tokens``, and for prefix caching ``prefix_tokens`` (leading
prompt tokens shared with the other requests of ``prefix_group``; group -1 shares nothing).
A closed loop (``concurrency`` users) has no arrival times of its own: each user sends its
next request when the previous one finishes (``think_s`` later), as benchmark clients with a
fixed concurrency do; ``arrival_s`` is then filled in by the simulation.

Arrivals (``StreamSpec.at_rate``), seeded and reproducible:
- Poisson at rate ``r``: exponential gaps of mean 1/r.
- gamma with burstiness ``B`` (vLLM's ``benchmark_serving --burstiness``): gaps
  ``Gamma(shape=B, scale=1/(r B))``, mean 1/r, squared coefficient of variation 1/B; B = 1
  is Poisson, B < 1 burstier, B > 1 smoother.
The gaps are drawn once at unit rate and divided by ``r``, so streams of one seed at two
rates are the same requests, time-scaled (common random numbers: a rate search then sees a
monotone stream, not fresh noise at every rate).

Lengths (``LengthDist``), mean ``L`` each:
- ``fixed``: L.
- ``uniform[:R]``: integers uniform on [round(L (1 - R)), round(L (1 + R))] (R default 0.5;
  vLLM's random dataset calls R ``range_ratio``).
- ``lognormal[:S]``: ``exp(N(ln L - S^2/2, S^2))`` rounded, so the mean is L (S default 0.5).
Every length is at least 1.

Traces: CSV (a header line; ``#`` lines are comments) or JSONL (one object per line) with
columns ``arrival_s``, ``prompt_tokens``, ``output_tokens`` and optionally
``prefix_tokens``, ``prefix_group``. Unknown columns, missing values, non-integers,
negative arrival times and lengths < 1 are errors naming the file, line and column. Rows
are sorted by arrival time (stable).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from simulator.errors import WorkloadError

TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens", "prefix_tokens", "prefix_group")
REQUIRED_COLUMNS = TRACE_COLUMNS[:3]
LENGTH_DISTS = ("fixed", "uniform", "lognormal")
DEFAULT_UNIFORM_RATIO = 0.5
DEFAULT_LOGNORMAL_SIGMA = 0.5
TRACES_DIR = Path(__file__).resolve().parent / "traces"
# The simulation holds every request in memory (a few arrays of float64 each): 1e8 requests
# take gigabytes. Token counts are tensor dimensions on the executor (int32).
MAX_REQUESTS = 10**8
MAX_TOKENS = 2**31 - 1


@dataclass(frozen=True)
class RequestStream:
    """Requests in arrival order (arrays of one length N). Units: s, tokens."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_tokens: np.ndarray = None
    prefix_group: np.ndarray = None
    concurrency: int | None = None  # closed loop: this many users, arrival_s unused
    think_s: float = 0.0
    source: str = ""

    def __post_init__(self):
        n = len(self.prompt_tokens)
        for name in ("arrival_s", "prompt_tokens", "output_tokens"):
            if len(getattr(self, name)) != n:
                raise WorkloadError(f"request stream {self.source}: {name} has {len(getattr(self, name))} "
                                    f"entries, prompt_tokens {n}")
        if n == 0:
            raise WorkloadError(f"request stream {self.source}: no requests" if self.source else "request stream: no requests")
        if self.prefix_tokens is None:
            object.__setattr__(self, "prefix_tokens", np.zeros(n, np.int64))
        if self.prefix_group is None:
            object.__setattr__(self, "prefix_group", np.full(n, -1, np.int64))
        if self.concurrency is not None and (not isinstance(self.concurrency, int) or self.concurrency < 1):
            raise WorkloadError(f"--concurrency must be a positive integer, got {self.concurrency!r}")
        arr = np.asarray(self.arrival_s, float)
        if self.concurrency is None and (not np.all(np.isfinite(arr)) or np.any(np.diff(arr) < 0) or arr[0] < 0):
            bad = int(np.flatnonzero(~np.isfinite(arr) | (np.diff(arr, prepend=0.0) < 0))[0])
            raise WorkloadError(f"request stream {self.source}: arrival times must be finite, >= 0 and in order; "
                                f"request {bad} arrives at {arr[bad]!r}")
        for name in ("prompt_tokens", "output_tokens"):
            v = np.asarray(getattr(self, name))
            if np.any(v < 1):
                raise WorkloadError(f"request stream {self.source}: {name} must be >= 1, request "
                                    f"{int(np.flatnonzero(v < 1)[0])} has {int(v[v < 1][0])}")

    @property
    def num_requests(self) -> int:
        return len(self.prompt_tokens)

    @property
    def closed_loop(self) -> bool:
        return self.concurrency is not None

    def head(self, n: int) -> "RequestStream":
        """The first n requests."""
        return replace(self, arrival_s=self.arrival_s[:n], prompt_tokens=self.prompt_tokens[:n],
                       output_tokens=self.output_tokens[:n], prefix_tokens=self.prefix_tokens[:n],
                       prefix_group=self.prefix_group[:n])

    def describe(self) -> dict:
        return {"num_requests": self.num_requests, "source": self.source,
                "arrival": f"closed loop, {self.concurrency} users" if self.closed_loop else "open loop",
                "mean_prompt_tokens": float(self.prompt_tokens.mean()),
                "mean_output_tokens": float(self.output_tokens.mean())}


@dataclass(frozen=True)
class LengthDist:
    """A length distribution: ``kind`` fixed | uniform | lognormal, ``param`` its R or S."""

    kind: str = "fixed"
    param: float = 0.0

    @classmethod
    def parse(cls, text: str, flag: str = "--length-dist") -> "LengthDist":
        kind, _, arg = str(text).strip().lower().partition(":")
        if kind not in LENGTH_DISTS:
            raise WorkloadError(f"{flag}: {text!r} is not one of fixed, uniform[:RATIO], lognormal[:SIGMA]")
        if kind == "fixed":
            if arg:
                raise WorkloadError(f"{flag}: fixed takes no parameter, got {text!r}")
            return cls("fixed", 0.0)
        default = DEFAULT_UNIFORM_RATIO if kind == "uniform" else DEFAULT_LOGNORMAL_SIGMA
        try:
            p = float(arg) if arg else default
        except ValueError:
            raise WorkloadError(f"{flag}: {text!r}: the parameter after ':' must be a number") from None
        if kind == "uniform" and not (0.0 <= p < 1.0):
            raise WorkloadError(f"{flag}: uniform ratio must be within [0, 1), got {p:g}")
        if kind == "lognormal" and not (math.isfinite(p) and 0.0 <= p <= 3.0):
            raise WorkloadError(f"{flag}: lognormal sigma must be within [0, 3], got {p:g}")
        return cls(kind, p)

    def sample(self, mean: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """n integer lengths >= 1 of mean ``mean`` (module docstring)."""
        if self.kind == "fixed" or self.param == 0.0:
            return np.full(n, mean, np.int64)
        if self.kind == "uniform":
            lo, hi = round(mean * (1 - self.param)), round(mean * (1 + self.param))
            return np.maximum(rng.integers(lo, hi + 1, size=n), 1).astype(np.int64)
        s = self.param
        x = rng.lognormal(math.log(mean) - s * s / 2, s, size=n)
        return np.maximum(np.rint(x), 1).astype(np.int64)

    def __str__(self) -> str:
        return self.kind if self.kind == "fixed" else f"{self.kind}:{self.param:g}"


@dataclass(frozen=True)
class StreamSpec:
    """How to make a stream at any rate: lengths from a distribution or from a trace.

    ``at_rate(r)`` gives the open-loop stream at r requests/s; ``closed(c)`` the closed loop
    of c users; ``as_traced()`` a trace with its own arrival times."""

    num_requests: int | None = None
    prompt_len: int | None = None
    output_len: int | None = None
    length_dist: LengthDist = field(default_factory=LengthDist)
    burstiness: float = 1.0
    seed: int = 0
    trace: RequestStream | None = None

    def __post_init__(self):
        if self.trace is None:
            for flag, v in (("--num-requests", self.num_requests), ("--prompt-len", self.prompt_len),
                            ("--output-len", self.output_len)):
                if v is None:
                    raise WorkloadError(f"{flag} is required without --trace")
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                    raise WorkloadError(f"{flag} must be a positive integer, got {v!r}")
                limit = MAX_REQUESTS if flag == "--num-requests" else MAX_TOKENS
                if v > limit:
                    raise WorkloadError(f"{flag} must be at most {limit}, got {v!r}")
        elif self.num_requests is not None and (not isinstance(self.num_requests, int) or self.num_requests < 1):
            raise WorkloadError(f"--num-requests must be a positive integer, got {self.num_requests!r}")
        elif self.num_requests is not None and self.num_requests > MAX_REQUESTS:
            raise WorkloadError(f"--num-requests must be at most {MAX_REQUESTS}, got {self.num_requests!r}")
        if not isinstance(self.burstiness, (int, float)) or not math.isfinite(self.burstiness) \
                or self.burstiness <= 0:
            raise WorkloadError(f"--burstiness must be a number > 0, got {self.burstiness!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise WorkloadError(f"--seed must be a non-negative integer, got {self.seed!r}")

    @property
    def count(self) -> int:
        if self.trace is not None:
            return self.num_requests or self.trace.num_requests
        return self.num_requests

    def _rngs(self):
        arr, pl, ol = np.random.SeedSequence(self.seed).spawn(3)
        return np.random.default_rng(arr), np.random.default_rng(pl), np.random.default_rng(ol)

    def _lengths(self):
        n = self.count
        if self.trace is not None:
            idx = np.arange(n) % self.trace.num_requests  # the trace's rows in order, cycled
            t = self.trace
            return t.prompt_tokens[idx], t.output_tokens[idx], t.prefix_tokens[idx], t.prefix_group[idx]
        _, rp, ro = self._rngs()
        return (self.length_dist.sample(self.prompt_len, n, rp), self.length_dist.sample(self.output_len, n, ro),
                None, None)

    def unit_gaps(self) -> np.ndarray:
        """Inter-arrival gaps at 1 request/s (module docstring)."""
        ra, _, _ = self._rngs()
        b = float(self.burstiness)
        return ra.gamma(shape=b, scale=1.0 / b, size=self.count)

    def at_rate(self, rate_rps: float) -> RequestStream:
        check_rate(rate_rps)
        gaps = self.unit_gaps() / rate_rps
        arrival = np.cumsum(gaps) - gaps[0]  # the first request arrives at t = 0
        p, o, pt, pg = self._lengths()
        return RequestStream(arrival, p, o, pt, pg, source=self.describe(f"rate {rate_rps:g}/s"))

    def closed(self, concurrency: int, think_s: float = 0.0) -> RequestStream:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise WorkloadError(f"--concurrency must be a positive integer, got {concurrency!r}")
        p, o, pt, pg = self._lengths()
        return RequestStream(np.zeros(len(p)), p, o, pt, pg, concurrency=concurrency, think_s=think_s,
                             source=self.describe(f"{concurrency} concurrent users"))

    def as_traced(self) -> RequestStream:
        if self.trace is None:
            raise WorkloadError("--rate or --concurrency is required without --trace")
        n = self.count
        if n > self.trace.num_requests:
            raise WorkloadError(f"--num-requests {n} exceeds the {self.trace.num_requests} requests of the trace "
                                f"{self.trace.source} (with the trace's own arrival times)")
        return self.trace.head(n)

    def describe(self, arrivals: str) -> str:
        if self.trace is not None:
            return f"{self.trace.source}, {arrivals}"
        dist = "" if self.length_dist.kind == "fixed" else f" ({self.length_dist})"
        burst = "" if self.burstiness == 1.0 else f", burstiness {self.burstiness:g}"
        return f"prompt {self.prompt_len}, output {self.output_len}{dist}, {arrivals}{burst}, seed {self.seed}"


def check_rate(rate_rps, flag: str = "--rate") -> float:
    if isinstance(rate_rps, bool) or not isinstance(rate_rps, (int, float, np.floating)) \
            or not math.isfinite(rate_rps) or rate_rps <= 0:
        raise WorkloadError(f"{flag} must be a number of requests per second > 0, got {rate_rps!r}")
    return float(rate_rps)


# ------------------------------------------------------------------ traces
def resolve_trace(name_or_path: str) -> Path:
    """A shipped trace by name (``chat``, ``summarization``) or a path (any file there: a
    named pipe or a device is refused by ``load_trace``, not taken for a missing file)."""
    from simulator.files import stat_path
    p = Path(name_or_path)
    if stat_path(p, "--trace", WorkloadError) is not None and not p.is_dir():
        return p
    for ext in (".csv", ".jsonl"):
        shipped = TRACES_DIR / f"{name_or_path}{ext}"
        if stat_path(shipped, "--trace", WorkloadError) is not None:
            return shipped
    shipped = sorted(x.stem for x in TRACES_DIR.glob("*.csv"))
    if p.is_dir():
        raise WorkloadError(f"--trace {str(name_or_path)!r}: is a directory; a trace is a CSV or JSONL file "
                            f"(shipped traces: {', '.join(shipped)})")
    raise WorkloadError(f"--trace: no such file {str(name_or_path)!r} (shipped traces: {', '.join(shipped)})")


def load_trace(name_or_path: str) -> RequestStream:
    """Read a CSV or JSONL trace (module docstring) strictly; raises WorkloadError."""
    from simulator.files import read_text
    path = resolve_trace(name_or_path)
    text = read_text(path, "--trace", WorkloadError)
    rows = _jsonl_rows(path, text) if path.suffix == ".jsonl" else _csv_rows(path, text)
    if not rows:
        raise WorkloadError(f"--trace {path}: no requests")
    cols = {c: [] for c in TRACE_COLUMNS}
    for line, row in rows:
        for c in TRACE_COLUMNS:
            cols[c].append(_field(path, line, row, c))
    arrival = np.asarray(cols["arrival_s"], float)
    order = np.argsort(arrival, kind="stable")
    prompt = np.asarray(cols["prompt_tokens"], np.int64)[order]
    prefix = np.asarray(cols["prefix_tokens"], np.int64)[order]
    bad = np.flatnonzero(prefix > prompt)
    if len(bad):
        raise WorkloadError(f"--trace {path}: prefix_tokens {prefix[bad[0]]} exceeds prompt_tokens {prompt[bad[0]]}")
    return RequestStream(arrival[order], prompt, np.asarray(cols["output_tokens"], np.int64)[order], prefix,
                         np.asarray(cols["prefix_group"], np.int64)[order], source=path.name)


def _field(path: Path, line: int, row: dict, col: str):
    raw = row.get(col)
    where = f"--trace {path}: line {line}: {col}"
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if col == "prefix_tokens":
            return 0
        if col == "prefix_group":
            return -1
        raise WorkloadError(f"{where} is missing")
    if col == "arrival_s":
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise WorkloadError(f"{where}: {raw!r} is not a number") from None
        if isinstance(raw, bool) or not math.isfinite(v) or v < 0:
            raise WorkloadError(f"{where}: {raw!r} must be a finite number of seconds >= 0")
        return v
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise WorkloadError(f"{where}: {raw!r} is not an integer") from None
    if isinstance(raw, bool) or not math.isfinite(v) or v != int(v):
        raise WorkloadError(f"{where}: {raw!r} is not an integer")
    v = int(v)
    low = {"prompt_tokens": 1, "output_tokens": 1, "prefix_tokens": 0, "prefix_group": -1}[col]
    if v < low:
        raise WorkloadError(f"{where}: {v} must be >= {low}")
    return v


def _check_columns(path: Path, line: int, names) -> None:
    unknown = [c for c in names if c not in TRACE_COLUMNS]
    if unknown:
        raise WorkloadError(f"--trace {path}: line {line}: unknown column {unknown[0]!r} "
                            f"(allowed: {', '.join(TRACE_COLUMNS)})")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise WorkloadError(f"--trace {path}: line {line}: missing column {missing[0]!r} "
                            f"(required: {', '.join(REQUIRED_COLUMNS)})")


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise WorkloadError(f"--trace {path}: empty (a header line {','.join(REQUIRED_COLUMNS)} is required)")
    header_line, header = lines[0]
    names = [c.strip() for c in next(csv.reader([header]))]
    _check_columns(path, header_line, names)
    out = []
    for line, ln in lines[1:]:
        values = next(csv.reader([ln]))
        if len(values) != len(names):
            raise WorkloadError(f"--trace {path}: line {line}: {len(values)} fields, the header has {len(names)}")
        out.append((line, dict(zip(names, values))))
    return out


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    from simulator.files import load_json
    out = []
    for i, ln in enumerate(text.splitlines()):
        if not ln.strip():
            continue
        obj = load_json(ln, f"--trace {path}: line {i + 1}", WorkloadError)  # a key twice is an error
        if not isinstance(obj, dict):
            raise WorkloadError(f"--trace {path}: line {i + 1}: expected a JSON object, got {type(obj).__name__}")
        _check_columns(path, i + 1, list(obj))
        out.append((i + 1, obj))
    return out
