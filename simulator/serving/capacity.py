"""Capacity: the highest request rate one replica sustains within latency SLOs, the layout
that needs the fewest GPUs for a target rate, and what a million tokens cost.

A rate r *meets* the SLOs when the simulated p99 TTFT and p99 TPOT of the stream at rate r
are within them: ``load(r) = max(p99 TTFT / ttft_slo, p99 TPOT / tpot_slo) <= 1``. The
stream at every rate is the same requests time-scaled (``StreamSpec.at_rate``), so ``load``
is (close to) monotone in r. The search brackets the highest rate that meets them, starting
from a guess (the requests one replica can hold at once, a quarter of them, per unloaded
end-to-end latency) and doubling (or halving) until ``load`` crosses 1, then bisects the
bracket to ``RATE_RTOL`` (Vidur's capacity search, MLSys'24, section 5, does the same over
QPS with a scheduling-delay SLO).

A finite stream hides overload when it is short: a burst the replica can hold at once
meets any SLO. So the stream at rate r lasts at least ``SPAN_E2E`` end-to-end latencies of a
request that meets the SLOs, ``e2e_max = ttft_slo + tpot_slo x (mean output - 1)`` (a
missing SLO counts as three times the unloaded figure): ``N(r) = max(N, SPAN_E2E x r x
e2e_max)`` requests, up to ``MAX_REQUESTS``. Above the sustainable rate mu the queue then
grows by ``(r - mu) x duration``, which the p99 TTFT shows.

Layouts: every (tp, pp) of ``simulator.search.layouts_for`` whose GPU count is a power of
two up to one node, with pp <= ``MAX_PP`` (within a node tensor parallelism serves a
replica with less latency; deeper pipelines only matter where tp cannot divide the heads),
one replica (dp = 1). Offloading: for an engine that can swap KV
blocks to CPU memory, a layout that preempted during its search is searched again with
swapping, and the better of the two is kept.

- Without a target rate the best layout serves the most requests/s per GPU.
- With a target rate R it needs the fewest GPUs: ``replicas = ceil(R / max_rate)``,
  ``gpus = replicas x tp x pp`` (ties: the higher rate per GPU).
- Cost per million generated tokens at a GPU-hour price p, serving rate R (or the max
  rate of one replica): ``gpus x p / 3600 / (R x mean output tokens) x 1e6`` USD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from simulator.errors import LlmsimError, PolicyError, WorkloadError
from simulator.serving import metrics
from simulator.serving.engines import EngineConfig
from simulator.serving.metrics import SLO
from simulator.serving.requests import StreamSpec
from simulator.serving.simulate import ServingInfeasible, simulate

RATE_RTOL = 0.02
MAX_DOUBLINGS = 24
MAX_HALVINGS = 10  # 1/1024 of the first guess: below, the SLOs count as missed unloaded
SPAN_E2E = 5.0
MAX_REQUESTS = 20000
MAX_PP = 2
DEFAULT_CAPACITY_REQUESTS = 400


@dataclass
class LayoutCapacity:
    """One layout's search: its highest rate within the SLOs (0 when none) and the
    metrics there."""

    tp: int
    pp: int
    feasible: bool
    reason: str = ""
    max_rate_rps: float = 0.0
    kv_offload: bool = False
    ttft_p99_s: float | None = None
    tpot_p99_s: float | None = None
    throughput_tok_s: float | None = None
    kv_blocks: int = 0
    simulations: int = 0
    seen_preemption: bool = False

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    def to_dict(self) -> dict:
        return {"tp": self.tp, "pp": self.pp, "gpus_per_replica": self.gpus, "feasible": self.feasible,
                "reason": self.reason, "max_rate_rps": self.max_rate_rps, "kv_offload": self.kv_offload,
                "ttft_p99_s": self.ttft_p99_s, "tpot_p99_s": self.tpot_p99_s,
                "throughput_tok_s": self.throughput_tok_s, "kv_blocks": self.kv_blocks,
                "simulations": self.simulations}


@dataclass
class CapacityResult:
    hardware: str
    feasible: bool
    reason: str
    best: LayoutCapacity | None
    layouts: list = field(default_factory=list)
    target_rate_rps: float | None = None
    replicas: int | None = None
    gpus: int | None = None
    usd_per_million_tokens: float | None = None
    gpu_hour_usd: float | None = None
    mean_output_tokens: float = 0.0
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        b = self.best
        out = {"hardware": self.hardware, "feasible": self.feasible, "reason": self.reason,
               "max_rate_rps": b.max_rate_rps if b else 0.0,
               "layout": {"tp": b.tp, "pp": b.pp} if b else None,
               "gpus_per_replica": b.gpus if b else None, "kv_offload": b.kv_offload if b else None,
               "ttft_p99_s": b.ttft_p99_s if b else None, "tpot_p99_s": b.tpot_p99_s if b else None}
        if self.target_rate_rps is not None:
            out.update({"rate_rps": self.target_rate_rps, "replicas": self.replicas, "gpus": self.gpus})
        if self.gpu_hour_usd is not None:
            out.update({"gpu_hour_usd": self.gpu_hour_usd, "usd_per_million_tokens": self.usd_per_million_tokens})
        out["layouts"] = [x.to_dict() for x in self.layouts]
        out["wall_s"] = self.wall_s
        return out


def check_slo(slo: SLO) -> SLO:
    if slo.ttft_s is None and slo.tpot_s is None:
        raise WorkloadError("--ttft-p99 or --tpot-p99 is required: capacity is the highest rate within the SLOs")
    return slo


def load_of(summary: dict, slo: SLO) -> float:
    """max over the given SLOs of p99 / target (> 1: the SLOs are missed)."""
    parts = []
    if slo.ttft_s is not None:
        parts.append(summary["ttft_s"]["p99"] / slo.ttft_s)
    if slo.tpot_s is not None and summary["tpot_s"]["p99"] is not None:
        parts.append(summary["tpot_s"]["p99"] / slo.tpot_s)
    return max(parts) if parts else 0.0


def max_rate(model, hw, spec: StreamSpec, engine: EngineConfig, slo: SLO, tp: int = 1, pp: int = 1,
             rtol: float = RATE_RTOL) -> LayoutCapacity:
    """The highest rate one (tp, pp) replica sustains within ``slo`` (module docstring)."""
    from dataclasses import replace
    out = LayoutCapacity(tp=tp, pp=pp, feasible=False)
    seen_preemption = False
    try:
        lone = simulate(model, hw, spec.at_rate(1.0).head(1), engine, tp=tp, pp=pp)
    except ServingInfeasible as e:
        out.reason = str(e)
        return out
    out.simulations += 1
    out.kv_blocks = lone.blocks_per_server * pp
    mean_out = float(np.mean(spec.at_rate(1.0).output_tokens))
    lone_ttft = float(lone.req.first_token[0] - lone.req.arrival[0])
    lone_e2e = float(lone.req.finish[0] - lone.req.arrival[0])
    lone_tpot = (lone_e2e - lone_ttft) / max(float(lone.req.output[0]) - 1, 1.0)
    e2e_max = ((slo.ttft_s if slo.ttft_s is not None else 3 * lone_ttft)
               + (slo.tpot_s if slo.tpot_s is not None else 3 * lone_tpot) * max(mean_out - 1, 0.0))
    base_n = spec.count

    def run(rate):
        nonlocal seen_preemption
        n = int(min(MAX_REQUESTS, max(base_n, math.ceil(SPAN_E2E * rate * e2e_max))))
        stream = (replace(spec, num_requests=n) if n != spec.count else spec).at_rate(rate)
        res = simulate(model, hw, stream, engine, tp=tp, pp=pp)
        out.simulations += 1
        s = metrics.summary(res, slo)
        seen_preemption |= s["preemptions"] > 0
        return load_of(s, slo), s

    # First guess: a quarter of the requests the replica holds at once (sequence limit of
    # its pp virtual engines, KV tokens over mean request tokens) per unloaded latency.
    mean_tokens = float(np.mean(spec.at_rate(1.0).prompt_tokens)) + mean_out
    held = min(engine.max_num_seqs * pp, lone.blocks_per_server * pp * engine.block_size / mean_tokens)
    rate = max(held / 4.0, 1.0) / max(lone_e2e, 1e-9)
    load, s = run(rate)
    good = bad = None
    if load <= 1.0:
        good = (rate, s)
        for _ in range(MAX_DOUBLINGS):
            rate *= 2.0
            load, s = run(rate)
            if load > 1.0:
                bad = rate
                break
            good = (rate, s)
        if bad is None:
            raise LlmsimError(f"capacity search: the SLOs hold up to {rate:g} requests/s on tp={tp} pp={pp}; "
                              "the search stopped there")
    else:
        bad = rate
        for _ in range(MAX_HALVINGS):
            rate /= 2.0
            load, s = run(rate)
            if load <= 1.0:
                good = (rate, s)
                break
            bad = rate
        if good is None:
            out.seen_preemption = seen_preemption
            out.reason = (f"the SLOs are missed even unloaded on tp={tp} pp={pp}: p99 TTFT "
                          f"{s['ttft_s']['p99']:.4g} s, p99 TPOT {_fmt(s['tpot_s']['p99'])} s at {rate:.3g} requests/s")
            return out
    while bad - good[0] > rtol * good[0]:
        mid = math.sqrt(good[0] * bad)
        load, s = run(mid)
        if load <= 1.0:
            good = (mid, s)
        else:
            bad = mid
    rate, s = good
    out.feasible = True
    out.max_rate_rps = rate
    out.ttft_p99_s = s["ttft_s"]["p99"]
    out.tpot_p99_s = s["tpot_s"]["p99"]
    out.throughput_tok_s = s["throughput_tok_s"]
    out.seen_preemption = seen_preemption
    return out


def _fmt(x):
    return "-" if x is None else f"{x:.4g}"


def replica_layouts(model, hw) -> list[tuple[int, int]]:
    """(tp, pp) of one replica: GPU counts 1, 2, 4, ... up to one node (module docstring)."""
    from simulator.search import layouts_for
    node = max(1, hw.gpu_count)
    out = []
    g = 1
    while g <= node:
        out += [(tp, pp) for tp, pp, dp in layouts_for(model, hw, g) if dp == 1 and pp <= MAX_PP]
        g *= 2
    return out


def capacity(model, hw, spec: StreamSpec, engine: EngineConfig, slo: SLO, target_rate_rps: float | None = None,
             gpu_hour_usd: float | None = None, layouts=None, progress=None) -> CapacityResult:
    """Capacity of one hardware profile (module docstring). ``progress(text)`` is called
    before each layout's search."""
    import time
    t0 = time.perf_counter()
    check_slo(slo)
    if gpu_hour_usd is not None and (not math.isfinite(gpu_hour_usd) or gpu_hour_usd <= 0):
        raise WorkloadError(f"--gpu-hour-price must be a number of USD > 0, got {gpu_hour_usd!r}")
    rows = []
    for tp, pp in layouts or replica_layouts(model, hw):
        if progress:
            progress(f"{hw.name}: tp={tp} pp={pp}")
        try:
            row = max_rate(model, hw, spec, engine, slo, tp, pp)
        except PolicyError as e:  # the layout does not fit this model or machine
            row = LayoutCapacity(tp=tp, pp=pp, feasible=False, reason=str(e))
        if row.seen_preemption and "swap" in engine.preemption_modes \
                and engine.preemption != "swap":
            swap = max_rate(model, hw, spec, engine.with_(preemption="swap"), slo, tp, pp)
            swap.simulations += row.simulations
            if swap.feasible and swap.max_rate_rps > row.max_rate_rps:
                swap.kv_offload = True
                row = swap
            else:
                row.simulations += swap.simulations
        rows.append(row)
    ok = [r for r in rows if r.feasible]
    res = CapacityResult(hardware=hw.name, feasible=bool(ok), reason="", best=None, layouts=rows,
                         target_rate_rps=target_rate_rps, gpu_hour_usd=gpu_hour_usd)
    res.mean_output_tokens = float(np.mean(spec.at_rate(1.0).output_tokens))
    if not ok:
        res.reason = "infeasible: " + "; ".join(sorted({r.reason for r in rows if r.reason}))
        res.wall_s = time.perf_counter() - t0
        return res
    if target_rate_rps is not None:
        def gpus_for(r):
            return math.ceil(target_rate_rps / r.max_rate_rps * (1 - 1e-12)) * r.gpus
        best = min(ok, key=lambda r: (gpus_for(r), -r.max_rate_rps / r.gpus))
        res.replicas = math.ceil(target_rate_rps / best.max_rate_rps * (1 - 1e-12))
        res.gpus = res.replicas * best.gpus
        served_rps, gpus = target_rate_rps, res.gpus
    else:
        best = max(ok, key=lambda r: (r.max_rate_rps / r.gpus, -r.gpus))
        served_rps, gpus = best.max_rate_rps, best.gpus
    res.best = best
    if gpu_hour_usd is not None:
        res.usd_per_million_tokens = gpus * gpu_hour_usd / 3600.0 / (served_rps * res.mean_output_tokens) * 1e6
    res.wall_s = time.perf_counter() - t0
    return res
