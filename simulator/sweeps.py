"""Sweeps: many cases at once, one tidy row per case (``llmsim sweep``).

(``simulator.sweep`` is another thing: it evaluates many *policies* of one case, vectorized.)

A sweep spec (``SweepSpec``, a strict pydantic model; its JSON schema is
``schemas/sweep.schema.json``, printed by ``llmsim sweep --schema``) names lists of models,
hardware profiles, engines, GPU counts and workloads. Its cells are the cross product::

    models x hardware x gpus x workloads x (the engines of each workload's kind)

Two kinds of workload, and how ``engines`` applies to each:

- a **batch** ``{prompt_len, gen_len[, num_sequences]}`` is *planned* as ``llmsim plan
  --no-compare`` does (``simulator.search.search``, the spec's ``objective``, plan's default
  memory headroom ``simulator.headroom.Headroom()``), once per
  *planner* engine in ``engines`` (llmsim, flexgen, accelerate, zero-inference);
- a **request stream** (any workload with ``rate``, ``concurrency`` or ``trace``: the keys
  of ``llmsim simulate``) is *simulated* as ``llmsim simulate`` does
  (``simulator.serving.simulate``), once per *serving* engine in ``engines`` (continuous,
  executor, vllm), on ``gpus / (tp x pp)`` replicas; ``objective`` does not apply.

``engines`` left out means llmsim for batches and continuous for streams. A spec that
lists engines must list one of each kind its workloads need.

A cell is a pure function of its inputs (``run_cell(cell, model, hw, trace)``): no files,
no globals, the same row wherever it runs. An engine that cannot run a case (a one-line
``LlmsimError``) is an answer, recorded in the row (``error``, ``error_kind="input"``);
any other exception is recorded as ``error_kind="internal"`` and not checkpointed, so a
rerun tries that cell again.

Every finished cell is written to ``DIR/cells/<cell_id>.json`` (atomically) as it arrives;
a rerun on the same DIR reuses every part whose ``cell_id`` is a cell of the spec, so an
interrupted sweep resumes where it stopped. ``cell_id`` hashes what determines the answer:
the model (preset name or config file contents), the profile's file contents, the engine,
the GPU count, the workload (its ``name`` aside), the objective and llmsim's version.
At the end ``DIR/results.parquet`` and ``DIR/results.csv`` (``COLUMNS``, one row per cell
in spec order) are written atomically. How the cells are mapped over processes is the
caller's (``run_sweep``'s ``compute``): in-process here, Dask in ``llmsim sweep``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, ClassVar, Iterable, Literal, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, NonNegativeFloat, NonNegativeInt,
                      PositiveFloat, PositiveInt, PrivateAttr, Tag, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from simulator.errors import LlmsimError, SpecError

PLANNER, SERVING = "planner", "serving"
BATCH, STREAM = "batch", "stream"
DEFAULT_ENGINE = {BATCH: "llmsim", STREAM: "continuous"}
ENGINE_KIND = {BATCH: PLANNER, STREAM: SERVING}
STREAM_KEYS = ("rate", "concurrency", "trace")  # any of them makes a workload a request stream
OBJECTIVES = ("throughput", "latency")


def planner_engines() -> tuple[str, ...]:
    from simulator.engines import engine_names
    return tuple(engine_names())


def serving_engines() -> tuple[str, ...]:
    from simulator.serving.engines import list_engines
    return tuple(list_engines())


def _routers() -> tuple[str, ...]:
    from simulator.serving.routers import ROUTERS
    return tuple(sorted(ROUTERS))


def _one_line(text) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------ the spec
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BatchWorkload(_Strict):
    """An offline batch: planned by each planner engine (as ``llmsim plan`` does)."""

    kind: ClassVar[str] = BATCH
    name: str | None = Field(None, description="Label of the workload in the table (default: from its lengths).")
    prompt_len: PositiveInt = Field(description="Prompt tokens per sequence.")
    gen_len: PositiveInt = Field(description="Generated tokens per sequence.")
    num_sequences: PositiveInt | None = Field(None, description="Sequences in all (default: one block of the plan).")

    def label(self) -> str:
        return self.name or (f"prompt {self.prompt_len} gen {self.gen_len}"
                             + (f" x{self.num_sequences}" if self.num_sequences else ""))


def _duration_text(value, key: str) -> float | None:
    from simulator.serving.metrics import SLO
    slo = SLO.parse(None if value is None else str(value), None, key)
    return slo.ttft_s


class StreamWorkload(_Strict):
    """A request stream, simulated by each serving engine (as ``llmsim simulate`` does,
    with the same keys as its flags). Durations take ``1s``, ``50ms`` or seconds."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": [k]} for k in STREAM_KEYS]})
    kind: ClassVar[str] = STREAM
    name: str | None = Field(None, description="Label of the workload in the table (default: from the stream).")
    rate: PositiveFloat | None = Field(None, description="Open loop: requests per second (Poisson or gamma).")
    concurrency: PositiveInt | None = Field(None, description="Closed loop: concurrent users.")
    trace: str | None = Field(None, description="CSV/JSONL trace (a path relative to the spec, or chat, "
                                                "summarization); alone: the trace's own arrival times.")
    num_requests: PositiveInt | None = Field(None, description="Requests to simulate (a trace: its rows).")
    prompt_len: PositiveInt | None = Field(None, description="Mean prompt tokens.")
    output_len: PositiveInt | None = Field(None, description="Mean output tokens.")
    length_dist: str = Field("fixed", description="fixed, uniform[:RATIO] or lognormal[:SIGMA].")
    burstiness: PositiveFloat = Field(1.0, description="Gamma arrivals: 1 = Poisson, < 1 burstier.")
    think_time: NonNegativeFloat = Field(0.0, description="Closed loop: seconds between a finish and the next send.")
    seed: NonNegativeInt = Field(0, description="Seed of the arrivals and lengths.")
    tp: PositiveInt = Field(1, description="Tensor-parallel GPUs per replica.")
    pp: PositiveInt = Field(1, description="Pipeline stages per replica.")
    router: str = Field("round_robin", description="How requests are spread over the replicas.",
                        json_schema_extra=lambda schema: schema.update(enum=list(_routers())))
    ttft_slo: str | PositiveFloat | None = Field(None, description="TTFT target for goodput, e.g. 1s.")
    tpot_slo: str | PositiveFloat | None = Field(None, description="TPOT target for goodput, e.g. 50ms.")

    @model_validator(mode="after")
    def _consistent(self):
        from simulator.serving.requests import LengthDist
        if self.rate is not None and self.concurrency is not None:
            raise ValueError("rate and concurrency exclude each other")
        if self.trace is None:
            if self.rate is None and self.concurrency is None:
                raise ValueError("give rate (open loop), concurrency (closed loop) or trace")
            for key in ("num_requests", "prompt_len", "output_len"):
                if getattr(self, key) is None:
                    raise ValueError(f"{key} is required without trace")
        else:
            for key in ("prompt_len", "output_len"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} cannot be combined with trace (the trace gives the lengths)")
            if self.length_dist != "fixed":
                raise ValueError("length_dist cannot be combined with trace (the trace gives the lengths)")
        if self.concurrency is None and self.think_time:
            raise ValueError("think_time applies to a closed loop (concurrency) only")
        if self.router not in _routers():
            raise ValueError(f"router: {self.router!r} is not one of {', '.join(_routers())}")
        try:
            LengthDist.parse(self.length_dist, "length_dist")
            _duration_text(self.ttft_slo, "ttft_slo")
            _duration_text(self.tpot_slo, "tpot_slo")
        except LlmsimError as e:
            raise ValueError(_one_line(e)) from None
        return self

    def label(self) -> str:
        if self.name:
            return self.name
        if self.rate is not None:
            arrivals = f"rate {self.rate:g}/s"
        elif self.concurrency is not None:
            arrivals = f"{self.concurrency} users"
        else:
            arrivals = "traced arrivals"
        lengths = f"trace {self.trace}" if self.trace else f"prompt {self.prompt_len} output {self.output_len}"
        count = f" x{self.num_requests}" if self.num_requests else ""
        return f"{arrivals}, {lengths}{count}"


def _workload_kind(value) -> str:
    if isinstance(value, dict):
        return STREAM if any(k in value for k in STREAM_KEYS) else BATCH
    return STREAM if isinstance(value, StreamWorkload) else BATCH


Workload = Annotated[Union[Annotated[BatchWorkload, Tag(BATCH)], Annotated[StreamWorkload, Tag(STREAM)]],
                     Discriminator(_workload_kind)]


def _base_dir(info: ValidationInfo) -> Path:
    return Path((info.context or {}).get("base_dir", "."))


def _check_model(name: str, info: ValidationInfo) -> str:
    """A preset (or a Hugging Face id of one: the preset's name is kept), or a path to a
    config.json (or a folder holding one) relative to the spec."""
    from simulator.models import PRESETS
    low = name.strip().lower()
    if low in PRESETS:
        return low
    for preset in PRESETS.values():
        if low in (hf.lower() for hf in preset.hf_ids):
            return preset.name
    p = _base_dir(info) / name
    if p.is_file() or (p / "config.json").is_file():
        return name
    raise ValueError(f"unknown model {name!r} (presets: {', '.join(PRESETS)}; or a path to a config.json)")


def _check_hardware(name: str, info: ValidationInfo) -> str:
    """A shipped profile, or a path to a YAML profile relative to the spec."""
    from simulator.hardware import list_profiles
    shipped = list_profiles()
    if name.strip().lower() in shipped:
        return name.strip().lower()
    if (_base_dir(info) / name).is_file():
        return name
    raise ValueError(f"unknown hardware profile {name!r} (shipped: {', '.join(shipped)}; or a path to a YAML "
                     "profile)")


def _check_engine(name: str) -> str:
    low = name.strip().lower()
    if low in planner_engines() or low in serving_engines():
        return low
    raise ValueError(f"unknown engine {name!r} (planner engines, for batches: {', '.join(planner_engines())}; "
                     f"serving engines, for request streams: {', '.join(serving_engines())})")


def _engine_enum(schema: dict) -> None:
    schema["enum"] = [*planner_engines(), *serving_engines()]


ModelName = Annotated[str, AfterValidator(_check_model),
                      Field(description="A model preset (llmsim models), a Hugging Face id of one, or a path to a "
                                        "config.json relative to the spec.")]
HardwareName = Annotated[str, AfterValidator(_check_hardware),
                         Field(description="A shipped profile (llmsim hardware) or a path to a YAML profile "
                                           "relative to the spec.")]
EngineName = Annotated[str, AfterValidator(_check_engine), Field(json_schema_extra=_engine_enum)]


def _no_duplicates(values: list, key: str) -> None:
    """Each entry once: a repeated cell would be computed twice (workloads compare without
    their ``name``)."""
    seen = {}
    for j, v in enumerate(values):
        k = json.dumps(v.model_dump(exclude={"name"}), sort_keys=True) if isinstance(v, BaseModel) else v
        if k in seen:
            what = v.label() if isinstance(v, BaseModel) else v
            raise ValueError(f"{key}[{j}] ({what}) repeats {key}[{seen[k]}]")
        seen[k] = j


class SweepSpec(_Strict):
    """The spec of ``llmsim sweep``: one cell per model x hardware x gpus x workload x engine
    of the workload's kind (planner engines plan the batches, serving engines simulate the
    request streams); one row per cell in DIR/results.parquet and DIR/results.csv."""

    model_config = ConfigDict(title="llmsim sweep spec",
                              json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"})
    models: list[ModelName] = Field(min_length=1, description="Models to plan or serve.")
    hardware: list[HardwareName] = Field(min_length=1, description="Hardware profiles.")
    engines: list[EngineName] = Field(
        [DEFAULT_ENGINE[BATCH]], min_length=1,
        description="Planner engines run the batch workloads, serving engines the request streams. Left out: "
                    "llmsim for batches, continuous for streams.")
    gpus: list[PositiveInt] = Field([1], min_length=1, description="GPU counts: every layout of each is searched "
                                                                    "(streams: gpus / (tp x pp) replicas).")
    workloads: list[Workload] = Field(min_length=1, description="Batches {prompt_len, gen_len} or request streams "
                                                                "(keys of llmsim simulate).")
    objective: Literal["throughput", "latency"] = Field("throughput", description="What the planner maximizes "
                                                                                  "(batches).")
    _source: str = PrivateAttr("sweep spec")  # how errors name the spec
    _base_dir: Path = PrivateAttr(Path("."))  # where its relative paths start

    @field_validator("models", "hardware", "engines", "gpus", "workloads")
    @classmethod
    def _unique(cls, values, info: ValidationInfo):
        _no_duplicates(values, info.field_name)
        return values

    @model_validator(mode="after")
    def _engines_cover_workloads(self):
        kinds = [w.kind for w in self.workloads]
        if "engines" not in self.model_fields_set:
            return self
        by_kind = {PLANNER: planner_engines(), SERVING: serving_engines()}
        for kind in (BATCH, STREAM):
            names = by_kind[ENGINE_KIND[kind]]
            if kind in kinds and not any(e in names for e in self.engines):
                what = "batch workloads" if kind == BATCH else "request-stream workloads"
                raise ValueError(f"engines: no {ENGINE_KIND[kind]} engine for the {what} "
                                 f"(workloads[{kinds.index(kind)}]); add one of {', '.join(names)}")
        return self

    def engines_for(self, workload) -> list[str]:
        """The engines that run ``workload``: those of its kind in ``engines`` (module docstring)."""
        if "engines" not in self.model_fields_set:
            return [DEFAULT_ENGINE[workload.kind]]
        kind = planner_engines() if workload.kind == BATCH else serving_engines()
        return [e for e in self.engines if e in kind]


def json_schema() -> dict:
    """The JSON schema of a sweep spec (draft 2020-12), as committed in schemas/sweep.schema.json."""
    return SweepSpec.model_json_schema()


def _loc_text(loc) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and isinstance(loc[i - 1], int) and part in (BATCH, STREAM) and loc[i - 2:i - 1] == ("workloads",):
            continue  # the union's tag
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(loc) -> type[BaseModel]:
    if len(loc) >= 3 and loc[0] == "workloads" and isinstance(loc[1], int):
        return StreamWorkload if loc[2] == STREAM else BatchWorkload
    return SweepSpec


def _error_text(err: dict) -> str:
    loc, kind, msg = tuple(err["loc"]), err["type"], err["msg"]
    where = _loc_text(loc[:-1]) if kind in ("extra_forbidden", "missing") else _loc_text(loc)
    prefix = f"{where}: " if where else ""
    if kind == "extra_forbidden":
        model = _model_at(loc)
        allowed = ", ".join(model.model_fields)
        hint = ("; a request stream needs one of " + ", ".join(STREAM_KEYS)) if model is BatchWorkload else ""
        return f"{prefix}unknown key {loc[-1]!r} (allowed: {allowed}{hint})"
    if kind == "missing":
        return f"{prefix}key {loc[-1]!r} is required"
    if kind == "too_short":
        return f"{prefix}empty list (give at least one)"
    if kind == "value_error":
        return prefix + msg.removeprefix("Value error, ")
    if kind in ("model_type", "dict_type") and loc[:1] == ("workloads",):
        return (f"{prefix}expected a mapping {{prompt_len, gen_len}} or a request stream {{rate | concurrency | "
                f"trace, ...}}, got {err.get('input')!r}")
    return f"{prefix}{msg}, got {err.get('input')!r}"


def parse_spec(doc, where: str = "sweep spec", base_dir: str | os.PathLike = ".") -> SweepSpec:
    """Validate a spec mapping; paths in it are relative to ``base_dir``. Raises SpecError
    (one line naming ``where``, the key and what is allowed)."""
    if not isinstance(doc, dict):
        raise SpecError(f"{where}: expected a mapping with keys {', '.join(SweepSpec.model_fields)}, got "
                        f"{type(doc).__name__}")
    try:
        spec = SweepSpec.model_validate(doc, context={"base_dir": Path(base_dir)})
    except ValidationError as e:
        errs = e.errors(include_url=False)
        more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
        raise SpecError(_one_line(f"{where}: {_error_text(errs[0])}{more}")) from None
    spec._source, spec._base_dir = where, Path(base_dir)
    return spec


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a YAML sweep spec. Raises SpecError."""
    where = f"sweep spec {path}"
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{where}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SpecError(_one_line(f"{where}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}: "
                                  f"{getattr(e, 'problem', None) or e}")) from None
    return parse_spec(doc, where, Path(path).parent)


# ------------------------------------------------------------------ cells
@dataclass(frozen=True)
class Cell:
    """One case of the cross product. ``model``/``hardware`` are the spec's names (keys of
    ``Sweep.models``/``Sweep.profiles``); ``index`` its position in spec order."""

    index: int
    cell_id: str
    model: str
    hardware: str
    engine: str
    gpus: int
    objective: str | None  # batches only
    workload: BatchWorkload | StreamWorkload

    @property
    def engine_kind(self) -> str:
        return ENGINE_KIND[self.workload.kind]

    def identity(self) -> dict:
        """The row's columns that say which cell it is (``COLUMNS``, first groups)."""
        w = self.workload
        row = {"cell_id": self.cell_id, "model": self.model, "hardware": self.hardware, "engine": self.engine,
               "engine_kind": self.engine_kind, "gpus": self.gpus, "objective": self.objective,
               "workload": w.label(), "workload_kind": w.kind, "prompt_len": w.prompt_len}
        if w.kind == BATCH:
            row |= {"gen_len": w.gen_len, "num_sequences": w.num_sequences}
        else:
            slo = {k: _duration_text(getattr(w, k), k) for k in ("ttft_slo", "tpot_slo")}
            row |= {"gen_len": w.output_len, "rate_rps": w.rate, "concurrency": w.concurrency,
                    "num_requests": w.num_requests, "length_dist": w.length_dist, "burstiness": w.burstiness,
                    "trace": w.trace, "think_time_s": w.think_time, "seed": w.seed, "router": w.router,
                    "ttft_slo_s": slo["ttft_slo"], "tpot_slo_s": slo["tpot_slo"], "tp": w.tp, "pp": w.pp}
        return row


@dataclass
class Sweep:
    """A validated spec with its inputs loaded (models, profiles, traces) and its cells."""

    spec: SweepSpec
    source: str
    cells: list[Cell]
    models: dict  # spec name -> ModelSpec
    profiles: dict  # spec name -> HardwareProfile
    traces: dict  # spec trace -> RequestStream

    def inputs(self, cell: Cell) -> tuple:
        """(model, hw, trace) that ``run_cell`` takes with ``cell``."""
        trace = getattr(cell.workload, "trace", None)
        return self.models[cell.model], self.profiles[cell.hardware], self.traces.get(trace)


def _file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("llmsim")
    except PackageNotFoundError:
        return "unknown"


def plan_sweep(spec: SweepSpec) -> Sweep:
    """Load every model, profile and trace the spec names (paths relative to the spec file;
    errors name the key: nothing is written before this succeeds) and lay out its cells in
    spec order (module docstring)."""
    from simulator.hardware import list_profiles, load_profile, resolve_profile_path
    from simulator.models import PRESETS, get_model
    from simulator.serving.requests import load_trace, resolve_trace
    where, base = spec._source, spec._base_dir

    def load(at: str, name: str, loader, path: str):
        try:
            return loader(path)
        except LlmsimError as e:
            raise SpecError(_one_line(f"{where}: {at} {name!r}: {e}")) from None

    models, model_key = {}, {}
    for i, name in enumerate(spec.models):
        path = name if name in PRESETS else str(base / name)
        models[name] = load(f"models[{i}]", name, get_model, path)
        model_key[name] = name if name in PRESETS else _file_digest(
            Path(path) / "config.json" if Path(path).is_dir() else path)
    profiles, hw_key = {}, {}
    for i, name in enumerate(spec.hardware):
        path = name if name in list_profiles() else str((base / name).resolve())
        profiles[name] = load(f"hardware[{i}]", name, load_profile, path)
        hw_key[name] = _file_digest(resolve_profile_path(path))
    traces, trace_key = {}, {}
    for i, w in enumerate(spec.workloads):
        if getattr(w, "trace", None) and w.trace not in traces:
            path = str(base / w.trace) if (base / w.trace).is_file() else w.trace
            traces[w.trace] = load(f"workloads[{i}].trace", w.trace, load_trace, path)
            trace_key[w.trace] = _file_digest(resolve_trace(path))
    version = _version()
    cells, seen = [], {}
    for m in spec.models:
        for h in spec.hardware:
            for g in spec.gpus:
                for w in spec.workloads:
                    for e in spec.engines_for(w):
                        objective = spec.objective if w.kind == BATCH else None
                        key = {"model": model_key[m], "hardware": hw_key[h], "engine": e, "gpus": g,
                               "objective": objective, "workload": w.model_dump(exclude={"name"}),
                               "trace": trace_key.get(getattr(w, "trace", None)), "llmsim": version}
                        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
                        if digest in seen:
                            raise SpecError(f"{where}: {_describe(cells[seen[digest]])} and {m} on {h}, {e} ask the "
                                            "same case (the same model, profile contents and workload)")
                        seen[digest] = len(cells)
                        cells.append(Cell(len(cells), digest, m, h, e, g, objective, w))
    return Sweep(spec, where, cells, models, profiles, traces)


def _describe(c: Cell) -> str:
    return f"{c.model} on {c.hardware}, {c.engine}"


def load_sweep(path: str | os.PathLike) -> Sweep:
    """``load_spec`` then ``plan_sweep``: a spec file ready to run. Raises SpecError."""
    return plan_sweep(load_spec(path))


# ------------------------------------------------------------------ the table
COLUMNS: dict[str, str] = {
    # which cell
    "cell_id": "string", "model": "string", "hardware": "string", "engine": "string",
    "engine_kind": "string",  # planner | serving
    "gpus": "Int64", "objective": "string",
    # the workload (stream lengths are means; gen_len is a stream's output_len)
    "workload": "string", "workload_kind": "string",  # batch | stream
    "prompt_len": "Int64", "gen_len": "Int64", "num_sequences": "Int64",
    "rate_rps": "float64", "concurrency": "Int64", "num_requests": "Int64", "length_dist": "string",
    "burstiness": "float64", "trace": "string", "think_time_s": "float64", "seed": "Int64", "router": "string",
    "ttft_slo_s": "float64", "tpot_slo_s": "float64",
    # the answer
    "feasible": "boolean", "reason": "string",
    "error": "string", "error_kind": "string",  # input (the inputs were refused) | internal | worker
    "throughput_tok_s": "float64", "total_latency_s": "float64",  # batch: all sequences; stream: output tokens/s
    "prefill_latency_s": "float64", "decode_latency_s": "float64",
    "peak_gpu_bytes": "float64", "peak_cpu_bytes": "float64", "peak_disk_bytes": "float64",  # per GPU / host
    "bottleneck": "string",
    # the plan's policy (batch) or the replica layout (stream)
    "dtype": "string", "tp": "Int64", "pp": "Int64", "dp": "Int64", "replicas": "Int64",
    "gpu_batch_size": "Int64", "num_gpu_batches": "Int64",
    "compress_weights": "boolean", "compress_cache": "boolean", "cpu_attention": "boolean",
    **{f"{t}_{tier}_frac": "float64" for t in ("weights", "cache", "activations") for tier in ("gpu", "cpu", "disk")},
    # serving metrics (streams)
    **{f"{m}_{q}_s": "float64" for m in ("ttft", "tpot", "e2e") for q in ("p50", "p90", "p99")},
    "requests_per_s": "float64", "goodput_rps": "float64", "slo_attained_frac": "float64",
    "preemptions": "Int64", "kv_blocks": "Int64", "kv_peak_used_frac": "float64",
    # time spent
    "search_s": "float64", "cell_s": "float64",
}


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return _finite(v.item())
    return v


def complete_row(row: dict) -> dict:
    """Every column of ``COLUMNS`` (None where it does not apply), plain JSON values."""
    extra = set(row) - set(COLUMNS)
    if extra:
        raise KeyError(f"not a sweep column: {sorted(extra)}")
    return {k: _finite(row.get(k)) for k in COLUMNS}


def failed_row(cell: Cell, error: str, kind: str, cell_s: float | None = None) -> dict:
    """The row of a cell that did not answer: ``kind`` input | internal | worker."""
    return complete_row(cell.identity() | {"feasible": False, "reason": _one_line(error), "error": _one_line(error),
                                            "error_kind": kind, "cell_s": cell_s})


def results_frame(rows: Iterable[dict]):
    """The tidy table: one row per cell, ``COLUMNS`` with their dtypes."""
    import pandas as pd
    df = pd.DataFrame([complete_row(r) for r in rows], columns=list(COLUMNS))
    return df.astype(COLUMNS)


# ------------------------------------------------------------------ one cell
def run_cell(cell: Cell, model, hw, trace=None) -> dict:
    """The row of one cell (``COLUMNS``): a batch planned by ``search`` on a planner engine,
    a stream simulated on a serving engine. Pure: the same inputs give the same row (but
    ``cell_s`` and ``search_s``, the time it took)."""
    t0 = time.perf_counter()
    try:
        answer = _plan(cell, model, hw) if cell.engine_kind == PLANNER else _serve(cell, model, hw, trace)
    except LlmsimError as e:
        return failed_row(cell, str(e), "input", time.perf_counter() - t0)
    except Exception as e:  # a bug must not take the sweep down: recorded, and retried on resume
        return failed_row(cell, f"{type(e).__name__}: {e}", "internal", time.perf_counter() - t0)
    return complete_row(cell.identity() | answer | {"cell_s": time.perf_counter() - t0})


def _plan(cell: Cell, model, hw) -> dict:
    from simulator.headroom import Headroom, with_headroom
    from simulator.policy import Workload as PlanWorkload
    from simulator.search import search
    w = cell.workload
    hw = with_headroom(hw, Headroom())  # the margin `llmsim plan` leaves by default
    plan = search(model, hw, PlanWorkload(w.prompt_len, w.gen_len, w.num_sequences), objective=cell.objective,
                  gpus=cell.gpus, engine=cell.engine, compare=False)
    row = {"feasible": bool(plan.feasible), "reason": plan.reason, "search_s": plan.search_seconds}
    est, pol = plan.estimate, plan.policy
    if est is not None:
        peak = est.peak_memory_bytes
        row |= {"throughput_tok_s": est.throughput_tok_s, "total_latency_s": est.total_latency_s,
                "prefill_latency_s": est.prefill_latency_s, "decode_latency_s": est.decode_latency_s,
                "peak_gpu_bytes": peak.get("gpu"), "peak_cpu_bytes": peak.get("cpu"),
                "peak_disk_bytes": peak.get("disk"), "bottleneck": str(est.bottleneck),
                "num_sequences": est.num_sequences}
    if pol is not None:
        row |= {k: getattr(pol, k) for k in ("dtype", "tp", "pp", "dp", "gpu_batch_size", "num_gpu_batches",
                                              "compress_weights", "compress_cache", "cpu_attention")}
        for t in ("weights", "cache", "activations"):
            p = getattr(pol, t)
            row |= {f"{t}_gpu_frac": p.gpu_frac, f"{t}_cpu_frac": p.cpu_frac, f"{t}_disk_frac": p.disk_frac}
    return row


def _serve(cell: Cell, model, hw, trace) -> dict:
    from simulator.errors import PolicyError
    from simulator.serving import metrics
    from simulator.serving.engines import get_engine
    from simulator.serving.requests import LengthDist, StreamSpec
    from simulator.serving.simulate import ServingInfeasible, simulate
    w = cell.workload
    per_replica = w.tp * w.pp
    if cell.gpus % per_replica:
        raise PolicyError(f"gpus {cell.gpus} is not a multiple of tp {w.tp} x pp {w.pp} = {per_replica} GPUs per "
                          "replica")
    if trace is not None:
        spec = StreamSpec(num_requests=w.num_requests, burstiness=w.burstiness, seed=w.seed, trace=trace)
    else:
        spec = StreamSpec(num_requests=w.num_requests, prompt_len=w.prompt_len, output_len=w.output_len,
                          length_dist=LengthDist.parse(w.length_dist, "length_dist"), burstiness=w.burstiness,
                          seed=w.seed)
    if w.rate is not None:
        stream = spec.at_rate(w.rate)
    elif w.concurrency is not None:
        stream = spec.closed(w.concurrency, w.think_time)
    else:
        stream = spec.as_traced()
    replicas = cell.gpus // per_replica
    row = {"replicas": replicas, "num_requests": stream.num_requests}
    try:
        result = simulate(model, hw, stream, get_engine(cell.engine, hw=hw), tp=w.tp, pp=w.pp, replicas=replicas,
                          router=w.router)
    except ServingInfeasible as e:
        return row | {"feasible": False, "reason": _one_line(e)}
    s = metrics.summary(result, metrics.SLO(_duration_text(w.ttft_slo, "ttft_slo"),
                                            _duration_text(w.tpot_slo, "tpot_slo")))
    kv = result.kv
    row |= {"feasible": True, "reason": "", "throughput_tok_s": s["throughput_tok_s"], "dtype": s["dtype"],
            "peak_gpu_bytes": kv.weights_bytes + kv.activations_bytes + kv.kv_bytes,
            "requests_per_s": s["requests_per_s"], "goodput_rps": s["goodput_rps"],
            "slo_attained_frac": s["slo_attained_frac"], "preemptions": s["preemptions"],
            "kv_blocks": s["kv_cache"]["blocks_per_server"], "kv_peak_used_frac": s["kv_cache"]["peak_used_frac"]}
    for m in ("ttft", "tpot", "e2e"):
        row |= {f"{m}_{q}_s": s[f"{m}_s"][q] for q in ("p50", "p90", "p99")}
    return row


# ------------------------------------------------------------------ checkpoint and files
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a unique temporary name beside ``path``, then rename over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Checkpoint:
    """Finished cells of a sweep: ``DIR/cells/<cell_id>.json``, one row each, each written
    atomically the moment its cell finishes (a kill loses at most the cells in flight)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.dir = Path(out_dir) / "cells"

    def finished(self, cells: Iterable[Cell]) -> dict[str, dict]:
        """{cell_id: row} of the cells already done; the identity columns come from the
        current spec (a workload renamed keeps its answer)."""
        out = {}
        for c in cells:
            try:
                row = json.loads((self.dir / f"{c.cell_id}.json").read_text())
            except (OSError, ValueError):
                continue  # not there (or unreadable): the cell runs
            if isinstance(row, dict) and row.get("cell_id") == c.cell_id and set(row) == set(COLUMNS):
                out[c.cell_id] = complete_row(row | {k: v for k, v in c.identity().items()
                                                     if k in ("model", "hardware", "workload")})
        return out

    def add(self, row: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(complete_row(row), allow_nan=False)

        def write(tmp):
            with open(tmp, "w") as f:
                f.write(text)
        atomic_write(self.dir / f"{row['cell_id']}.json", write)


def keeps(row: dict) -> bool:
    """Whether a row is a final answer (checkpointed): not a bug or a dead worker."""
    return row.get("error_kind") in (None, "input")


def write_results(df, out_dir: str | os.PathLike) -> dict:
    """``results.parquet`` and ``results.csv`` in ``out_dir``, each atomically."""
    out = Path(out_dir)
    paths = {"parquet": out / "results.parquet", "csv": out / "results.csv"}
    atomic_write(paths["parquet"], lambda tmp: df.to_parquet(tmp, index=False))
    atomic_write(paths["csv"], lambda tmp: df.to_csv(tmp, index=False))
    return {k: str(v) for k, v in paths.items()}


def read_results(out_dir: str | os.PathLike):
    """The table of a finished sweep (pandas DataFrame, ``COLUMNS``)."""
    import pandas as pd
    return pd.read_parquet(Path(out_dir) / "results.parquet")


# ------------------------------------------------------------------ running a sweep
Compute = Callable[[Sweep, list], Iterable[dict]]


def compute_in_process(sweep: Sweep, cells: list) -> Iterable[dict]:
    """The rows of ``cells``, one after another in this process."""
    for c in cells:
        yield run_cell(c, *sweep.inputs(c))


class Progress:
    """What ``run_sweep`` says while it runs; the default says nothing."""

    def begin(self, total: int, reused: int) -> None:
        pass

    def cell(self, row: dict) -> None:
        pass


@dataclass
class SweepOutcome:
    frame: object  # pandas DataFrame, one row per cell
    files: dict
    cells: int
    computed: int
    reused: int
    wall_s: float

    def counts(self) -> dict:
        """Cells by outcome: feasible, infeasible, refused (the engine cannot run the case:
        ``error_kind`` input) and failed (a bug or a lost worker: not checkpointed)."""
        df = self.frame
        err = df["error"].notna()
        refused = (df["error_kind"] == "input").fillna(False)
        return {"cells": self.cells, "computed": self.computed, "reused": self.reused,
                "feasible": int(df["feasible"].sum()), "infeasible": int((~df["feasible"] & ~err).sum()),
                "refused": int(refused.sum()), "failed": int((err & ~refused).sum())}

    def to_dict(self) -> dict:
        return self.counts() | {"wall_s": self.wall_s, "files": self.files}


def run_sweep(sweep: Sweep, out_dir: str | os.PathLike, compute: Compute = compute_in_process,
              progress: Progress | None = None) -> SweepOutcome:
    """Run the cells not in ``out_dir``'s checkpoint through ``compute(sweep, cells)`` (which
    yields their rows in any order, as they finish), checkpoint each final row as it
    arrives, then write the table (``write_results``). An interrupt leaves the checkpoint
    of every finished cell; a rerun computes only the rest."""
    t0 = time.perf_counter()
    progress = progress or Progress()
    checkpoint = Checkpoint(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    rows = checkpoint.finished(sweep.cells)
    todo = [c for c in sweep.cells if c.cell_id not in rows]
    progress.begin(len(sweep.cells), len(rows))
    wanted = {c.cell_id for c in todo}
    if todo:
        for row in compute(sweep, todo):
            if row["cell_id"] not in wanted:
                raise RuntimeError(f"compute returned a row for cell {row['cell_id']}, which was not asked")
            if keeps(row):
                checkpoint.add(row)
            rows[row["cell_id"]] = row
            progress.cell(row)
    missing = [c for c in todo if c.cell_id not in rows]
    if missing:
        raise RuntimeError(f"compute returned no row for {len(missing)} cells (first: {missing[0].cell_id})")
    df = results_frame(rows[c.cell_id] for c in sweep.cells)
    files = write_results(df, out_dir)
    return SweepOutcome(df, files, len(sweep.cells), len(todo), len(sweep.cells) - len(todo),
                        time.perf_counter() - t0)
