"""Error bands: how far to trust one prediction, from the residuals of recorded runs.

A residual is ``measured / predicted`` of one metric of one recorded run (the executor's
records and published runs of other engines in ``validate/records/``), predicted by
today's model. The band of a new prediction ``p`` of that metric is

    [p exp(lo), p exp(hi)]

where ``(lo, hi)`` is the p10-p90 prediction interval of a new record's log-residual,
given the log-residuals ``x_1..x_n`` of the records that match the prediction
(``interval``). The band is centred on the residuals, not on ``p``: where the model is
biased on the records (the serving simulation predicts TTFT 30-60% short), the band says
so and may not contain ``p``.

Matching (``LEVELS``), most specific first, the first level with at least
``MIN_RECORDS`` records is used and named in ``basis``:
1. engine, hardware class, regime (offline: the ``Bound`` that set most of the time;
   serving: open- or closed-loop arrivals);
2. engine, hardware class;
else "no evidence": records of another class of machine are not evidence for this one (the
executor's CPU runs say nothing of a plan on a T4). Hardware classes (``hardware_class``): ``cpu`` (the device is the host
CPU), ``gpu-hbm`` (device memory >= 1.2 TB/s), ``gpu-gddr`` (below).

The residual table is derived data, committed as ``simulator/data/residuals.csv`` and
rewritten by ``python scripts/make_residuals.py`` (``validate.residuals``: re-predicting
every record takes seconds - the serving runs are simulated - too slow for every
``predict``); a test fails when it no longer matches the records and today's model. It
is read once per process (``load_residuals``).

Units: residuals are ratios (dimensionless); a band has the unit of its metric
(``throughput_tok_s``: tokens/s; ``ttft_mean_s``, ``tpot_mean_s``, ``e2e_mean_s``: s).
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import LlmsimError

RESIDUALS_FILE = Path(__file__).resolve().parent / "data" / "residuals.csv"
COLUMNS = ("record", "group", "kind", "engine", "hardware", "hardware_class", "regime", "metric", "measured",
           "predicted")
QUANTILES = (0.1, 0.9)  # the band is the p10-p90 of a new record's residual
MIN_RECORDS = 3  # fewer matching records at a level: fall back to the next
LEVELS = (("engine", "hardware_class", "regime"), ("engine", "hardware_class"))
NO_EVIDENCE = "no evidence"

# Hardware classes. The cut is the device's memory rate (``gpu.hbm_GBps``), which sets the
# rate of decode on a GPU: the HBM parts (A100 1.6-2.0, H100 2.0-3.35, H200 4.8 TB/s) above it,
# the GDDR cards (T4 0.3, L4 0.3, A10 0.6, A6000 0.77, L40S 0.86, RTX 4090 1.0 TB/s) below;
# the V100's HBM2 (0.9 TB/s) falls with the latter, grouped by rate, not by technology.
HBM_CLASS_BYTES_PER_S = 1.2e12
CLASSES = {"cpu": "CPU-only machines", "gpu-hbm": "HBM GPUs", "gpu-gddr": "GDDR-class GPUs"}


def hardware_class(hw) -> str:
    """``cpu`` when the device is the host CPU (``hw.device_is_host``), else ``gpu-hbm``
    when the device's memory rate is at least ``HBM_CLASS_BYTES_PER_S``, else
    ``gpu-gddr``."""
    if hw.device_is_host:
        return "cpu"
    return "gpu-hbm" if hw.device.mem_bytes_per_s >= HBM_CLASS_BYTES_PER_S else "gpu-gddr"


# ------------------------------------------------------------------ the residual table
@dataclass(frozen=True)
class Residuals:
    """The residual table: one row per (record, metric), columns ``COLUMNS`` as arrays;
    ``log_residual = ln(measured / predicted)``. ``group``: the unit a leave-one-out check
    leaves out (a record; all stages of one published serving experiment)."""

    columns: dict

    def __len__(self) -> int:
        return len(self.columns["record"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def log_residual(self) -> np.ndarray:
        return np.log(self.columns["measured"] / self.columns["predicted"])

    def where(self, mask: np.ndarray) -> "Residuals":
        return Residuals({k: v[mask] for k, v in self.columns.items()})

    def rows(self) -> list[dict]:
        return [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in self.columns.items()}
                for i in range(len(self))]


def residuals_from_rows(rows, where: str = "residual table") -> Residuals:
    """A ``Residuals`` from dicts with the keys ``COLUMNS`` (measured, predicted > 0)."""
    rows = list(rows)
    cols = {}
    for k in COLUMNS:
        try:
            values = [r[k] for r in rows]
        except KeyError:
            raise LlmsimError(f"{where}: missing column {k!r} (columns: {', '.join(COLUMNS)})") from None
        if k in ("measured", "predicted"):
            try:
                a = np.asarray([float(v) for v in values], float)
            except (TypeError, ValueError) as e:
                raise LlmsimError(f"{where}: column {k!r}: {e}") from None
            bad = ~(np.isfinite(a) & (a > 0))
            if bad.any():
                i = int(np.argmax(bad))
                raise LlmsimError(f"{where}: {k} of {rows[i]['record']!r} is {values[i]!r}; "
                                  "a residual needs a finite value > 0")
        else:
            a = np.asarray([str(v) for v in values], dtype=object)
        cols[k] = a
    return Residuals(cols)


def read_residuals(path) -> Residuals:
    """Read a residual table (CSV, ``#`` lines are comments)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    except OSError as e:
        raise LlmsimError(f"{path}: cannot read the residual table: {e.strerror or e}") from None
    return residuals_from_rows(rows, str(path))


@functools.lru_cache(maxsize=None)
def load_residuals(path=None) -> Residuals:
    """The committed residual table (``RESIDUALS_FILE``), read once per process."""
    return read_residuals(RESIDUALS_FILE if path is None else path)


# ------------------------------------------------------------------ the interval
def interval(x, quantiles=QUANTILES) -> tuple[float, float]:
    """The p10-p90 prediction interval (lo, hi) of one new value given a sample ``x`` of n
    values (log-residuals), in the units of ``x``:

    - distribution-free where it exists: the order statistics (x_(a), x_(b)),
      a = floor(0.1 (n + 1)) >= 1 and b = ceil(0.9 (n + 1)) <= n (n >= 9). For a new value
      exchangeable with the n, its rank among the n + 1 is uniform, so
      P(x_(a) <= x_new <= x_(b)) = (b - a) / (n + 1): at least 0.8, and less than
      0.8 + 2 / (n + 1) (the rank argument of distribution-free prediction intervals:
      Hahn & Meeker, Statistical Intervals, 1991, ch. 5; of split conformal prediction:
      Lei et al., JASA 113, 2018, sec. 2).
    - otherwise (n < 9: no finite distribution-free p10-p90 interval exists) the normal
      prediction interval for one future observation, mean + t_{q, n-1} s sqrt(1 + 1/n),
      q = 0.1 and 0.9, s the sample standard deviation (Hahn & Meeker, ch. 4): it assumes
      log-normal residuals. Needs n >= 2.
    """
    x = np.sort(np.asarray(x, float))
    n = x.size
    q_lo, q_hi = quantiles
    if n < 2:
        raise LlmsimError(f"a prediction interval needs at least 2 values, got {n}")
    k_lo = math.floor(q_lo * (n + 1) + 1e-9)  # P(x_new < x_(k)) = k / (n + 1) <= q_lo
    k_hi = math.ceil(q_hi * (n + 1) - 1e-9)  # P(x_new > x_(k)) = (n + 1 - k) / (n + 1) <= 1 - q_hi
    if k_lo >= 1 and k_hi <= n:
        return float(x[k_lo - 1]), float(x[k_hi - 1])
    from scipy.special import stdtrit  # the Student-t quantile (scipy.special: a light import)
    scale = float(np.std(x, ddof=1)) * math.sqrt(1 + 1 / n)
    return float(x.mean() + stdtrit(n - 1, q_lo) * scale), float(x.mean() + stdtrit(n - 1, q_hi) * scale)


# ------------------------------------------------------------------ bands
@dataclass(frozen=True)
class Band:
    """A prediction's p10-p90 band. ``low``/``high`` None: no evidence (``records`` 0).
    ``level``: the keys matched (``LEVELS``), ``basis``: them with their values."""

    metric: str
    predicted: float
    low: float | None
    high: float | None
    records: int
    basis: str
    level: tuple = ()
    note: str = ""

    @property
    def evidence(self) -> bool:
        return self.low is not None

    def to_dict(self) -> dict:
        return {"metric": self.metric, "predicted": self.predicted,
                "band": [self.low, self.high] if self.evidence else None, "records": self.records,
                "basis": self.basis}

    def line(self, name: str, unit: str) -> str:
        """The line the commands print: ``throughput 12.2 tok/s, p10-p90 11.1-13.0 tok/s from
        7 records of flexgen on HBM GPUs``."""
        value = "-" if self.predicted is None else f"{_number(self.predicted)} {unit}"
        return f"{name} {value}, {self.text(unit)}"

    def text(self, unit: str = "") -> str:
        """``p10-p90 11.1-13.0 tok/s from 7 records of flexgen on HBM GPUs, bound h2d``."""
        if not self.evidence:
            return f"no evidence ({self.note})" if self.note else NO_EVIDENCE
        u = f" {unit}" if unit else ""
        return f"p10-p90 {_number(self.low)}-{_number(self.high)}{u} from {self.records} records of {self.note}"


def _number(v: float) -> str:
    """Three significant digits, without an exponent from 1e-4 to 1e6 (1320, 16.5, 0.0123)."""
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


ARRIVALS = ("open-loop", "closed-loop")  # the regimes of serving runs; offline runs': a Bound value


def regime_label(regime) -> str:
    """How a regime is named in a basis: ``arrivals`` (serving) or ``bound`` (offline)."""
    return "arrivals" if regime in ARRIVALS else "bound"


def _basis(keys: dict, level: tuple) -> str:
    regime_label_ = regime_label(keys["regime"])
    parts = []
    for k in level:
        name = {"engine": "engine", "hardware_class": "class", "regime": regime_label_}[k]
        parts.append(f"{name}={keys[k]}")
    return ", ".join(parts)


def _note(keys: dict, level: tuple) -> str:
    text = str(keys["engine"]) + " on " + CLASSES.get(keys["hardware_class"], keys["hardware_class"])
    if "regime" in level:
        text += f", {regime_label(keys['regime'])} {keys['regime']}"
    return text


def band_for(predicted: float, metric: str, engine: str, hw_class: str, regime: str | None = None,
             table: Residuals | None = None, min_records: int = MIN_RECORDS, method=None) -> Band:
    """The band of one prediction ``predicted`` of ``metric`` by ``engine`` on a machine of
    class ``hw_class`` in ``regime``: ``predicted x exp(interval(log-residuals))`` of the
    records of the first level of ``LEVELS`` with at least ``min_records`` of them (module
    docstring). ``table``: default the committed residual table; ``method``: the interval
    (default ``interval``; benchmarks compare others)."""
    table = load_residuals() if table is None else table
    keys = {"engine": engine, "hardware_class": hw_class, "regime": regime}
    if predicted is None or not (math.isfinite(predicted) and predicted > 0):
        return Band(metric, predicted, None, None, 0, NO_EVIDENCE, note=f"no positive prediction of {metric}")
    base = table["metric"] == metric
    x = table.log_residual
    most = 0
    for level in LEVELS:
        if "regime" in level and regime is None:
            continue
        mask = base.copy()
        for k in level:
            mask &= table[k] == keys[k]
        n = int(mask.sum())
        most = max(most, n)
        if n >= min_records:
            lo, hi = (method or interval)(x[mask])
            return Band(metric, float(predicted), float(predicted * math.exp(lo)), float(predicted * math.exp(hi)),
                        n, _basis(keys, level), level, _note(keys, level))
    return Band(metric, float(predicted), None, None, 0, NO_EVIDENCE,
                note=f"{most} record(s) of {metric} by {engine}; a band needs {min_records}")


def json_fields(band: Band, key: str = "throughput_band_tok_s") -> dict:
    """The JSON keys of a band: ``{key: [p10, p90] or None, band_records: N, band_basis}``."""
    return {key: [band.low, band.high] if band.evidence else None, "band_records": band.records,
            "band_basis": band.basis}


# ------------------------------------------------------------------ the commands' bands
SERVING_METRICS = {"ttft_mean_s": ("ttft_s", "mean"), "tpot_mean_s": ("tpot_s", "mean"),
                   "e2e_mean_s": ("e2e_s", "mean")}


def estimate_band(est, hw, table: Residuals | None = None) -> Band:
    """The throughput band of one ``Estimate`` (offline: ``predict``, ``plan``), matched on
    its engine, the class of ``hw`` and its bottleneck. ``est`` None: no plan, no band."""
    if est is None:
        return Band("throughput_tok_s", None, None, None, 0, NO_EVIDENCE, note="no feasible plan")
    if not est.feasible:
        return Band("throughput_tok_s", est.throughput_tok_s, None, None, 0, NO_EVIDENCE,
                    note="the policy does not fit in memory")
    return band_for(est.throughput_tok_s, "throughput_tok_s", est.engine, hardware_class(hw), est.bottleneck,
                    table)


def serving_bands(summary: dict, hw, closed_loop: bool, table: Residuals | None = None) -> dict:
    """{metric: Band} of a serving summary (``simulate``): its throughput and mean TTFT,
    TPOT and E2E, matched on the serving engine, the class of ``hw`` and the arrivals
    (``closed-loop`` or ``open-loop``). The published serving runs measure TTFT, inter-token
    latency (the TPOT residuals) and E2E, not throughput."""
    engine, cls = summary["engine"], hardware_class(hw)
    regime = "closed-loop" if closed_loop else "open-loop"
    out = {"throughput_tok_s": band_for(summary["throughput_tok_s"], "throughput_tok_s", engine, cls, regime,
                                        table)}
    for metric, (key, stat) in SERVING_METRICS.items():
        out[metric] = band_for((summary.get(key) or {}).get(stat), metric, engine, cls, regime, table)
    return out


# ------------------------------------------------------------------ leave-one-out
def leave_one_out(table: Residuals | None = None, min_records: int = MIN_RECORDS, method=None) -> list[dict]:
    """For each row: its band from the rows of the other groups (``Residuals.group``) and
    whether its measured value falls inside. Rows {record, engine, hardware_class, regime,
    metric, measured, predicted, low, high, records, basis, inside (None: no evidence)}."""
    table = load_residuals() if table is None else table
    out = []
    for i, row in enumerate(table.rows()):
        others = table.where(table["group"] != row["group"])
        b = band_for(row["predicted"], row["metric"], row["engine"], row["hardware_class"], row["regime"], others,
                     min_records, method)
        inside = (b.low <= row["measured"] <= b.high) if b.evidence else None
        out.append({**{k: row[k] for k in ("record", "kind", "engine", "hardware", "hardware_class", "regime",
                                             "metric", "measured", "predicted")},
                    "low": b.low, "high": b.high, "records": b.records, "basis": b.basis, "inside": inside})
    return out
