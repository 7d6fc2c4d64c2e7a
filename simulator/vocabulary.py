"""One vocabulary of names shared by cost breakdowns, profiler tables, executor timers and
output columns. The enum *values* are what appears in JSON, CSV and tables.
"""

from __future__ import annotations

from enum import Enum


class Tier(str, Enum):
    """Where a tensor lives."""

    GPU = "gpu"
    CPU = "cpu"
    DISK = "disk"


TIERS = (Tier.GPU, Tier.CPU, Tier.DISK)


class Phase(str, Enum):
    PREFILL = "prefill"
    DECODE = "decode"


class Resource(str, Enum):
    """A unit that does work concurrently with the others when overlap is on.

    ``h2d``/``d2h``: the host<->GPU link per direction; ``disk_read``/``disk_write``: the disk
    (one device, so its reads and writes share it); ``gpu``/``cpu``: compute.
    """

    H2D = "h2d"
    D2H = "d2h"
    DISK_READ = "disk_read"
    DISK_WRITE = "disk_write"
    GPU = "gpu"
    CPU = "cpu"
    COLLECTIVE = "collective"  # tensor-parallel all-reduces over NVLink/PCIe/network
    P2P = "p2p"  # pipeline-parallel sends between stages
    HOST = "host"  # the host thread that issues kernels, waits on syncs and copies on the CPU
    SYNC = "sync"  # host time at an engine's synchronization points, when nothing else runs


class Component(str, Enum):
    """What a piece of time is spent on."""

    WEIGHT_LOAD = "weight_load"  # weights of a layer moved towards the GPU
    CACHE_LOAD = "cache_load"  # KV cache moved towards the GPU for attention
    CACHE_STORE = "cache_store"  # new KV cache moved out of the GPU
    ACTIVATION_LOAD = "activation_load"  # hidden states moved towards the GPU
    ACTIVATION_STORE = "activation_store"  # hidden states moved out of the GPU
    ATTENTION_IO = "attention_io"  # queries out / attention outputs back for CPU attention
    MATMUL = "matmul"  # GEMMs (projections, MLP, LM head)
    ATTENTION = "attention"  # attention over the KV cache (on the GPU or the CPU)
    ELEMENTWISE = "elementwise"  # norms, activations, residual adds, rotary embedding
    COMPRESSION = "compression"  # 4-bit group-wise (de)quantisation
    COMMUNICATION = "communication"  # tensor-parallel all-reduces
    PIPELINE_SEND = "pipeline_send"  # hidden states to the next pipeline stage
    KERNEL_LAUNCH = "kernel_launch"  # host time issuing eager kernels (the GPU waits when it is ahead)
    SYNCHRONIZATION = "synchronization"  # device/stream synchronizations of the host


class Bound(str, Enum):
    """The concurrent channel that sets a phase's time when overlap is on.

    ``link_duplex`` is the host<->GPU link when both directions are busy and their sum is
    what limits (the profile's bidirectional figure). GPU compute, CPU attention and the
    tensor-parallel all-reduces form one serial chain; ``gpu``, ``cpu`` and ``collective``
    name whichever of them was the largest part of it. ``host`` is the host thread issuing an
    eager engine's kernels (with the CPU attention it also runs), when that is the slowest.
    """

    H2D = "h2d"
    D2H = "d2h"
    LINK_DUPLEX = "link_duplex"
    DISK = "disk"
    GPU = "gpu"
    CPU = "cpu"
    COLLECTIVE = "collective"
    P2P = "p2p"
    HOST = "host"
    SYNC = "sync"
