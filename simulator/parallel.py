"""Tensor, pipeline and data parallelism: communication and pipeline formulas.

Pure functions of sizes and the profile's interconnect figures; ``simulator.cost`` applies
them per layer. Units: bytes, seconds, bytes/s.

Conventions (nccl-tests, "PERFORMANCE.md"): for a collective moving a message of S bytes
among n ranks, *algbw* = S / time and *busbw* = algbw x (the factor below), the per-rank
link traffic that a perfect ring would need. Profiles store the measured **busbw** of each
link kind, so a collective's time is ``latency_term + factor x S / busbw``.

- ring all-reduce: each rank sends and receives 2(n-1)/n x S (reduce-scatter then
  all-gather; Patarasuk and Yuan, JPDC 2009), in 2(n-1) steps of one link latency each;
- send/recv (pipeline stages): S over one link, one latency.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import PolicyError, ProfileError
from simulator.hardware import HardwareProfile
from simulator.models import ModelSpec


def group_link(profile: str, within_node: bool, intra: tuple, inter: tuple, what: str) -> tuple[float, float]:
    """(busbw bytes/s, latency s) of the link a group of GPUs communicates over: the node's
    GPU link (NVLink/NVSwitch; ``intra``) when every rank of the group is on one node, else
    the network (``inter``). ``what`` names the traffic in the ProfileError raised when the
    profile lacks that link's rate."""
    bw, lat = intra if within_node else inter
    if bw is None:
        key, where = ("intra_node_GBps", "of one node") if within_node else ("inter_node_GBps", "across nodes")
        raise ProfileError(f"hardware profile {profile}: interconnect.{key} is needed for {what} {where} but the "
                           "profile does not give it")
    return bw, lat


def allreduce_factor(n: int) -> float:
    """Per-rank bytes sent (and received) by a ring all-reduce, as a multiple of S: 2(n-1)/n."""
    return 2.0 * (n - 1) / n if n > 1 else 0.0


def allreduce_time_s(nbytes, n: int, busbw_bytes_per_s: float, latency_s: float):
    """Ring all-reduce of ``nbytes`` among n ranks: ``2(n-1) x latency + 2(n-1)/n x S / busbw``.

    Zero for n = 1. ``nbytes`` may be a numpy array. Unit: s."""
    if n <= 1:
        return 0.0 * nbytes
    return 2.0 * (n - 1) * latency_s + allreduce_factor(n) * nbytes / busbw_bytes_per_s


def send_time_s(nbytes, bytes_per_s: float, latency_s: float):
    """Point-to-point transfer of ``nbytes`` over one link: ``latency + S / bandwidth``. Unit: s."""
    return latency_s + nbytes / bytes_per_s


def pipeline_bubble_frac(stages: int, micro_batches: int) -> float:
    """Idle share of a pipeline of p stages filled with m micro-batches: (p-1)/(m+p-1)
    (GPipe, Huang et al. 2019, section 2.2)."""
    if stages < 1 or micro_batches < 1:
        raise PolicyError(f"pipeline: stages {stages} and micro-batches {micro_batches} must be >= 1")
    return (stages - 1) / (micro_batches + stages - 1)


def pipeline_time_s(stage_time_s, stages: int, micro_batches: int):
    """Time for m micro-batches through p equal stages, when ``stage_time_s`` is the time
    one stage needs for all m micro-batches: ``stage_time x (m + p - 1) / m``, i.e. the
    stage time stretched by the fill and drain of the pipeline. Unit: s."""
    return stage_time_s * (micro_batches + stages - 1) / micro_batches


@dataclass(frozen=True)
class Layout:
    """How a model is spread over GPUs: tp x pp GPUs per replica, dp replicas."""

    tp: int = 1
    pp: int = 1
    dp: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def layers_per_stage(self, num_layers: int) -> int:
        """Layers of the busiest stage: ceil(L / pp)."""
        return -(-num_layers // self.pp)


@dataclass(frozen=True)
class RankView:
    """What one GPU (a tensor-parallel rank of one pipeline stage of one replica) holds and
    does, and what it shares with the other GPUs of its node. tp = pp = dp = 1 is the
    single-GPU case."""

    tp: int
    pp: int
    dp: int
    layers: int  # layers of the busiest stage: ceil(L / pp)
    ranks_per_node: int  # GPUs of this run on one node: they share its disk, CPU and RAM
    collective_bytes_per_s: float  # busbw of the link the tp group spans
    collective_latency_s: float
    p2p_bytes_per_s: float  # link between pipeline stages
    p2p_latency_s: float
    # The partition layouts of the tp group (``simulator.layouts.Partition``): None is
    # Megatron's 1D split with heads-sharded attention on a switched network.
    partition: object = None


def rank_view(model: ModelSpec, hw: HardwareProfile, tp: int, pp: int, dp: int, partition=None) -> RankView:
    """The per-GPU view of a layout on ``hw``; raises PolicyError/ProfileError when it
    does not fit the machine or the model. ``partition``: (prefill layout, decode layout,
    attention sharding) names (``simulator.layouts``); on a torus, or for names other than
    Megatron's, the view carries their ``Partition``."""
    gpus = tp * pp * dp
    if model.num_heads % tp:
        raise PolicyError(f"--tp {tp} does not divide {model.name}'s {model.num_heads} attention heads")
    if pp > model.num_layers:
        raise PolicyError(f"--pp {pp} exceeds {model.name}'s {model.num_layers} layers")
    total = hw.gpu_count * hw.interconnect.nodes
    if gpus > 1 and gpus > total:
        raise PolicyError(f"--tp {tp} x --pp {pp} x --dp {dp} = {gpus} GPUs, but {hw.name} has {total} "
                          f"({hw.gpu_count} per node x {hw.interconnect.nodes} node(s))")
    per_node = max(1, hw.gpu_count)
    ic = hw.interconnect

    def link(span: int, what: str) -> tuple[float, float]:
        if span <= 1:
            return 1.0, 0.0  # unused
        if span <= per_node:
            if ic.intra_node_bytes_per_s is None:
                raise ProfileError(f"hardware profile {hw.name}: interconnect.intra_node_GBps is needed for {what} "
                                   f"over {span} GPUs of one node but the profile does not give it")
            return ic.intra_node_bytes_per_s, ic.intra_node_latency_s
        if ic.inter_node_bytes_per_s is None:
            raise ProfileError(f"hardware profile {hw.name}: interconnect.inter_node_GBps is needed for {what} "
                               f"across nodes but the profile does not give it")
        return ic.inter_node_bytes_per_s, ic.inter_node_latency_s

    from simulator import layouts
    part = None
    if ic.topology == "torus" or not layouts.is_default(partition):
        part = layouts.partition(model, hw, tp, partition or layouts.DEFAULT)
    if ic.topology == "torus":
        # A ring over the whole tp group (its every axis) and one ICI link between stages; the
        # per-step latency spreads the torus's sum(k_a - 1) hops over allreduce_time_s's n - 1 steps.
        g = part.topology.group(part.mesh, layouts.AXES)
        cb, cl = (g.bytes_per_s, g.steps * g.latency_s / (tp - 1)) if tp > 1 else (1.0, 0.0)
        pb, pl = ic.ici_link_bytes_per_s, ic.ici_link_latency_s
    else:
        cb, cl = link(tp, f"--tp {tp}")
        pb, pl = link(tp * pp if pp > 1 else 1, f"--pp {pp}")
    return RankView(tp=tp, pp=pp, dp=dp, layers=-(-model.num_layers // pp), ranks_per_node=min(per_node, gpus),
                    collective_bytes_per_s=cb, collective_latency_s=cl, p2p_bytes_per_s=pb, p2p_latency_s=pl,
                    partition=part)
