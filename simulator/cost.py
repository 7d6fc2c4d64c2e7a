"""``estimate(model, hardware, workload, policy, engine)``: the prediction of one policy.

The engine (``simulator.engines``; default ``llmsim``, the project's own executor) turns the
model, the machine's measured rates and the batch shape into ``Terms`` - its schedule as a
sum over cells of the slowest concurrent channel, each channel affine in the nine placement
fractions (``simulator.terms``) - and into peak memory per tier (``simulator.memory``).
This module evaluates them for one policy and reports the answer: latencies, throughput,
memory against capacity, the busy time of every (phase, component, resource), and the
channel that bounds the run.

Decode steps: step t (1..gen_len-1) attends to ``prompt_len + t`` keys. Steps are grouped
into at most ``MAX_DECODE_SEGMENTS`` consecutive segments, each evaluated at its mean
context: exact for every affine term and, with overlap, slightly optimistic only inside a
segment where two channels cross.

Linearity: for a fixed batch shape, engine and flags every term is affine in the fractions
except the step terms (link latency, per-tier kernel launches) paid once per non-empty
transfer; the search's LP leaves those out (a lower bound) and re-evaluates every plan here.

Units: bytes, seconds, FLOP, bytes/s throughout.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from simulator.engines import get_engine
from simulator.engines.base import DEFAULT_ENGINE
from simulator import moe
from simulator.errors import PolicyError
from simulator.hardware import HardwareProfile
from simulator.models import ModelSpec
from simulator.parallel import rank_view
from simulator.policy import Policy, Workload
from simulator.terms import (BOUND_NAMES, BOUNDS, CH, CHANNEL_BOUND, CHANNELS, COMPUTE_PARTS, FRACTION_EPS,  # noqa: F401
                             LATENCY_MASK, LATENCY_NAMES, LATENCY_TERMS, N_X, RES, ROW_NAMES, BatchShape, Evaluation,
                             Terms, cell_weights, decode_segments, evaluate, fraction_vector)
from simulator.vocabulary import Bound, Phase, Tier

DEFAULT_PARTITION = ("1d-ws", "1d-ws", "heads")  # simulator.layouts.DEFAULT: Megatron-LM's split

TIER_NAMES = tuple(t.value for t in (Tier.GPU, Tier.CPU, Tier.DISK))
PHASE_NAMES = (Phase.PREFILL.value, Phase.DECODE.value)


def build_terms(model: ModelSpec, hw: HardwareProfile, workload: Workload, shape: BatchShape, dtype: str,
                tp: int = 1, pp: int = 1, dp: int = 1, engine=DEFAULT_ENGINE, partition=None) -> Terms:
    """The engine's ``Terms`` for P batch shapes under one parallel layout (per GPU).
    ``partition``: (prefill layout, decode layout, attention layout) names other than
    Megatron's (``simulator.layouts``; only engines with ``partition_layouts`` take them)."""
    extra = {} if partition is None or tuple(partition) == DEFAULT_PARTITION else {"partition": tuple(partition)}
    return get_engine(engine).build_terms(model, hw, workload, shape, dtype, tp, pp, dp, **extra)


@functools.lru_cache(maxsize=4096)
def cached_terms(model: ModelSpec, hw: HardwareProfile, workload: Workload, gpu_batch_size: int,
                 num_gpu_batches: int, cpu_attention: bool, compress_weights: bool, compress_cache: bool,
                 disk_io: str, dtype: str, tp: int = 1, pp: int = 1, dp: int = 1, engine=DEFAULT_ENGINE,
                 partition=None, expert_parallel: bool = False, expert_offload: str = "prefetch") -> Terms:
    """``build_terms`` for one batch shape, memoised (all arguments are frozen values)."""
    shape = BatchShape.one(gpu_batch_size, num_gpu_batches, cpu_attention, compress_weights, compress_cache, disk_io,
                           expert_parallel, expert_offload)
    return build_terms(model, hw, workload, shape, dtype, tp, pp, dp, engine, partition)


# ------------------------------------------------------------------ Estimate
@dataclass(frozen=True)
class Estimate:
    """The cost model's answer for one (model, hardware, workload, policy, engine).

    Latencies cover all ``num_sequences`` (``num_blocks`` blocks run one after another).
    ``throughput_tok_s = N x gen_len / total`` and ``decode_throughput_tok_s = N x
    (gen_len - 1) / decode`` as FlexGen reports them (None when gen_len is 1).
    ``breakdown``: rows {phase, component, resource, time_s}: busy time of each resource
    per component over the whole run (with overlap they do not add up to the latency).
    ``bound_time_s``: {phase: {bound: s}} the time each concurrent channel (or, within a
    compute chain, each compute resource) needs; ``bottleneck``: the ``Bound`` that set most
    of the time. ``policy`` is the policy as the engine realizes it; ``requested_policy``
    the one asked for, where the engine placed it differently (else None).
    """

    model: str
    hardware: str
    feasible: bool
    reason: str
    prefill_latency_s: float
    decode_latency_s: float
    total_latency_s: float
    throughput_tok_s: float
    decode_throughput_tok_s: float | None
    num_sequences: int
    block_size: int
    num_blocks: int
    peak_memory_bytes: dict
    peak_memory_by_phase: dict
    capacity_bytes: dict
    bottleneck: str
    bound_time_s: dict
    breakdown: list = field(default_factory=list)
    workload: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    engine: str = DEFAULT_ENGINE
    requested_policy: dict | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)

    def breakdown_frame(self):
        """The breakdown as a tidy pandas DataFrame (one row per phase, component, resource)."""
        import pandas as pd
        return pd.DataFrame(self.breakdown, columns=["phase", "component", "resource", "time_s"])


def check_inputs(model: ModelSpec, hw: HardwareProfile, workload: Workload, policy: Policy,
                 engine=DEFAULT_ENGINE) -> int:
    """Validate the combination; returns num_sequences."""
    ctx = workload.prompt_len + workload.gen_len
    if ctx > model.max_position_embeddings:
        raise PolicyError(f"--prompt-len + --gen-len = {ctx} exceeds {model.name}'s max_position_embeddings "
                          f"{model.max_position_embeddings}")
    hw.device.peak_flop_per_s(policy.dtype)  # raises ProfileError naming the missing key
    eng = get_engine(engine)
    if not policy.megatron_layout and not getattr(eng, "partition_layouts", False):
        raise PolicyError(f"--engine {eng.name}: runs Megatron's 1D tensor parallelism only; partition layouts "
                          f"({', '.join(policy.partition_names)}) are modelled by the llmsim engine")
    rank_view(model, hw, policy.tp, policy.pp, policy.dp, policy.partition_names)  # raises when it does not fit
    if policy.disk_io == "cached":
        hw.disk.read_bytes_per_s("cached")
    get_engine(engine).check(model, hw, policy)
    moe.check_policy(model, hw, policy, get_engine(engine).name)
    return policy.num_sequences(workload)


def memory_verdict(peak: np.ndarray, capacity: tuple, shared_host_pool: bool) -> tuple[bool, str]:
    """(feasible, reason) for peak bytes per tier (gpu, cpu, disk)."""
    from simulator.units import GiB

    need = {Tier.GPU: float(peak[0]), Tier.CPU: float(peak[1]), Tier.DISK: float(peak[2])}
    have = dict(zip((Tier.GPU, Tier.CPU, Tier.DISK), capacity))
    if shared_host_pool:  # CPU-only machine: the "gpu" tier is host RAM too
        need = {Tier.CPU: need[Tier.GPU] + need[Tier.CPU], Tier.DISK: need[Tier.DISK]}
    short = []
    for tier, n in need.items():
        if n > have[tier]:
            label = "cpu (host RAM, shared with the gpu tier on this CPU-only machine)" \
                if shared_host_pool and tier is Tier.CPU else tier.value
            short.append(f"{label} memory: needs {n / GiB:.2f} GiB, has {have[tier] / GiB:.2f} GiB "
                         f"(short by {(n - have[tier]) / GiB:.2f} GiB)")
    return (not short), "; ".join(short)


def estimate(model: ModelSpec, hardware: HardwareProfile, workload: Workload, policy: Policy,
             engine=DEFAULT_ENGINE) -> Estimate:
    """Predict latency, throughput and peak memory of ``policy`` run by ``engine`` (pure).

    The engine first realizes the policy (its placement rules: e.g. FlexGen places whole
    tensors by the midpoint of their cumulative size); the estimate is of the realized
    policy, and says so. Raises PolicyError / ProfileError for inputs that cannot be
    evaluated; an infeasible but well-formed case returns ``feasible=False`` with the tier
    that is short.
    """
    eng = get_engine(engine)
    N = check_inputs(model, hardware, workload, policy, eng)
    real = eng.realize(model, policy)
    terms = cached_terms(model, hardware, workload, real.gpu_batch_size, real.num_gpu_batches,
                         real.cpu_attention, real.compress_weights, real.compress_cache, real.disk_io,
                         real.dtype, real.tp, real.pp, real.dp, eng,
                         None if real.megatron_layout else real.partition_names, real.expert_parallel,
                         real.expert_offload)
    X = fraction_vector(real)[None, :]
    ev = evaluate(terms, X, np.array([real.overlap]), detail=True)
    blocks = N // (real.block_size * real.dp)  # blocks per data-parallel replica, run one after another
    prefill = float(ev.prefill_s[0]) * blocks
    decode = float(ev.decode_s[0]) * blocks
    total = prefill + decode
    n = workload.gen_len
    peak_phase = ev.mem[0]  # (phase, tier)
    peak = peak_phase.max(axis=0)
    feasible, reason = memory_verdict(peak, terms.capacity_bytes, terms.shared_host_pool)
    weights = _phase_weights(terms, blocks)
    return Estimate(
        model=model.name, hardware=hardware.name, feasible=feasible, reason=reason,
        prefill_latency_s=prefill, decode_latency_s=decode, total_latency_s=total,
        throughput_tok_s=N * n / total if total > 0 else math.inf,
        decode_throughput_tok_s=(N * (n - 1) / decode) if n > 1 and decode > 0 else None,
        num_sequences=N, block_size=real.block_size, num_blocks=blocks,
        peak_memory_bytes=dict(zip(TIER_NAMES, peak.tolist())),
        peak_memory_by_phase={ph: dict(zip(TIER_NAMES, row)) for ph, row in zip(PHASE_NAMES, peak_phase.tolist())},
        capacity_bytes=dict(zip(TIER_NAMES, map(float, terms.capacity_bytes))),
        bottleneck=_bottleneck(ev, weights, real.overlap, terms.sync_bound),
        bound_time_s={ph: dict(zip(BOUND_NAMES, np.einsum("sgb,sg->b", ev.bounds[0], w).tolist()))
                      for ph, w in zip(PHASE_NAMES, weights)},
        breakdown=_breakdown(terms, X[0], weights),
        workload={**workload.to_dict(), "num_sequences": N},
        policy=real.to_dict(), engine=eng.name,
        requested_policy=None if real == policy else policy.to_dict(),
    )


def _phase_weights(terms: Terms, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicity of each (seg, scope) cell over the run, for prefill and for decode."""
    mult = cell_weights(terms)[0].reshape(-1, terms.num_scopes) * blocks  # (seg, scope)
    pre = np.zeros_like(mult)
    pre[0] = mult[0]
    return pre, mult - pre


def _breakdown(terms: Terms, X: np.ndarray, weights) -> list[dict]:
    row_time = terms.coef[0] @ X  # (seg, scope, row)
    trig = (LATENCY_MASK @ X > FRACTION_EPS).astype(float)
    lat_time = terms.latency[0] * trig  # (seg, scope, term)
    rows = []
    for phase, w in zip(PHASE_NAMES, weights):
        acc = dict(zip(ROW_NAMES, np.einsum("sgr,sg->r", row_time, w).tolist()))
        for key, t in zip(LATENCY_NAMES, np.einsum("sgt,sg->t", lat_time, w).tolist()):
            acc[key] += t
        rows += [{"phase": phase, "component": c, "resource": r, "time_s": t} for (c, r), t in acc.items() if t > 0]
    return rows


def _bottleneck(ev: Evaluation, weights, overlap: bool, sync: bool = False) -> str:
    """The bound that governed the most time: with overlap, per (segment, scope) the
    channel at the max - a chain of compute resources attributed to its largest part (the
    SYNC time one of them where ``sync``, ``Terms.sync_bound``); serially, the resource (or
    transfer channel) with the most busy time."""
    w = weights[0] + weights[1]
    b = ev.bounds[0]  # (seg, scope, bound)
    if not overlap:
        acc = np.einsum("sgb,sg->b", b, w)
        acc[BOUNDS.index(Bound.LINK_DUPLEX)] = 0.0  # not a channel when nothing overlaps
        return BOUND_NAMES[int(acc.argmax())]
    chan = ev.channels[0]  # (channel, seg, scope)
    top = chan.argmax(axis=0)
    time = chan.max(axis=0) * w
    acc = np.zeros(len(BOUNDS))
    if sync:  # serial host time that joins every channel: the bound where it is most of the slowest one
        sync_t = b[..., BOUNDS.index(Bound.SYNC)]
        mostly = sync_t > 0.5 * chan.max(axis=0)
        np.add.at(acc, BOUNDS.index(Bound.SYNC), time[mostly].sum())
        top = np.where(mostly, -1, top)
    for c, name in enumerate(CHANNELS):
        sel = top == c
        if not sel.any():
            continue
        if name in COMPUTE_PARTS:
            parts = [BOUNDS.index(Bound(r.value)) for r in COMPUTE_PARTS[name]] + \
                ([BOUNDS.index(Bound.SYNC)] if sync else [])
            part = np.array(parts)[np.argmax(b[..., parts], axis=-1)]
            np.add.at(acc, part[sel], time[sel])
        else:
            acc[BOUNDS.index(CHANNEL_BOUND[name])] += time[sel].sum()
    return BOUND_NAMES[int(acc.argmax())]
