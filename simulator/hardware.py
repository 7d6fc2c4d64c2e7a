"""HardwareProfile: a machine's measured (or datasheet) figures, in SI units.

A profile is a YAML file whose keys carry their unit (``memory_GiB``, ``h2d_pinned_GBps``,
``fp16_TFLOPs``, ``kernel_launch_us``). ``simulator.profile_schema`` says what it may hold
and checks it (strict pydantic models; the JSON schema is ``schemas/profile.schema.json``);
``profile_from_dict`` converts a checked profile once to SI (bytes, seconds, FLOP/s,
bytes/s) into the dataclasses below.

Sections
--------
``metadata``      source (measured | datasheet | paper | estimate), date, method, notes and
                  optionally ``key_sources`` ({"gpu.kernel_launch_us": "estimate", ...}) for
                  keys whose source differs from the profile's.
``gpu``           the accelerator; absent on a CPU-only machine, where the "GPU" tier is the
                  host itself (``HardwareProfile.device_is_host``).
``cpu``           host compute and memory.
``disk``          offload storage: O_DIRECT and page-cached rates.
``links``         host<->GPU per direction (pinned, pageable, both at once) with fitted latency.
``interconnect``  GPU<->GPU and node<->node (optional).
``measurements``  raw samples and fits from the profiler: kept for people, not read here.

Every efficiency the cost model uses is looked up here (``ComputeDevice.matmul_time_s`` and
friends), so a measured table, when present, replaces the roofline in one place.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulator import profile_schema as schema
from simulator.errors import ProfileError
from simulator.profile_schema import MATMUL_DTYPES, SCHEMA_VERSION, si  # noqa: F401 (SCHEMA_VERSION: the profilers)
from simulator.units import GB, US, GiB

DATA_DIR = Path(__file__).resolve().parent.parent / "hardware_profiles" / "data"

# A measured GEMM table entry is used for a GEMM whose k x n lies within this factor of the
# entry's; outside every entry the roofline applies. The profiler measures each model
# family's (k, n) shapes, so this only decides what happens for shapes nobody measured.
TABLE_SHAPE_REACH = 4.0


# ------------------------------------------------------------------ dataclasses
@dataclass(frozen=True)
class MatmulCurve:
    """Measured GEMM times for one (dtype, k, n) over a sweep of m (the token dimension)."""

    dtype: str
    k: int
    n: int
    m: tuple[int, ...]
    time_s: tuple[float, ...]

    def flop_per_s(self) -> np.ndarray:
        return 2.0 * np.asarray(self.m) * self.k * self.n / np.asarray(self.time_s)


@dataclass(frozen=True)
class RateCurve:
    """Achieved rate as a function of the work done (bytes moved, or FLOP), from measured points."""

    amount: tuple[float, ...]
    time_s: tuple[float, ...]

    def time_for(self, amount):
        """Time for ``amount`` of work: the achieved rate interpolated in log(amount),
        clamped to the measured range, applied to ``amount``."""
        x = np.log(np.asarray(self.amount))
        rate = np.asarray(self.amount) / np.asarray(self.time_s)
        b = np.asarray(amount, dtype=float)
        r = np.interp(np.log(np.maximum(b, 1.0)), x, rate)
        return b / r


@dataclass(frozen=True)
class ComputeDevice:
    """A unit that computes on data in its own memory: the GPU, or the host CPU.

    ``launch_s`` is the fixed cost of one kernel (GPU) or one operator call (CPU).
    ``matmul_curves``: GEMMs whose weights come from memory, as a layer's resident weights
    do after the rest of the model streamed through the caches. ``staged_matmul_curves``:
    the same GEMMs right after their layer's weights were copied into the executor's staging
    buffer, which then sits in the cache when one layer's weights fit there (measured by
    rotating over one layer's bytes, ``hardware_profiles.ops.staged_table``).
    """

    name: str
    memory_bytes: float
    reserved_bytes: float
    mem_bytes_per_s: float
    matmul_flop_per_s: tuple  # ((dtype, FLOP/s), ...)
    launch_s: float
    matmul_curves: tuple = ()
    decode_attention: tuple | None = None  # ((K/V storage dtype or None for unlabelled rows, RateCurve), ...)
    prefill_attention: tuple | None = None  # ((dtype or None, RateCurve over FLOP), ...)
    staged_matmul_curves: tuple = ()
    is_host: bool = False
    gemm_mem_bytes_per_s: float | None = None  # a memory-bound GEMM's read rate (None: mem_bytes_per_s)
    gemm_fixed_s: float = 0.0  # a memory-bound GEMM kernel's time beside its bytes (the intercept; s)

    @property
    def gemm_read_bytes_per_s(self) -> float:
        """The rate a memory-bound GEMM reads at: ``gemm_mem_bytes_per_s`` where the profile
        gives one, else the memory rate. Unit: bytes/s."""
        return self.gemm_mem_bytes_per_s or self.mem_bytes_per_s

    @property
    def usable_bytes(self) -> float:
        return self.memory_bytes - self.reserved_bytes

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.matmul_flop_per_s)

    def peak_flop_per_s(self, dtype: str) -> float:
        rates = dict(self.matmul_flop_per_s)
        if dtype not in rates:
            unit = "GFLOPs" if self.is_host else "TFLOPs"
            raise ProfileError(f"hardware profile: {'cpu' if self.is_host else 'gpu'}.{dtype}_{unit} is needed "
                               f"for {dtype} compute but the profile does not give it "
                               f"(it gives: {', '.join(self.dtypes) or 'none'})")
        return rates[dtype]

    @staticmethod
    def _exact_points(curves: tuple, dtype: str, k: int, n: int):
        """(log m, FLOP/s) of the curve of this very (dtype, k, n) among ``curves``, or None."""
        for c in curves:
            if c.dtype == dtype and (c.k, c.n) == (k, n):
                return np.log(np.asarray(c.m, float)), np.asarray(c.flop_per_s())
        return None

    def _rate_points(self, dtype: str, k: int, n: int):
        """(log m, FLOP/s) points: the curve of this exact (k, n) when measured; otherwise the
        points of every curve of ``dtype`` whose k*n lies within ``TABLE_SHAPE_REACH`` of this
        GEMM's, where at an m measured for several shapes the nearest shape wins. In the memory-bound regime the achieved rate is ~ m x bandwidth and at
        large m it approaches the peak, both independent of the shape, which is why nearby
        shapes can share points. None when no curve is near."""
        exact = self._exact_points(self.matmul_curves, dtype, k, n)
        if exact is not None:  # a curve of this very shape: (768, 3072) and (3072, 768) differ at small m
            return exact
        best: dict[int, tuple[float, float]] = {}
        for c in self.matmul_curves:
            if c.dtype != dtype:
                continue
            d = abs(math.log((k * n) / (c.k * c.n)))
            if d > math.log(TABLE_SHAPE_REACH):
                continue
            for m, rate in zip(c.m, c.flop_per_s()):
                if m not in best or d < best[m][0]:
                    best[m] = (d, float(rate))
        if not best:
            return None
        ms = sorted(best)
        return np.log(np.asarray(ms, float)), np.asarray([best[m][1] for m in ms])

    def matmul_time_s(self, m, k: int, n: int, dtype: str, elem_bytes: float, staged: bool = False):
        """Time of one (m x k) @ (k x n) GEMM; ``m`` may be a numpy array.

        ``staged``: the weights were just copied into the staging buffer; the staged curve of
        this exact (dtype, k, n) is used when the profile measured one, else the others.

        With measured curves of a similar shape (``_rate_points``): the achieved FLOP/s at
        this m, interpolated in log(m) and clamped to the measured range, applied to 2mkn FLOP
        (the measured time already holds the launch cost).
        Otherwise the roofline: ``max(2mkn / peak, fixed + (mk + kn + mn) x elem_bytes / gemm_bw)
        + launch`` (Williams et al., "Roofline", CACM 2009), where ``gemm_bw`` is the rate a
        memory-bound GEMM reads at when the profile gives one (``gpu.gemm_memory_GBps``: GEMM
        kernels at a few rows stream the weights below a copy's rate), else the memory rate,
        and ``fixed`` the time such a kernel takes beside its bytes (``gpu.gemm_fixed_us``, the
        intercept of time against bytes; 0 where the profile does not give it). Both are the
        GPU's: a CUDA graph removes the host's ``launch``, not ``fixed``.
        Unit: s.
        """
        m = np.asarray(m, dtype=float)
        flop = 2.0 * m * k * n
        points = self._exact_points(self.staged_matmul_curves, dtype, k, n) if staged else None
        if points is None:
            points = self._rate_points(dtype, k, n)
        if points is not None:
            rate = np.interp(np.log(np.maximum(m, 1.0)), *points)
            return flop / rate
        nbytes = (m * k + k * n + m * n) * elem_bytes
        return np.maximum(flop / self.peak_flop_per_s(dtype),
                          self.gemm_fixed_s + nbytes / self.gemm_read_bytes_per_s) + self.launch_s

    def stream_time_s(self, nbytes, kernels=1.0):
        """Time of memory-bound kernels moving ``nbytes`` (read + written) in ``kernels``
        launches: ``nbytes / mem_bw + kernels x launch``. Unit: s."""
        return np.asarray(nbytes, dtype=float) / self.mem_bytes_per_s + kernels * self.launch_s

    def attention_read_time_s(self, kv_bytes, flop, dtype: str, storage_dtype: str | None = None):
        """Decode attention reading ``kv_bytes`` of K and V stored in ``storage_dtype``
        (default: ``dtype``, the compute dtype): the measured decode-attention curve of that
        storage dtype when the profile has one (achieved bytes/s by size), else its unlabelled
        or only curve (the same achieved rate at the same bytes in another dtype), else the
        roofline on memory bandwidth and matmul peak. Kernel speed is per dtype on a CPU: in
        the CI suite's profile of the 2-core Xeon (2026-12-02), torch's decode attention over
        16 x 32 and 16 x 40 keys of opt-125m took 1569 and 2168 us in bf16 against 440 and 891
        us in fp32, where the bytes alone say half.
        Excludes the launch, which the caller charges once per kernel."""
        kv_bytes = np.asarray(kv_bytes, dtype=float)
        if self.decode_attention:
            return _curve_of(self.decode_attention, storage_dtype or dtype).time_for(kv_bytes)
        return np.maximum(kv_bytes / self.mem_bytes_per_s, np.asarray(flop, float) / self.peak_flop_per_s(dtype))

    def prefill_attention_compute_s(self, flop, nbytes, dtype: str):
        """Causal prefill attention of ``flop`` FLOP moving ``nbytes``: the measured
        prefill-attention curve of that dtype (achieved FLOP/s by FLOP; else its unlabelled
        or only curve) when the profile has one, else the roofline on the matmul peak and
        memory bandwidth. On a CPU the fused kernel of a short prompt runs far below the GEMM
        peak: in one run of ``scripts/plan_case_components.py`` (2026-12-02) the executor's
        prefill attention took 6.2x (fp32) and 14x (bf16) the roofline. Excludes the launch.
        Unit: s."""
        flop = np.asarray(flop, dtype=float)
        if self.prefill_attention:
            return _curve_of(self.prefill_attention, dtype).time_for(flop)
        return np.maximum(flop / self.peak_flop_per_s(dtype), np.asarray(nbytes, float) / self.mem_bytes_per_s)


def _curve_of(curves: tuple, dtype: str | None) -> "RateCurve":
    """The curve of ``dtype`` among ((dtype or None, curve), ...); else the unlabelled one, else the first."""
    by = dict(curves)
    return by.get(dtype) or by.get(None) or curves[0][1]


@dataclass(frozen=True)
class Links:
    """Host<->device link (bytes/s, s). For a host-only device: memcpy within RAM."""

    h2d_bytes_per_s: float
    d2h_bytes_per_s: float
    duplex_bytes_per_s: float
    h2d_latency_s: float = 0.0
    d2h_latency_s: float = 0.0
    h2d_pageable_bytes_per_s: float | None = None
    d2h_pageable_bytes_per_s: float | None = None


@dataclass(frozen=True)
class Disk:
    capacity_bytes: float
    read_direct_bytes_per_s: float
    write_direct_bytes_per_s: float
    read_cached_bytes_per_s: float | None = None
    write_cached_bytes_per_s: float | None = None

    def read_bytes_per_s(self, mode: str) -> float:
        if mode == "cached":
            if self.read_cached_bytes_per_s is None:
                raise ProfileError("hardware profile: disk.read_cached_GBps is needed for disk_io 'cached' "
                                   "but the profile does not give it")
            return self.read_cached_bytes_per_s
        return self.read_direct_bytes_per_s

    def write_bytes_per_s(self, mode: str) -> float:
        if mode == "cached" and self.write_cached_bytes_per_s is not None:
            return self.write_cached_bytes_per_s
        return self.write_direct_bytes_per_s


@dataclass(frozen=True)
class Interconnect:
    """GPU<->GPU links. ``topology`` "switch": inside a node over ``intra_node_*`` (NVLink,
    NVSwitch or PCIe), between nodes over ``inter_node_*`` (busbw of each, nccl-tests'
    convention: ``simulator.parallel``). "torus": every chip has ``ici_links_per_chip`` links
    (two per axis of ``torus_shape``, X x Y x Z chips) of ``ici_link_bytes_per_s`` each way
    and ``ici_link_latency_s`` per hop; ``torus_wraparound``: each full axis closes into a
    ring (``simulator.layouts.Topology``)."""

    gpus_per_node: int = 1
    nodes: int = 1
    intra_node_link: str = "none"
    intra_node_bytes_per_s: float | None = None
    intra_node_latency_s: float = 0.0
    inter_node_bytes_per_s: float | None = None
    inter_node_latency_s: float = 0.0
    topology: str = "switch"
    torus_shape: tuple = ()
    torus_wraparound: bool = False
    ici_link_bytes_per_s: float | None = None
    ici_link_latency_s: float = 0.0
    ici_links_per_chip: int = 0


@dataclass(frozen=True)
class HardwareProfile:
    """A machine. ``device`` is where the "gpu" tier lives and computes: the GPU, or the
    host CPU on a CPU-only machine (then GPU and CPU tiers share one pool of RAM)."""

    name: str
    source: str
    device: ComputeDevice
    cpu: ComputeDevice
    cpu_cores: int
    disk: Disk
    links: Links
    interconnect: Interconnect
    gpu_count: int  # GPUs per node
    cpu_threads: int = 0  # torch threads the CPU figures were measured with (0: all cores)
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
    cpu_memcpy_bytes_per_s: float | None = None  # cpu.memcpy_GBps: one RAM buffer into another

    @property
    def memcpy_bytes_per_s(self) -> float:
        """Payload rate of a copy within host RAM (``cpu.memcpy_GBps``; without it, half the
        read + written ``cpu.memory_GBps``). Unit: bytes/s."""
        return self.cpu_memcpy_bytes_per_s or self.cpu.mem_bytes_per_s / 2
    path: str = field(default="", compare=False)

    @property
    def device_is_host(self) -> bool:
        return self.device.is_host

    @property
    def host_copies_overlap(self) -> bool:
        """On a CPU-only machine: do copies between the tiers run beside compute? Only when
        the compute threads leave cores free (``cpu.threads`` < ``cpu.cores``); when every
        core computes, a copy thread takes cores and memory bandwidth from the GEMMs."""
        return self.device_is_host and 0 < self.cpu_threads < self.cpu_cores

    def with_capacity(self, gpu_bytes=None, cpu_bytes=None, disk_bytes=None) -> "HardwareProfile":
        """A copy with capacities overridden (the planner's --gpu-mem/--cpu-mem/--disk)."""
        from dataclasses import replace
        dev, cpu, disk = self.device, self.cpu, self.disk
        if gpu_bytes is not None:
            dev = replace(dev, memory_bytes=gpu_bytes, reserved_bytes=0.0)
        if cpu_bytes is not None:
            cpu = replace(cpu, memory_bytes=cpu_bytes, reserved_bytes=0.0)
            if dev.is_host:
                dev = replace(dev, memory_bytes=cpu_bytes, reserved_bytes=0.0)
        if disk_bytes is not None:
            disk = replace(disk, capacity_bytes=disk_bytes)
        return replace(self, device=dev, cpu=cpu, disk=disk)

    @property
    def total_gpus(self) -> int:
        return self.gpu_count * self.interconnect.nodes

    def key_source(self, key: str) -> str:
        """Where one figure (``"gpu.hbm_GBps"``) comes from: its ``metadata.key_sources`` entry,
        else the profile's ``metadata.source``."""
        return (self.metadata.get("key_sources") or {}).get(key, self.source)

    def bound_sources(self, bound: str, dtype: str = "fp16") -> dict:
        """{profile key: source} of the figures that set a ``Bound``'s time (the bottleneck of
        an estimate): a link's rate, the disk's, the device's memory rate and GEMM peak (its
        measured table where it has one), the CPU's, the host's launch cost, the interconnect."""
        dev = "cpu" if self.device_is_host else "gpu"
        keys = {"h2d": ["links.h2d_pinned_GBps"], "d2h": ["links.d2h_pinned_GBps"],
                "link_duplex": ["links.duplex_pinned_GBps"], "disk": ["disk.read_direct_GBps", "disk.write_direct_GBps"],
                "gpu": [f"{dev}.{'hbm' if dev == 'gpu' else 'memory'}_GBps",
                        f"{dev}.{dtype}_{'TFLOPs' if dev == 'gpu' else 'GFLOPs'}"],
                "cpu": ["cpu.memory_GBps", "cpu.fp32_GFLOPs"], "host": [f"{dev}.kernel_launch_us" if dev == "gpu"
                                                                        else "cpu.op_overhead_us"],
                "collective": ["interconnect.intra_node_GBps"], "p2p": ["interconnect.inter_node_GBps"]}
        if self.interconnect.topology == "torus":
            keys["collective"] = keys["p2p"] = ["interconnect.ici_link_GBps"]
        out = {k: self.key_source(k) for k in keys.get(bound, [])}
        if bound == "gpu" and self.device.gemm_mem_bytes_per_s and dev == "gpu":
            out["gpu.gemm_memory_GBps"] = self.key_source("gpu.gemm_memory_GBps")
        if bound == "gpu" and self.device.gemm_fixed_s and dev == "gpu":
            out["gpu.gemm_fixed_us"] = self.key_source("gpu.gemm_fixed_us")
        if bound == "gpu" and (self.device.matmul_curves or self.device.decode_attention):
            out[f"{dev}.matmul_table"] = self.key_source(f"{dev}.matmul_table")
        return out

    def source_text(self) -> str:
        """``"paper; except 1 measured, 4 datasheet, 8 estimate"``: the profile's source and
        how many keys say otherwise (``metadata.key_sources``)."""
        from collections import Counter
        ks = Counter(v for v in (self.metadata.get("key_sources") or {}).values() if v != self.source)
        return self.source + ("; except " + ", ".join(f"{n} {k}" for k, n in sorted(ks.items())) if ks else "")

    def summary(self) -> dict:
        """Human-unit summary for tables and JSON."""
        return {
            "name": self.name, "source": self.source, "sources": self.source_text(),
            "key_sources": dict(self.metadata.get("key_sources") or {}),
            "device": self.device.name, "device_is_host": self.device_is_host,
            "gpu_memory_GiB": self.device.memory_bytes / GiB,
            "device_mem_GBps": self.device.mem_bytes_per_s / GB,
            "device_gemm_mem_GBps": self.device.gemm_read_bytes_per_s / GB,
            "device_matmul_TFLOPs": {k: v / 1e12 for k, v in self.device.matmul_flop_per_s},
            "cpu_memory_GiB": self.cpu.memory_bytes / GiB, "disk_GiB": self.disk.capacity_bytes / GiB,
            "h2d_GBps": self.links.h2d_bytes_per_s / GB, "d2h_GBps": self.links.d2h_bytes_per_s / GB,
            "disk_read_GBps": self.disk.read_direct_bytes_per_s / GB,
            "gpus_per_node": self.gpu_count, "nodes": self.interconnect.nodes,
        }


# ------------------------------------------------------------------ loading
def list_profiles() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.yaml"))


def resolve_profile_path(name_or_path: str | os.PathLike, label: str = "--hardware") -> Path:
    from simulator.files import stat_path
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        if stat_path(text, label, ProfileError) is None:
            raise ProfileError(f"{label}: no such file {text!r}")
        return path
    if text and stat_path(DATA_DIR / f"{text.lower()}.yaml", label, ProfileError) is not None:
        return DATA_DIR / f"{text.lower()}.yaml"
    if text and stat_path(text, label, ProfileError) is not None:
        return path
    raise ProfileError(f"{label}: unknown profile {text!r} (shipped: {', '.join(list_profiles())}; "
                       "or a path to a YAML profile)")


def load_profile(name_or_path: str | os.PathLike, label: str = "--hardware") -> HardwareProfile:
    """A shipped profile by name, or a YAML file by path (a regular file of UTF-8 YAML with
    no key given twice). Raises ProfileError naming ``label`` or the file."""
    from simulator.files import load_yaml, read_text
    path = resolve_profile_path(name_or_path, label)
    doc = load_yaml(read_text(path, label, ProfileError), str(path), ProfileError)
    return profile_from_dict(doc, str(path))


def profile_from_dict(doc: Any, where: str = "<profile>") -> HardwareProfile:
    """Check a parsed profile document (``simulator.profile_schema``; ProfileError naming
    ``where`` and the key) and convert it to SI, each value by its key's unit (``si``)."""
    p = schema.parse_profile(doc, where)
    c, g, lk, d = p.cpu, p.gpu, p.links, p.disk
    cpu = _compute_device(c, "GFLOPs", si(c, "memory_GBps"), si(c, "op_overhead_us"), is_host=True)
    if g is not None:
        device = _compute_device(g, "TFLOPs", si(g, "hbm_GBps"), si(g, "kernel_launch_us"),
                                 gemm_mem_bytes_per_s=si(g, "gemm_memory_GBps"), gemm_fixed_s=si(g, "gemm_fixed_us"))
        links = Links(h2d_bytes_per_s=si(lk, "h2d_pinned_GBps"), d2h_bytes_per_s=si(lk, "d2h_pinned_GBps"),
                      duplex_bytes_per_s=si(lk, "duplex_pinned_GBps"), h2d_latency_s=si(lk, "h2d_latency_us"),
                      d2h_latency_s=si(lk, "d2h_latency_us"), h2d_pageable_bytes_per_s=si(lk, "h2d_pageable_GBps"),
                      d2h_pageable_bytes_per_s=si(lk, "d2h_pageable_GBps"))
    else:
        # CPU-only machine: the "gpu" tier is the host; moving data between the GPU and CPU
        # tiers is a memcpy within RAM, and both directions share the memory bus.
        device, memcpy = cpu, si(c, "memcpy_GBps")
        links = Links(h2d_bytes_per_s=memcpy, d2h_bytes_per_s=memcpy, duplex_bytes_per_s=memcpy)
    disk = Disk(capacity_bytes=si(d, "capacity_GiB"), read_direct_bytes_per_s=si(d, "read_direct_GBps"),
                write_direct_bytes_per_s=si(d, "write_direct_GBps"), read_cached_bytes_per_s=si(d, "read_cached_GBps"),
                write_cached_bytes_per_s=si(d, "write_cached_GBps"))
    ic = p.interconnect or schema.Interconnect()
    torus = {} if ic.topology == "switch" else {
        "topology": "torus", "torus_shape": ic.torus_dims(), "torus_wraparound": ic.torus_wraparound,
        "ici_link_bytes_per_s": si(ic, "ici_link_GBps"), "ici_link_latency_s": si(ic, "ici_link_latency_us"),
        "ici_links_per_chip": ic.ici_links_per_chip}
    gpu_count = g.count if g is not None else 0  # the GPUs of one node; interconnect.nodes: how many nodes
    inter = Interconnect(gpus_per_node=max(gpu_count, 1), nodes=ic.nodes, intra_node_link=ic.intra_node_link,
                         intra_node_bytes_per_s=si(ic, "intra_node_GBps"),
                         intra_node_latency_s=si(ic, "intra_node_latency_us"),
                         inter_node_bytes_per_s=si(ic, "inter_node_GBps"),
                         inter_node_latency_s=si(ic, "inter_node_latency_us"), **torus)
    return HardwareProfile(name=p.name, source=p.metadata.source, device=device, cpu=cpu, cpu_cores=c.cores,
                           disk=disk, links=links, interconnect=inter, gpu_count=gpu_count, cpu_threads=c.threads or 0,
                           cpu_memcpy_bytes_per_s=si(c, "memcpy_GBps"), metadata=dict(doc["metadata"]), path=where)


def _compute_device(s, peak: str, mem_bytes_per_s: float, launch_s: float, is_host: bool = False,
                    gemm_mem_bytes_per_s: float | None = None, gemm_fixed_s: float = 0.0) -> ComputeDevice:
    """The ComputeDevice of a checked gpu or cpu section; ``peak``: the unit of its FLOP keys."""
    flops = tuple((d, si(s, f"{d}_{peak}")) for d in MATMUL_DTYPES if getattr(s, f"{d}_{peak}") is not None)
    return ComputeDevice(
        name=s.name, memory_bytes=si(s, "memory_GiB"), reserved_bytes=si(s, "reserved_GiB"),
        mem_bytes_per_s=mem_bytes_per_s, matmul_flop_per_s=flops, launch_s=launch_s,
        matmul_curves=_matmul_curves(s.matmul_table), staged_matmul_curves=_matmul_curves(s.staged_matmul_table),
        decode_attention=_rate_curves(s.decode_attention_table, "kv_bytes"),
        prefill_attention=_rate_curves(getattr(s, "prefill_attention_table", None), "flop"), is_host=is_host,
        gemm_mem_bytes_per_s=gemm_mem_bytes_per_s, gemm_fixed_s=gemm_fixed_s)


def _matmul_curves(rows) -> tuple:
    return tuple(MatmulCurve(r.dtype, r.k, r.n, tuple(r.m), tuple(t * US for t in r.time_us)) for r in rows or ())


def _rate_curves(points, amount: str) -> tuple | None:
    """An attention table as one curve per dtype (the rows' ``dtype``; None for rows without
    one) over the rows' ``amount`` (``kv_bytes`` or ``flop``), each in order of size."""
    if points is None:
        return None
    groups: dict = {}
    for p in points:
        groups.setdefault((p.model_extra or {}).get("dtype"), []).append((getattr(p, amount), p.time_us * US))
    return tuple((d, RateCurve(tuple(b for b, _ in sorted(pts)), tuple(t for _, t in sorted(pts))))
                 for d, pts in groups.items())
