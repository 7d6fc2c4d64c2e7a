"""Serving metrics from a simulation (vLLM's benchmark_serving definitions; REFERENCE.md,
"Serving terms"):

- TTFT: arrival -> first token; queue delay: arrival -> first scheduled.
- TPOT (time per output token, the mean inter-token latency of a request):
  ``(finish - first token) / (output - 1)``; undefined for one-token outputs (left out).
- E2E: arrival -> last token.
- throughput: output tokens / (last finish - first arrival); requests/s likewise.
- goodput: requests/s that met every given SLO (TTFT <= ttft_slo and TPOT <= tpot_slo;
  a request without a TPOT meets a TPOT SLO). Without SLOs every request counts.
Percentiles p50/p90/p99 by linear interpolation (numpy's default). Units: s, tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.errors import WorkloadError
from simulator.units import parse_duration_s

QUANTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))
TABLE_COLUMNS = ("request_id", "replica", "server", "arrival_s", "prompt_tokens", "output_tokens", "first_token_s",
                 "finish_s", "ttft_s", "tpot_s", "e2e_s", "queue_s", "preemptions")


@dataclass(frozen=True)
class SLO:
    """Latency targets: None means no target. Unit: s."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    @classmethod
    def parse(cls, ttft: str | None, tpot: str | None, ttft_flag="--ttft-slo", tpot_flag="--tpot-slo") -> "SLO":
        return cls(_duration(ttft, ttft_flag), _duration(tpot, tpot_flag))

    def to_dict(self) -> dict:
        return {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s}


def _duration(text, flag: str) -> float | None:
    if text is None:
        return None
    try:
        v = parse_duration_s(text)
    except ValueError as e:
        raise WorkloadError(f"{flag}: {e}") from None
    if v <= 0:
        raise WorkloadError(f"{flag} must be a duration > 0, got {text!r}")
    return v


def stats(x) -> dict:
    """{p50, p90, p99, mean} of the finite values of x (None when there are none)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if not len(x):
        return {k: None for k, _ in QUANTILES} | {"mean": None}
    q = np.percentile(x, [p for _, p in QUANTILES])
    return {k: float(v) for (k, _), v in zip(QUANTILES, q)} | {"mean": float(x.mean())}


def per_request(result) -> dict:
    """Per-request columns (numpy arrays), in the order of ``TABLE_COLUMNS``."""
    r = result.req
    pp = result.layout[1]
    ttft = r.first_token - r.arrival
    out_n = r.output.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out_n > 1, (r.finish - r.first_token) / (out_n - 1), np.nan)
    return {"request_id": np.arange(r.n), "replica": r.server // pp, "server": r.server, "arrival_s": r.arrival,
            "prompt_tokens": r.prompt, "output_tokens": r.output, "first_token_s": r.first_token,
            "finish_s": r.finish, "ttft_s": ttft, "tpot_s": tpot, "e2e_s": r.finish - r.arrival,
            "queue_s": r.first_scheduled - r.arrival, "preemptions": r.preemptions}


def table(result):
    """The tidy per-request table (pandas DataFrame, one row per request)."""
    import pandas as pd
    return pd.DataFrame(per_request(result), columns=list(TABLE_COLUMNS))


def meets(cols: dict, slo: SLO) -> np.ndarray:
    ok = np.ones(len(cols["ttft_s"]), bool)
    if slo.ttft_s is not None:
        ok &= cols["ttft_s"] <= slo.ttft_s
    if slo.tpot_s is not None:
        ok &= ~(cols["tpot_s"] > slo.tpot_s)  # NaN (one-token output) meets it
    return ok


def summary(result, slo: SLO | None = None) -> dict:
    """The JSON summary of ``llmsim simulate`` (module docstring)."""
    slo = slo or SLO()
    cols = per_request(result)
    r = result.req
    span = float(np.nanmax(r.finish) - np.nanmin(r.arrival))
    rate = (lambda count: count / span if span > 0 else math.inf)
    ok = meets(cols, slo)
    series = result.series
    kv_peak = int(series["used_blocks"].max()) if len(series["used_blocks"]) else 0
    return {
        "model": result.model, "hardware": result.hardware, "engine": result.engine.name,
        "layout": {"tp": result.layout[0], "pp": result.layout[1]}, "replicas": result.replicas,
        "gpus": result.gpus, "dtype": result.dtype,
        "num_requests": int(r.n),
        "ttft_s": stats(cols["ttft_s"]), "tpot_s": stats(cols["tpot_s"]), "e2e_s": stats(cols["e2e_s"]),
        "queue_s": stats(cols["queue_s"]),
        "throughput_tok_s": rate(float(r.output.sum())), "requests_per_s": rate(float(r.n)),
        "goodput_rps": rate(float(ok.sum())), "slo": slo.to_dict(), "slo_attained_frac": float(ok.mean()),
        "preemptions": int(r.preemptions.sum()), "prefill_tokens_computed": int(result.prefill_tokens),
        "duration_s": span,
        "kv_cache": {**result.kv.to_dict(), "blocks_per_server": result.blocks_per_server,
                     "peak_used_blocks": kv_peak,
                     "peak_used_frac": kv_peak / result.blocks_per_server if result.blocks_per_server else None},
        "simulated_iterations": int(result.simulated_iterations), "scheduled_batches": int(result.scheduled_batches),
        "wall_s": float(result.wall_s),
        "stream": result.stream.describe(), "engine_config": result.engine.to_dict(),
    }
