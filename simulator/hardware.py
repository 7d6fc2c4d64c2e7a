"""HardwareProfile: a machine's measured (or datasheet) figures, loaded strictly from YAML.

YAML keys carry their unit (``memory_GiB``, ``h2d_pinned_GBps``, ``fp16_TFLOPs``,
``kernel_launch_us``); the loader converts each once to SI (bytes, seconds, FLOP/s, bytes/s)
and rejects unknown keys, missing keys, wrong types and non-positive values with an error
that names the file and the key.

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

from simulator.errors import ProfileError
from simulator.units import GB, GiB

SCHEMA_VERSION = 1
SOURCES = ("measured", "datasheet", "paper", "estimate")
MATMUL_DTYPES = ("fp32", "fp16", "bf16", "int8", "fp8")
DATA_DIR = Path(__file__).resolve().parent.parent / "hardware_profiles" / "data"

# A measured GEMM table entry is used for a GEMM whose k x n lies within this factor of the
# entry's; outside every entry the roofline applies. The profiler measures each model
# family's (k, n) shapes, so this only decides what happens for shapes nobody measured.
TABLE_SHAPE_REACH = 4.0

# ------------------------------------------------------------------ schema
# key -> (kind, required, SI factor). kinds: "num" (> 0), "num0" (>= 0), "int", "str", "bool".
_FLOPS = {f"{d}_TFLOPs": ("num", False, 1e12) for d in MATMUL_DTYPES}
# CPU attention computes in fp32 (cost.CPU_ATTENTION_DTYPE), so the CPU's fp32 rate is required.
_CPU_FLOPS = {f"{d}_GFLOPs": ("num", d == "fp32", 1e9) for d in MATMUL_DTYPES}
SCHEMA: dict[str, dict[str, tuple[str, bool, float]]] = {
    "metadata": {
        "source": ("str", True, 1), "date": ("str", True, 1), "method": ("str", True, 1),
        "notes": ("str", False, 1), "key_sources": ("map", False, 1), "machine": ("map", False, 1),
        "versions": ("map", False, 1),
    },
    "gpu": {
        "name": ("str", True, 1), "count": ("int", True, 1), "memory_GiB": ("num", True, GiB),
        "reserved_GiB": ("num0", False, GiB), "hbm_GBps": ("num", True, GB),
        "kernel_launch_us": ("num", True, 1e-6), "matmul_table": ("list", False, 1),
        "staged_matmul_table": ("list", False, 1),
        "decode_attention_table": ("list", False, 1), **_FLOPS,
    },
    "cpu": {
        "name": ("str", True, 1), "cores": ("int", True, 1), "threads": ("int", False, 1),
        "memory_GiB": ("num", True, GiB), "reserved_GiB": ("num0", False, GiB), "memory_GBps": ("num", True, GB),
        "memcpy_GBps": ("num", False, GB), "op_overhead_us": ("num", True, 1e-6),
        "matmul_table": ("list", False, 1), "staged_matmul_table": ("list", False, 1),
        "decode_attention_table": ("list", False, 1), **_CPU_FLOPS,
    },
    "disk": {
        "name": ("str", False, 1), "capacity_GiB": ("num", True, GiB),
        "read_direct_GBps": ("num", True, GB), "write_direct_GBps": ("num", True, GB),
        "read_cached_GBps": ("num", False, GB), "write_cached_GBps": ("num", False, GB),
    },
    "links": {
        "h2d_pinned_GBps": ("num", True, GB), "d2h_pinned_GBps": ("num", True, GB),
        "h2d_pageable_GBps": ("num", False, GB), "d2h_pageable_GBps": ("num", False, GB),
        "duplex_pinned_GBps": ("num", True, GB), "h2d_latency_us": ("num0", False, 1e-6),
        "d2h_latency_us": ("num0", False, 1e-6), "pcie_generation": ("int", False, 1),
        "pcie_width": ("int", False, 1),
    },
    "interconnect": {
        "gpus_per_node": ("int", False, 1), "nodes": ("int", False, 1), "intra_node_link": ("str", False, 1),
        "intra_node_GBps": ("num", False, GB), "intra_node_latency_us": ("num0", False, 1e-6),
        "inter_node_GBps": ("num", False, GB), "inter_node_latency_us": ("num0", False, 1e-6),
        # topology torus (TPU v4): chips on a 3D torus of chip-to-chip (ICI) links, ``simulator.layouts``
        "topology": ("str", False, 1), "torus_shape": ("str", False, 1), "torus_wraparound": ("bool", False, 1),
        "ici_link_GBps": ("num", False, GB), "ici_link_latency_us": ("num0", False, 1e-6),
        "ici_links_per_chip": ("int", False, 1),
    },
}
TOPOLOGIES = ("switch", "torus")
_TORUS_KEYS = ("torus_shape", "torus_wraparound", "ici_link_GBps", "ici_link_latency_us", "ici_links_per_chip")
_SWITCH_KEYS = ("intra_node_link", "intra_node_GBps", "intra_node_latency_us", "inter_node_GBps",
                "inter_node_latency_us")
_TOP = {"schema_version": "int", "name": "str", "metadata": "section", "gpu": "section", "cpu": "section",
        "disk": "section", "links": "section", "interconnect": "section", "measurements": "map"}
_REQUIRED_SECTIONS = ("metadata", "cpu", "disk")


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
    """Achieved rate (bytes/s) as a function of bytes moved, from measured points."""

    nbytes: tuple[float, ...]
    time_s: tuple[float, ...]

    def time_for(self, nbytes):
        """Time for ``nbytes``: the achieved rate interpolated in log(bytes), clamped to the
        measured range, applied to ``nbytes``."""
        x = np.log(np.asarray(self.nbytes))
        rate = np.asarray(self.nbytes) / np.asarray(self.time_s)
        b = np.asarray(nbytes, dtype=float)
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
    decode_attention: RateCurve | None = None
    staged_matmul_curves: tuple = ()
    is_host: bool = False

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
        Otherwise the roofline: ``max(2mkn / peak, (mk + kn + mn) x elem_bytes / mem_bw) +
        launch`` (Williams et al., "Roofline", CACM 2009). Unit: s.
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
        return np.maximum(flop / self.peak_flop_per_s(dtype), nbytes / self.mem_bytes_per_s) + self.launch_s

    def stream_time_s(self, nbytes, kernels=1.0):
        """Time of memory-bound kernels moving ``nbytes`` (read + written) in ``kernels``
        launches: ``nbytes / mem_bw + kernels x launch``. Unit: s."""
        return np.asarray(nbytes, dtype=float) / self.mem_bytes_per_s + kernels * self.launch_s

    def attention_read_time_s(self, kv_bytes, flop, dtype: str):
        """Decode attention reading ``kv_bytes`` of K and V: the measured decode-attention
        curve when present (achieved bytes/s by size), else the roofline on memory bandwidth
        and matmul peak. Excludes the launch, which the caller charges once per kernel."""
        kv_bytes = np.asarray(kv_bytes, dtype=float)
        if self.decode_attention is not None:
            return self.decode_attention.time_for(kv_bytes)
        return np.maximum(kv_bytes / self.mem_bytes_per_s, np.asarray(flop, float) / self.peak_flop_per_s(dtype))


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
        if bound == "gpu" and (self.device.matmul_curves or self.device.decode_attention is not None):
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
    """Validate a parsed profile document and convert it to SI."""
    if not isinstance(doc, dict):
        raise ProfileError(f"{where}: expected a mapping at the top level, got {type(doc).__name__}")
    for key in doc:
        if key not in _TOP:
            raise ProfileError(f"{where}: unknown key {key!r} (allowed: {', '.join(_TOP)})")
    for key in ("schema_version", "name", *_REQUIRED_SECTIONS):
        if key not in doc:
            raise ProfileError(f"{where}: missing key {key!r}")
    version = doc["schema_version"]
    if version != SCHEMA_VERSION:
        raise ProfileError(f"{where}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    if not isinstance(doc["name"], str) or not doc["name"]:
        raise ProfileError(f"{where}: name must be a non-empty string, got {doc['name']!r}")
    if "measurements" in doc and not isinstance(doc["measurements"], dict):
        raise ProfileError(f"{where}: measurements must be a mapping")
    sec = {name: _section(doc, name, where) for name in SCHEMA if name in doc}

    meta = sec["metadata"]
    if meta["source"] not in SOURCES:
        raise ProfileError(f"{where}: metadata.source {meta['source']!r} is not one of {', '.join(SOURCES)}")
    for key, src in (meta.get("key_sources") or {}).items():
        section, _, k = str(key).partition(".")
        if section not in SCHEMA or k not in SCHEMA[section]:
            raise ProfileError(f"{where}: metadata.key_sources names unknown key {key!r}")
        if src not in SOURCES:
            raise ProfileError(f"{where}: metadata.key_sources[{key!r}] {src!r} is not one of {', '.join(SOURCES)}")

    c = sec["cpu"]
    cpu = _compute_device(sec, "cpu", where)

    if "gpu" in sec:
        g = sec["gpu"]
        device = _compute_device(sec, "gpu", where)
        gpu_count = g["count"]
        if "links" not in sec:
            raise ProfileError(f"{where}: missing key 'links' (required when a gpu section is present)")
        lk = sec["links"]
        links = Links(h2d_bytes_per_s=lk["h2d_pinned_GBps"], d2h_bytes_per_s=lk["d2h_pinned_GBps"],
                      duplex_bytes_per_s=lk["duplex_pinned_GBps"], h2d_latency_s=lk.get("h2d_latency_us", 0.0),
                      d2h_latency_s=lk.get("d2h_latency_us", 0.0),
                      h2d_pageable_bytes_per_s=lk.get("h2d_pageable_GBps"),
                      d2h_pageable_bytes_per_s=lk.get("d2h_pageable_GBps"))
    else:
        # CPU-only machine: the "gpu" tier is the host; moving data between the GPU and CPU
        # tiers is a memcpy within RAM, and both directions share the memory bus.
        if "memcpy_GBps" not in c:
            raise ProfileError(f"{where}: cpu.memcpy_GBps is required when there is no gpu section")
        device = cpu
        gpu_count = 0
        if "links" in sec:
            raise ProfileError(f"{where}: links given without a gpu section")
        links = Links(h2d_bytes_per_s=c["memcpy_GBps"], d2h_bytes_per_s=c["memcpy_GBps"],
                      duplex_bytes_per_s=c["memcpy_GBps"])

    d = sec["disk"]
    disk = Disk(capacity_bytes=d["capacity_GiB"], read_direct_bytes_per_s=d["read_direct_GBps"],
                write_direct_bytes_per_s=d["write_direct_GBps"],
                read_cached_bytes_per_s=d.get("read_cached_GBps"), write_cached_bytes_per_s=d.get("write_cached_GBps"))
    ic = sec.get("interconnect", {})
    # gpu.count is the GPUs of one node; interconnect.nodes how many such nodes.
    if "gpus_per_node" in ic and ic["gpus_per_node"] != max(gpu_count, 1):
        raise ProfileError(f"{where}: interconnect.gpus_per_node {ic['gpus_per_node']} differs from gpu.count "
                           f"{gpu_count} (gpu.count is the GPUs of one node)")
    if ic.get("intra_node_link", "none") not in ("none", "pcie", "nvlink", "nvswitch"):
        raise ProfileError(f"{where}: interconnect.intra_node_link {ic['intra_node_link']!r} is not one of none, "
                           "pcie, nvlink, nvswitch")
    inter = Interconnect(
        gpus_per_node=max(gpu_count, 1), nodes=ic.get("nodes", 1),
        intra_node_link=ic.get("intra_node_link", "none"), intra_node_bytes_per_s=ic.get("intra_node_GBps"),
        intra_node_latency_s=ic.get("intra_node_latency_us", 0.0), inter_node_bytes_per_s=ic.get("inter_node_GBps"),
        inter_node_latency_s=ic.get("inter_node_latency_us", 0.0), **_torus(ic, max(gpu_count, 1), where))
    if c.get("threads", 0) > c["cores"]:
        raise ProfileError(f"{where}: cpu.threads {c['threads']} exceeds cpu.cores {c['cores']}")
    return HardwareProfile(name=doc["name"], source=meta["source"], device=device, cpu=cpu, cpu_cores=c["cores"],
                           disk=disk, links=links, interconnect=inter, gpu_count=gpu_count,
                           cpu_threads=c.get("threads", 0), cpu_memcpy_bytes_per_s=c.get("memcpy_GBps"),
                           metadata=dict(doc["metadata"]), path=where)


def _torus(ic: dict, gpus_per_node: int, where: str) -> dict:
    """The torus keys of a checked ``interconnect`` section, validated against each other:
    ``topology: torus`` needs ``torus_shape`` ("XxYxZ", as many chips as gpu.count x nodes),
    ``ici_link_GBps`` and ``ici_links_per_chip`` (2 per axis: a 3D torus has 6), and takes no
    switch keys; the torus keys need ``topology: torus``."""
    topo = ic.get("topology", "switch")
    if topo not in TOPOLOGIES:
        raise ProfileError(f"{where}: interconnect.topology {topo!r} is not one of {', '.join(TOPOLOGIES)}")
    if topo == "switch":
        extra = [k for k in _TORUS_KEYS if k in ic]
        if extra:
            raise ProfileError(f"{where}: interconnect.{extra[0]} needs interconnect.topology: torus")
        return {}
    extra = [k for k in _SWITCH_KEYS if k in ic]
    if extra:
        raise ProfileError(f"{where}: interconnect.{extra[0]} is not used with topology torus (chips talk over "
                           "their ICI links: ici_link_GBps, ici_link_latency_us)")
    for key in ("torus_shape", "ici_link_GBps", "ici_links_per_chip"):
        if key not in ic:
            raise ProfileError(f"{where}: missing key interconnect.{key} (required with topology torus)")
    text = ic["torus_shape"]
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ProfileError(f"{where}: interconnect.torus_shape {text!r} is not three positive sizes like 4x4x4")
    shape = tuple(int(p) for p in parts)
    chips = gpus_per_node * ic.get("nodes", 1)
    if math.prod(shape) != chips:
        raise ProfileError(f"{where}: interconnect.torus_shape {text} holds {math.prod(shape)} chips but gpu.count "
                           f"x interconnect.nodes is {chips}")
    if ic["ici_links_per_chip"] != 2 * len(shape):
        raise ProfileError(f"{where}: interconnect.ici_links_per_chip {ic['ici_links_per_chip']} does not match a "
                           f"3D torus ({2 * len(shape)}: one link each way along each axis)")
    return {"topology": "torus", "torus_shape": shape, "torus_wraparound": ic.get("torus_wraparound", False),
            "ici_link_bytes_per_s": ic["ici_link_GBps"], "ici_link_latency_s": ic.get("ici_link_latency_us", 0.0),
            "ici_links_per_chip": ic["ici_links_per_chip"]}


def _section(doc: dict, name: str, where: str) -> dict:
    raw = doc[name]
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: {name} must be a mapping, got {type(raw).__name__}")
    spec = SCHEMA[name]
    out = {}
    for key, value in raw.items():
        if key not in spec:
            raise ProfileError(f"{where}: unknown key {name}.{key} (allowed: {', '.join(spec)})")
        kind, _, factor = spec[key]
        out[key] = _convert(value, kind, factor, f"{where}: {name}.{key}")
    for key, (kind, required, _) in spec.items():
        if required and key not in raw:
            raise ProfileError(f"{where}: missing key {name}.{key}")
    return out


# Allowed range of each unit, in SI: outside it a value is a typo or a broken measurement,
# not a machine (a capacity of 1e300 GiB overflows to inf and breaks the LP; 1e-300 GB/s
# makes every time 1e300 s). The upper ends leave room for the "free" rates that tests use
# to switch a term off (1e9 GB/s, 1e9 TFLOP/s, a 1e-9 us launch).
_LIMITS = {  # YAML unit suffix -> (min SI, max SI, SI unit)
    "GiB": (1.0, 2.0**60, "bytes"),  # 1 byte .. 1 EiB
    "GBps": (1e3, 1e20, "bytes/s"),  # 1 KB/s .. 1e11 GB/s
    "TFLOPs": (1e6, 1e24, "FLOP/s"),  # 1 MFLOP/s .. 1e12 TFLOP/s
    "GFLOPs": (1e6, 1e24, "FLOP/s"),
    "us": (1e-18, 60.0, "s"),  # 1e-12 us .. 1 minute per call
}
MAX_COUNT = 2**20  # cores, threads, GPUs, nodes, PCIe generation and width


def _unit_of(label: str) -> str:
    return label.rsplit("_", 1)[-1] if "_" in label else ""


def _convert(value, kind: str, factor: float, label: str):
    if kind in ("num", "num0"):
        from simulator.units import finite_float
        f = finite_float(value)
        if f is None:
            raise ProfileError(f"{label} must be a number, got {value!r} (a finite int or float)")
        if kind == "num" and f <= 0:
            raise ProfileError(f"{label} must be > 0, got {value!r}")
        if kind == "num0" and f < 0:
            raise ProfileError(f"{label} must be >= 0, got {value!r}")
        lim = _LIMITS.get(_unit_of(label))
        if lim is not None and (f * factor > lim[1] or (f * factor < lim[0] and not (kind == "num0" and f == 0))):
            lo, hi, unit = lim
            raise ProfileError(f"{label} {value!r} is outside the allowed range {lo / factor:g}..{hi / factor:g} "
                               f"({lo:g}..{hi:g} {unit})")
        return f * factor
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ProfileError(f"{label} must be a positive integer, got {value!r}")
        if value > MAX_COUNT:
            raise ProfileError(f"{label} must be at most {MAX_COUNT}, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ProfileError(f"{label} must be a string, got {value!r}")
        return str(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ProfileError(f"{label} must be true or false, got {value!r}")
        return value
    if kind == "map":
        if not isinstance(value, dict):
            raise ProfileError(f"{label} must be a mapping, got {type(value).__name__}")
        return value
    if kind == "list":
        if not isinstance(value, list):
            raise ProfileError(f"{label} must be a list, got {type(value).__name__}")
        return value
    raise AssertionError(kind)


def _number_list(value, label: str, positive=True, maximum: float = 1e18) -> tuple:
    from simulator.units import finite_float
    if not isinstance(value, list) or not value:
        raise ProfileError(f"{label} must be a non-empty list of numbers, got {value!r}")
    out = []
    for v in value:
        f = finite_float(v)
        if f is None or (positive and f <= 0) or f > maximum:
            raise ProfileError(f"{label} must hold numbers {'> 0' if positive else '>= 0'} and at most "
                               f"{maximum:g}, got {v!r}")
        out.append(f)
    return tuple(out)


# The YAML keys of the two compute sections: (peak-FLOP suffix, memory rate, fixed cost per call).
_DEVICE_KEYS = {"cpu": ("GFLOPs", "memory_GBps", "op_overhead_us"),
                "gpu": ("TFLOPs", "hbm_GBps", "kernel_launch_us")}


def _compute_device(sec: dict, name: str, where: str) -> ComputeDevice:
    """The ComputeDevice of section ``name`` ("cpu" or "gpu") of a checked profile (values
    already converted to SI by the schema)."""
    s = sec[name]
    peak, mem, launch = _DEVICE_KEYS[name]
    flops = tuple((d, s[f"{d}_{peak}"]) for d in MATMUL_DTYPES if f"{d}_{peak}" in s)
    if not flops:
        raise ProfileError(f"{where}: {name} needs at least one of {', '.join(f'{d}_{peak}' for d in MATMUL_DTYPES)}")
    return ComputeDevice(
        name=s["name"], memory_bytes=s["memory_GiB"], reserved_bytes=s.get("reserved_GiB", 0.0),
        mem_bytes_per_s=s[mem], matmul_flop_per_s=flops, launch_s=s[launch],
        matmul_curves=_matmul_curves(s.get("matmul_table"), f"{where}: {name}.matmul_table"),
        staged_matmul_curves=_matmul_curves(s.get("staged_matmul_table"), f"{where}: {name}.staged_matmul_table"),
        decode_attention=_rate_curve(s.get("decode_attention_table"), f"{where}: {name}.decode_attention_table"),
        is_host=name == "cpu")


def _matmul_curves(rows, label: str) -> tuple:
    if rows is None:
        return ()
    curves = []
    for i, row in enumerate(rows):
        lab = f"{label}[{i}]"
        if not isinstance(row, dict):
            raise ProfileError(f"{lab} must be a mapping with dtype, k, n, m, time_us")
        unknown = set(row) - {"dtype", "k", "n", "m", "time_us", "p10_us", "p90_us"}
        if unknown:
            raise ProfileError(f"{lab}: unknown key {sorted(unknown)[0]!r} (allowed: dtype, k, n, m, time_us, p10_us, p90_us)")
        for key in ("dtype", "k", "n", "m", "time_us"):
            if key not in row:
                raise ProfileError(f"{lab}: missing key {key!r}")
        if not isinstance(row["dtype"], str) or row["dtype"] not in MATMUL_DTYPES:
            raise ProfileError(f"{lab}.dtype {row['dtype']!r} is not one of {', '.join(MATMUL_DTYPES)}")
        for key in ("k", "n"):
            if isinstance(row[key], bool) or not isinstance(row[key], int) or not 0 < row[key] <= 2**31 - 1:
                raise ProfileError(f"{lab}.{key} must be a positive integer at most 2**31 - 1, got {row[key]!r}")
        m = _number_list(row["m"], f"{lab}.m", maximum=2**31 - 1)
        t = _number_list(row["time_us"], f"{lab}.time_us", maximum=3.6e9)
        if len(m) != len(t):
            raise ProfileError(f"{lab}: m has {len(m)} values but time_us has {len(t)}")
        if any(b <= a for a, b in zip(m, m[1:])):
            raise ProfileError(f"{lab}.m must be strictly increasing")
        curves.append(MatmulCurve(row["dtype"], row["k"], row["n"], tuple(int(x) for x in m),
                                  tuple(x * 1e-6 for x in t)))
    return tuple(curves)


def _rate_curve(rows, label: str) -> RateCurve | None:
    """``decode_attention_table``: a list of {kv_bytes, time_us} points (any other keys, such
    as batch, context and heads, describe the point and are kept for people)."""
    if rows is None:
        return None
    if not isinstance(rows, list) or not rows:
        raise ProfileError(f"{label} must be a non-empty list")
    pts = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "kv_bytes" not in row or "time_us" not in row:
            raise ProfileError(f"{label}[{i}] must be a mapping with kv_bytes and time_us")
        b = _number_list([row["kv_bytes"]], f"{label}[{i}].kv_bytes", maximum=2.0**60)[0]
        t = _number_list([row["time_us"]], f"{label}[{i}].time_us", maximum=3.6e9)[0]
        pts.append((b, t * 1e-6))
    pts.sort()
    for (a, _), (b, _) in zip(pts, pts[1:]):
        if b == a:
            raise ProfileError(f"{label}: two points with kv_bytes {a:g}")
    return RateCurve(tuple(p[0] for p in pts), tuple(p[1] for p in pts))
