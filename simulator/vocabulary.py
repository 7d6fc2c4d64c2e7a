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


class PartitionLayout(str, Enum):
    """How one layer's weights and activations are split over the chips of a tensor-parallel
    group (Pope et al., "Efficiently Scaling Transformer Inference", arXiv 2211.05102,
    section 3.2; ``simulator.layouts``). ``1d-ws`` is Megatron-LM's split, the default."""

    WS_1D = "1d-ws"  # weight-stationary, F (heads) over all chips: activations all-reduced
    WS_2D = "2d-ws"  # weight-stationary, E over the x axis and F over y, z
    WG_X = "wg-x"  # weights all-gathered over x, batch split over x, 1D over y, z
    WG_XY = "wg-xy"  # ... over x and y
    WG_XYZ = "wg-xyz"  # ... over every chip: each chip runs whole layers on its sequences


PARTITION_LAYOUTS = tuple(PartitionLayout)


class AttentionSharding(str, Enum):
    """What the KV cache (and decode attention) is split over (arXiv 2211.05102 section 3.3):
    ``heads`` (Megatron; a multi-query cache is then replicated on every chip) or ``batch``
    (each chip holds its own sequences' cache; an all-to-all moves queries and outputs)."""

    HEADS = "heads"
    BATCH = "batch"


class Collective(str, Enum):
    """Collectives over the chips of a mesh axis group (``simulator.layouts``)."""

    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_REDUCE = "all_reduce"
    ALL_TO_ALL = "all_to_all"


class Topology(str, Enum):
    """How the accelerators are wired: ``switch`` (GPUs on NVLink/NVSwitch or PCIe inside a
    node, a network between nodes) or ``torus`` (TPU v4: a 3D torus of chip-to-chip links)."""

    SWITCH = "switch"
    TORUS = "torus"
