"""The structure of a hardware profile (YAML), as strict pydantic models.

The models say what a profile may hold: its sections and keys, each key's type and allowed
range, which keys are required, and the rules across keys. ``parse_profile`` checks a
parsed document against them and turns the first problem into one line naming the file, the
dotted key (``gpu.hbm_GBps``), the bad value and what is allowed; ``json_schema`` gives the
same structure as JSON schema (draft 2020-12, committed as ``schemas/profile.schema.json``,
printed by ``llmsim hardware --schema``) for a user's own tooling.
``simulator.hardware`` converts a checked profile to SI, once.

Values stay in the YAML's units here: a key's suffix is its unit (``UNITS``), which also
sets its allowed range; ``si`` converts one. Strict mode: no coercion (``"3"`` is not a
number, ``true`` not a count, ``2.0`` not an integer); an int is a number. A key left out
takes its default (None: absent), but may not be given as null. Unknown keys are refused
everywhere except in ``measurements`` and ``metadata.machine``/``versions`` (free-form, kept
for people) and in the points of a ``decode_attention_table`` (which describe the point).

What JSON schema cannot say and only ``parse_profile`` checks: ``interconnect.gpus_per_node``
equals ``gpu.count``; a torus holds ``gpu.count x interconnect.nodes`` chips; ``cpu.threads``
is at most ``cpu.cores``; the m values of a GEMM table increase and match its times one to
one; no two attention points share a size. A JSON schema validator also lets through a
count given as ``2.0`` (an integer to JSON schema) and a YAML ``.nan`` (JSON has no NaN, and
comparisons with it are false); llmsim refuses both.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import GenerateJsonSchema

from simulator.errors import ProfileError
from simulator.units import GB, GiB

SCHEMA_VERSION = 1
SOURCES = ("measured", "datasheet", "paper", "estimate")
MATMUL_DTYPES = ("fp32", "fp16", "bf16", "int8", "fp8")
TOPOLOGIES = ("switch", "torus")
INTRA_NODE_LINKS = ("none", "pcie", "nvlink", "nvswitch")

# YAML unit suffix -> (SI factor, unit, SI unit, allowed range in the YAML unit). Outside the
# range a value is a typo or a broken measurement, not a machine (a capacity of 1e300 GiB
# overflows to inf and breaks the LP; 1e-300 GB/s makes every time 1e300 s). The upper ends
# leave room for the "free" rates that tests use to switch a term off (1e9 GB/s, 1e9 TFLOP/s,
# a 1e-9 us launch).
UNITS = {
    "GiB": (GiB, "GiB", "bytes", 2.0**-30, 2.0**30),  # 1 byte .. 1 EiB
    "GBps": (GB, "GB/s", "bytes/s", 1e-6, 1e11),  # 1 KB/s .. 1e20 bytes/s
    "TFLOPs": (1e12, "TFLOP/s", "FLOP/s", 1e-6, 1e12),  # 1 MFLOP/s .. 1e24 FLOP/s
    "GFLOPs": (1e9, "GFLOP/s", "FLOP/s", 1e-3, 1e15),
    "us": (1e-6, "us", "s", 1e-12, 6e7),  # 1e-18 s .. 1 minute per call
}
MAX_COUNT = 2**20  # cores, threads, GPUs, nodes, PCIe generation and width
MAX_DIM = 2**31 - 1  # a GEMM dimension
MAX_TABLE_TIME_US = 3.6e9  # one hour


def unit_of(key: str) -> str | None:
    """The unit suffix of a key (``"hbm_GBps"`` -> ``"GBps"``), None when it has none."""
    suffix = key.rsplit("_", 1)[-1]
    return suffix if "_" in key and suffix in UNITS else None


def si(section: BaseModel, key: str) -> float | None:
    """The value of ``key`` (unit-suffixed) of a checked section in SI (bytes, s, FLOP/s,
    bytes/s): the YAML value x its unit's factor; None when the key is absent."""
    value = getattr(section, key)
    return None if value is None else value * UNITS[unit_of(key)][0]


def _measure(unit: str, zero: bool = False):
    """A number in ``unit`` within the unit's range; ``zero``: 0 is allowed too (a latency,
    a reserve), and the range's lower end then does not apply (it keeps rates and sizes from
    vanishing; a tiny latency or reserve breaks nothing). Its JSON schema description ends
    with the unit."""
    factor, shown, si, lo, hi = UNITS[unit]
    unit_text = f"Unit: {shown} ({factor:g} {si})."

    def describe(schema: dict) -> None:
        schema["description"] = f"{schema['description']} {unit_text}" if "description" in schema else unit_text

    return Annotated[float, Field(ge=0.0 if zero else lo, le=hi, allow_inf_nan=False, json_schema_extra=describe)]


GiBytes, GiBytes0 = _measure("GiB"), _measure("GiB", zero=True)
GBps = _measure("GBps")
TFLOPs, GFLOPs = _measure("TFLOPs"), _measure("GFLOPs")
Micros, Micros0 = _measure("us"), _measure("us", zero=True)
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]
TableMicros = Annotated[float, Field(gt=0, le=MAX_TABLE_TIME_US, allow_inf_nan=False)]
Spread = Annotated[float, Field(ge=0, le=MAX_TABLE_TIME_US, allow_inf_nan=False)]
Source = Literal[SOURCES]
Dtype = Literal[MATMUL_DTYPES]
FreeForm = dict[str, Any]


class Problem(ValueError):
    """A rule across keys broken: ``key`` is the offending key, relative to where the rule
    sits (None: the place itself), ``text`` what follows its name. ``missing``: the key is
    absent and needed (``text`` then says when)."""

    def __init__(self, key: str | None, text: str, missing: bool = False):
        super().__init__(text)
        self.key, self.text, self.missing = key, text, missing


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# ------------------------------------------------------------------ tables
class MatmulRow(_Strict):
    """Measured times of one (dtype, k, n) GEMM over a sweep of m (the token dimension)."""

    dtype: Dtype
    k: Dim
    n: Dim
    m: list[Dim] = Field(min_length=1, description="Token counts, increasing.")
    time_us: list[TableMicros] = Field(min_length=1, description="Median time at each m, us.")
    p10_us: list[Spread] = Field(None, description="10th percentile at each m, us (kept for people).")
    p90_us: list[Spread] = Field(None, description="90th percentile at each m, us (kept for people).")

    @field_validator("m")
    @classmethod
    def _increasing(cls, m):
        if any(b <= a for a, b in zip(m, m[1:])):
            raise Problem(None, f"must be strictly increasing, got {m}")
        return m

    @field_validator("time_us")
    @classmethod
    def _one_time_per_m(cls, times, info):
        m = info.data.get("m")
        if m is not None and len(m) != len(times):
            raise Problem(None, f"has {len(times)} value{'s' if len(times) != 1 else ''} but m has {len(m)}")
        return times


class AttentionPoint(BaseModel):
    """One decode-attention measurement: K+V bytes read and the time; other keys (batch,
    context, heads...) describe the point and are kept for people."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    kv_bytes: Annotated[float, Field(gt=0, le=2.0**60, allow_inf_nan=False)]
    time_us: TableMicros


class PrefillAttentionPoint(BaseModel):
    """One prefill-attention measurement: causal attention of a prompt, its FLOP and the
    time; other keys (batch, seq, heads, dtype...) describe the point and are kept for people."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    flop: Annotated[float, Field(gt=0, le=2.0**80, allow_inf_nan=False)]
    time_us: TableMicros


def _distinct_per_dtype(key: str):
    """A validator: no two points of one dtype (the rows' ``dtype``; a table may hold one
    curve per dtype) share a value of ``key``."""
    def check(points):
        by_dtype: dict = {}
        for p in points:
            by_dtype.setdefault((p.model_extra or {}).get("dtype"), []).append(getattr(p, key))
        for dtype, values in by_dtype.items():
            values.sort()
            for x, y in zip(values, values[1:]):
                if x == y:
                    raise Problem(None, f"has two points with {key} {x:g}" + (f" in {dtype}" if dtype else ""))
        return points
    return check


MatmulTable = Annotated[list[MatmulRow], Field(description="GEMMs whose weights come from memory.")]
StagedMatmulTable = Annotated[list[MatmulRow], Field(description="GEMMs right after their layer's weights were "
                                                                 "copied into the staging buffer.")]
AttentionTable = Annotated[list[AttentionPoint], Field(min_length=1, description="Decode attention by K+V bytes "
                                                                                  "read, one curve per K/V storage "
                                                                                  "dtype (the rows' dtype key)."),
                           AfterValidator(_distinct_per_dtype("kv_bytes"))]
PrefillAttentionTable = Annotated[list[PrefillAttentionPoint],
                                  Field(min_length=1, description="Causal prefill attention by FLOP, one curve per "
                                                                  "dtype (the rows' dtype key)."),
                                  AfterValidator(_distinct_per_dtype("flop"))]


# ------------------------------------------------------------------ sections
class Metadata(_Strict):
    source: Source = Field(description="Where the figures come from (each key's own: key_sources).")
    date: str
    method: str
    notes: str = None
    key_sources: dict[str, Source] = Field(
        None, description="Keys whose source differs from the profile's: {\"gpu.kernel_launch_us\": \"estimate\"}.",
        json_schema_extra=lambda schema: schema.update(propertyNames={"enum": profile_keys()}))
    machine: FreeForm = None
    versions: FreeForm = None


class Gpu(_Strict):
    """The accelerator: absent on a CPU-only machine (the host is then the device)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": [f"{d}_TFLOPs"]} for d in MATMUL_DTYPES]})
    name: str
    count: Count = Field(description="GPUs of one node.")
    memory_GiB: GiBytes
    reserved_GiB: GiBytes0 = Field(0.0, description="Taken by the runtime before the model.")
    hbm_GBps: GBps
    gemm_memory_GBps: GBps = Field(
        None, description="Bytes per second a memory-bound GEMM (a few rows against a large weight matrix) reads; "
        "the roofline's memory term for GEMMs no matmul_table covers (default: hbm_GBps).")
    gemm_fixed_us: Micros0 = Field(
        0.0, description="Time a memory-bound GEMM kernel takes beside its bytes / gemm_memory_GBps: the intercept "
        "of GEMM time against bytes at a few rows (ramp-up and tail of the kernel on the GPU, not the host's launch).")
    kernel_launch_us: Micros
    matmul_table: MatmulTable = None
    staged_matmul_table: StagedMatmulTable = None
    decode_attention_table: AttentionTable = None
    fp32_TFLOPs: TFLOPs = None
    fp16_TFLOPs: TFLOPs = None
    bf16_TFLOPs: TFLOPs = None
    int8_TFLOPs: TFLOPs = None
    fp8_TFLOPs: TFLOPs = None

    @model_validator(mode="after")
    def _some_peak(self):
        if all(getattr(self, f"{d}_TFLOPs") is None for d in MATMUL_DTYPES):
            raise Problem(None, f"needs at least one of {', '.join(f'{d}_TFLOPs' for d in MATMUL_DTYPES)}")
        return self


class Cpu(_Strict):
    """Host compute and memory. CPU attention computes in fp32, so ``fp32_GFLOPs`` is required."""

    name: str
    cores: Count
    threads: Count = Field(None, description="torch threads the figures were measured with (default: all cores).")
    memory_GiB: GiBytes
    reserved_GiB: GiBytes0 = Field(0.0, description="Taken by the OS and other processes.")
    memory_GBps: GBps = Field(description="Read + written bytes per second of a streaming kernel.")
    memcpy_GBps: GBps = Field(None, description="One RAM buffer into another (payload); required without a gpu.")
    op_overhead_us: Micros = Field(description="Fixed cost of one operator call.")
    matmul_table: MatmulTable = None
    staged_matmul_table: StagedMatmulTable = None
    decode_attention_table: AttentionTable = None
    prefill_attention_table: PrefillAttentionTable = None
    fp32_GFLOPs: GFLOPs
    fp16_GFLOPs: GFLOPs = None
    bf16_GFLOPs: GFLOPs = None
    int8_GFLOPs: GFLOPs = None
    fp8_GFLOPs: GFLOPs = None


class Disk(_Strict):
    """Offload storage: O_DIRECT and page-cached rates."""

    name: str = None
    capacity_GiB: GiBytes
    read_direct_GBps: GBps
    write_direct_GBps: GBps
    read_cached_GBps: GBps = None
    write_cached_GBps: GBps = None


class Links(_Strict):
    """Host<->GPU per direction (pinned, pageable, both at once) with fitted latency."""

    h2d_pinned_GBps: GBps
    d2h_pinned_GBps: GBps
    h2d_pageable_GBps: GBps = None
    d2h_pageable_GBps: GBps = None
    duplex_pinned_GBps: GBps = Field(description="Payload of both directions at once.")
    h2d_latency_us: Micros0 = 0.0
    d2h_latency_us: Micros0 = 0.0
    pcie_generation: Count = None
    pcie_width: Count = None


SWITCH_KEYS = ("intra_node_link", "intra_node_GBps", "intra_node_latency_us", "inter_node_GBps",
               "inter_node_latency_us")
TORUS_KEYS = ("torus_shape", "torus_wraparound", "ici_link_GBps", "ici_link_latency_us", "ici_links_per_chip")
TORUS_REQUIRED = ("torus_shape", "ici_link_GBps", "ici_links_per_chip")
TORUS_LINKS = 6  # two per axis of a 3D torus
_SHAPE = r"^0*[1-9][0-9]*[xX]0*[1-9][0-9]*[xX]0*[1-9][0-9]*$"
PATTERNS = {_SHAPE: "three positive sizes like 4x4x4"}  # what each pattern of the schema means


def _torus_schema(schema: dict) -> None:
    """The torus rules (``Interconnect._topology``) as JSON schema."""
    schema["if"] = {"properties": {"topology": {"const": "torus"}}, "required": ["topology"]}
    schema["then"] = {"required": list(TORUS_REQUIRED), "properties": {"ici_links_per_chip": {"const": TORUS_LINKS}},
                      "not": {"anyOf": [{"required": [k]} for k in SWITCH_KEYS]}}
    schema["else"] = {"not": {"anyOf": [{"required": [k]} for k in TORUS_KEYS]}}


class Interconnect(_Strict):
    """GPU<->GPU links: ``switch`` (inside a node over intra_node_*, between nodes over
    inter_node_*; busbw) or ``torus`` (chips on a 3D torus of ICI links, ``simulator.layouts``)."""

    model_config = ConfigDict(json_schema_extra=_torus_schema)
    gpus_per_node: Count = Field(None, description="Equals gpu.count when given.")
    nodes: Count = 1
    intra_node_link: Literal[INTRA_NODE_LINKS] = "none"
    intra_node_GBps: GBps = None
    intra_node_latency_us: Micros0 = 0.0
    inter_node_GBps: GBps = None
    inter_node_latency_us: Micros0 = 0.0
    topology: Literal[TOPOLOGIES] = "switch"
    torus_shape: Annotated[str, Field(pattern=_SHAPE)] = Field(None, description="XxYxZ chips, e.g. 4x4x4.")
    torus_wraparound: bool = Field(False, description="Each full axis closes into a ring.")
    ici_link_GBps: GBps = Field(None, description="One chip-to-chip link, each way.")
    ici_link_latency_us: Micros0 = Field(0.0, description="Per hop.")
    ici_links_per_chip: Count = Field(None, description="6 on a 3D torus: one each way along each axis.")

    @model_validator(mode="after")
    def _topology(self):
        given = self.model_fields_set
        if self.topology == "switch":
            for key in TORUS_KEYS:
                if key in given:
                    raise Problem(key, "needs interconnect.topology: torus")
            return self
        for key in SWITCH_KEYS:
            if key in given:
                raise Problem(key, "is not used with topology torus (chips talk over their ICI links: "
                                   "ici_link_GBps, ici_link_latency_us)")
        for key in TORUS_REQUIRED:
            if key not in given:
                raise Problem(key, "required with topology torus", missing=True)
        if self.ici_links_per_chip != TORUS_LINKS:
            raise Problem("ici_links_per_chip", f"{self.ici_links_per_chip} does not match a 3D torus "
                                                f"({TORUS_LINKS}: one link each way along each axis)")
        return self

    def torus_dims(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.torus_shape.lower().split("x")) if self.torus_shape else ()


def _profile_schema(schema: dict) -> None:
    """The rules across sections that JSON schema can say (``Profile._across_sections``)."""
    schema["dependentRequired"] = {"gpu": ["links"], "links": ["gpu"]}
    schema["if"] = {"not": {"required": ["gpu"]}}
    schema["then"] = {"properties": {"cpu": {"required": ["memcpy_GBps"]}}}


class Profile(_Strict):
    """A hardware profile: a machine's measured (or datasheet) figures. Keys carry their unit
    (``memory_GiB``, ``hbm_GBps``, ``fp16_TFLOPs``, ``kernel_launch_us``)."""

    model_config = ConfigDict(title="llmsim hardware profile", json_schema_extra=_profile_schema)
    schema_version: Annotated[int, Field(ge=SCHEMA_VERSION, le=SCHEMA_VERSION)]
    name: Annotated[str, Field(min_length=1)]
    metadata: Metadata
    gpu: Gpu = None
    cpu: Cpu
    disk: Disk
    links: Links = None
    interconnect: Interconnect = Field(None, description="GPU<->GPU and node<->node (optional).")
    measurements: FreeForm = Field(None, description="Raw samples and fits from the profiler, kept for people.")

    @field_validator("metadata")
    @classmethod
    def _known_keys(cls, meta):
        for key in meta.key_sources or {}:
            section, _, k = key.partition(".")
            if section not in SECTIONS or k not in SECTIONS[section].model_fields:
                raise Problem("key_sources", f"names unknown key {key!r}")
        return meta

    @model_validator(mode="after")
    def _across_sections(self):
        if self.gpu is not None and self.links is None:
            raise Problem("links", "required when a gpu section is present", missing=True)
        if self.gpu is None and self.cpu.memcpy_GBps is None:
            raise Problem(None, "cpu.memcpy_GBps is required when there is no gpu section")
        if self.gpu is None and self.links is not None:
            raise Problem(None, "links given without a gpu section")
        per_node = max(self.gpu.count if self.gpu else 0, 1)
        ic = self.interconnect or Interconnect()
        if ic.gpus_per_node is not None and ic.gpus_per_node != per_node:
            raise Problem("interconnect.gpus_per_node", f"{ic.gpus_per_node} differs from gpu.count "
                          f"{self.gpu.count if self.gpu else 0} (gpu.count is the GPUs of one node)")
        if ic.topology == "torus" and math.prod(ic.torus_dims()) != per_node * ic.nodes:
            raise Problem("interconnect.torus_shape", f"{ic.torus_shape} holds {math.prod(ic.torus_dims())} chips "
                          f"but gpu.count x interconnect.nodes is {per_node * ic.nodes}")
        if self.cpu.threads is not None and self.cpu.threads > self.cpu.cores:
            raise Problem("cpu.threads", f"{self.cpu.threads} exceeds cpu.cores {self.cpu.cores}")
        return self


SECTIONS: dict[str, type[BaseModel]] = {"metadata": Metadata, "gpu": Gpu, "cpu": Cpu, "disk": Disk, "links": Links,
                                        "interconnect": Interconnect}


def profile_keys() -> list[str]:
    """Every ``section.key`` a profile may hold (what ``metadata.key_sources`` may name)."""
    return [f"{name}.{key}" for name, model in SECTIONS.items() for key in model.model_fields]


# ------------------------------------------------------------------ errors
def _unwrap(tp):
    """The type inside Annotated[...] and Optional[...]."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) is Union:
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _walk(loc: tuple) -> tuple[list[str], list]:
    """For an error's location: the dotted key of each prefix (``gpu.matmul_table[0].m``;
    a mapping's keys in brackets) and the type found at each step (``types[0]`` is Profile)."""
    tp, types, names, text = Profile, [Profile], [], ""
    for part in loc:
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = _unwrap(tp.model_fields[part].annotation)
            text += f".{part}" if text else str(part)
        elif get_origin(tp) is list and isinstance(part, int):
            tp = _unwrap(get_args(tp)[0])
            text += f"[{part}]"
        elif get_origin(tp) is dict:
            tp = _unwrap(get_args(tp)[1])
            text += f"[{part!r}]"
        else:  # an unknown key or a mapping's key
            tp = None
            text += f".{part}" if text else str(part)
        names.append(text)
        types.append(tp)
    return names, types


def _shown(value) -> str:
    return type(value).__name__ if isinstance(value, (dict, list)) else repr(value)


def _number(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _key(names: list[str]) -> str:
    """A key in "unknown key" and "missing key": quoted at the top level, dotted below."""
    return repr(names[-1]) if len(names) == 1 else names[-1]


def _unit_range(model, key: str) -> tuple[float, float] | None:
    """(min, max) in YAML units of a unit-suffixed number key of ``model`` (a section), None
    for any other field (its bounds are not a unit's)."""
    field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
    bounds = {k: getattr(m, k) for m in (field.metadata if field else ()) for k in ("ge", "le") if hasattr(m, k)}
    return (bounds["ge"], bounds["le"]) if unit_of(key) and bounds.keys() == {"ge", "le"} else None


def _range_text(key: str, value, low: float, high: float) -> str:
    factor, _, si = UNITS[unit_of(key)][:3]
    return f"{value!r} is outside the allowed range {low:g}..{high:g} ({low * factor:g}..{high * factor:g} {si})"


def error_text(err: dict) -> str:
    """One pydantic error of ``Profile`` as the text after the file name."""
    loc, kind, value, ctx = tuple(err["loc"]), err["type"], err.get("input"), err.get("ctx") or {}
    if loc[-1:] == ("[key]",):  # a mapping's key (key_sources has str keys: never reached)
        loc = loc[:-1]
    names, types = _walk(loc)
    path, tp = (names[-1] if names else ""), types[-1]
    key = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        allowed = ", ".join(types[-2].model_fields)
        return f"unknown key {_key(names)} (allowed: {allowed})"
    if kind == "missing":
        return f"missing key {_key(names)}"
    if kind == "value_error" and isinstance(ctx.get("error"), Problem):
        p = ctx["error"]
        where = ".".join(x for x in (path, p.key) if x)
        if p.missing:
            return f"missing key {repr(where) if '.' not in where else where} ({p.text})"
        return f"{where} {p.text}" if where else p.text
    if key == "schema_version" and kind in ("int_type", "greater_than_equal", "less_than_equal"):
        return f"schema_version {value!r} is not supported (expected {SCHEMA_VERSION})"
    if kind in ("float_type", "finite_number"):
        return f"{path} must be a number, got {value!r} (a finite int or float)"
    if kind in ("int_type",) or (kind == "greater_than_equal" and tp is int):
        return f"{path} must be a positive integer, got {value!r}"
    unit_range = _unit_range(types[-2], key) if len(types) > 1 else None
    if kind == "greater_than_equal":
        if value <= 0 < ctx["ge"]:
            return f"{path} must be > 0, got {value!r}"
        if value < 0:
            return f"{path} must be >= 0, got {value!r}"
    if kind in ("greater_than_equal", "less_than_equal") and unit_range:
        return f"{path} {_range_text(key, value, *unit_range)}"
    if kind == "greater_than_equal":
        return f"{path} must be >= {_number(ctx['ge'])}, got {value!r}"
    if kind == "less_than_equal":
        return f"{path} must be at most {_number(ctx['le'])}, got {value!r}"
    if kind == "greater_than":
        return f"{path} must be > {_number(ctx['gt'])}, got {value!r}"
    if kind == "literal_error":
        return f"{path} {value!r} is not one of {', '.join(get_args(tp))}"
    if kind == "string_type":
        return f"{path} must be a string, got {value!r}"
    if kind == "string_pattern_mismatch":
        return f"{path} {value!r} is not {PATTERNS[ctx['pattern']]}"
    if kind == "string_too_short":
        return f"{path} must be a non-empty string, got {value!r}"
    if kind == "bool_type":
        return f"{path} must be true or false, got {value!r}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{path} must be a mapping, got {type(value).__name__}"
    if kind == "list_type":
        return f"{path} must be a list, got {type(value).__name__}"
    if kind == "too_short":
        return f"{path} must be a non-empty list"
    return f"{path} {_shown(value)} is not allowed: {err['msg'][0].lower()}{err['msg'][1:]}"


def parse_profile(doc: Any, where: str = "<profile>") -> Profile:
    """Check a parsed profile document. Raises ProfileError: one line, ``where`` (the file),
    the first problem's key, value and what is allowed, and how many more problems there are."""
    if not isinstance(doc, dict):
        raise ProfileError(f"{where}: expected a mapping at the top level, got {type(doc).__name__}")
    try:
        return Profile.model_validate(doc)
    except ValidationError as e:
        # an unknown key first: it explains the "missing" key it was meant to be
        errs = sorted(e.errors(include_url=False), key=lambda x: x["type"] != "extra_forbidden")
        more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
        raise ProfileError(" ".join(f"{where}: {error_text(errs[0])}{more}".split())) from None


# ------------------------------------------------------------------ JSON schema
class SchemaGenerator(GenerateJsonSchema):
    """pydantic's JSON schema without the noise: no per-field titles (a title made from
    ``hbm_GBps`` reads "Hbm Gbps"), no ``"default": null`` on a key that may be left out
    but not given as null."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def default_schema(self, schema):
        if schema.get("default", ...) is None and schema["schema"]["type"] != "nullable":
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def json_schema() -> dict:
    """The JSON schema of a hardware profile (draft 2020-12), as in schemas/profile.schema.json."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **Profile.model_json_schema(schema_generator=SchemaGenerator)}
