"""The structure of a validation record (``validate/harness.py make_record``), checked when
records are read back (``llmsim validate --records``); its JSON schema is
``schemas/record.schema.json`` (``json_schema``, printed by ``llmsim validate --schema``).

pydantic models in strict mode (no coercion: ``"8"`` is not a length, ``true`` is not a
count) with the ranges the planner accepts. Only what re-prediction and the gate read is
required; the rest of a record (component times, bandwidth, notes) is kept as it is.
The model spec and the policy are checked by their own loaders (``ModelSpec.from_dict``,
``Policy.from_dict``), which name the record and the key.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulator.errors import LlmsimError

SCHEMA_VERSION = 1  # validate.harness.RECORD_SCHEMA
MEASURED = ("throughput_tok_s", "prefill_latency_s", "decode_latency_s", "total_latency_s")  # one at least

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Dim = Annotated[int, Field(ge=1, le=2**31 - 1)]
Text = Annotated[str, Field(min_length=1)]


class _Part(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class RecordWorkload(_Part):
    prompt_len: Dim
    gen_len: Dim
    num_sequences: Optional[Annotated[int, Field(ge=1, le=2**53)]] = None


class RecordCase(_Part):
    name: Text
    model: dict[str, Any]
    workload: RecordWorkload
    policy: dict[str, Any]
    device: Text


class RecordProfile(_Part):
    name: Text
    file: Optional[Text] = None  # absent: a shipped profile by name (published records)


class RecordEngine(_Part):
    name: Text
    options: Optional[dict[str, Any]] = None


class RecordMeasured(_Part):
    """What was measured: the throughput (the executor's runs, most published runs) or, for
    a published run that states only a latency, that latency (the record's ``metric``)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": [k], "properties": {k: {"type": "number"}}}
                                                           for k in MEASURED]})
    throughput_tok_s: Optional[Positive] = None
    decode_throughput_tok_s: Optional[NonNegative] = None
    prefill_latency_s: Optional[NonNegative] = None
    decode_latency_s: Optional[NonNegative] = None
    total_latency_s: Optional[NonNegative] = None

    @model_validator(mode="after")
    def _something_measured(self):
        if all(getattr(self, k) is None for k in MEASURED):
            raise ValueError("a record measures throughput_tok_s or a latency (prefill_latency_s, "
                             "decode_latency_s, total_latency_s)")
        return self


class RecordPredicted(_Part):
    throughput_tok_s: Optional[NonNegative] = None


class Record(_Part):
    """A run of one case: what was asked, on which profile and engine, what was measured and
    what llmsim predicted for it."""

    model_config = ConfigDict(title="llmsim validation record")
    schema_version: Annotated[int, Field(ge=SCHEMA_VERSION, le=SCHEMA_VERSION)]
    created: Text
    case: RecordCase
    profile: RecordProfile
    measured: RecordMeasured
    predicted: RecordPredicted
    engine: Optional[RecordEngine] = None  # absent: llmsim's own executor
    kind: Optional[Text] = None  # "published": another engine's run
    gates: Optional[dict[str, Positive]] = None  # metric -> max |relative error|
    errors: dict[str, Any] = {}
    machine: Optional[dict[str, Any]] = None
    versions: Optional[dict[str, Any]] = None
    notes: list[Any] = []


def check_record(doc, where: str) -> None:
    """Raise LlmsimError naming ``where`` (the file), the first bad key, its value and what
    is allowed, when ``doc`` is not a record of this schema."""
    try:
        Record.model_validate(doc)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "missing":
            raise LlmsimError(f"{where}: missing key {key!r} (required in a record)") from None
        if err["type"] == "value_error":
            raise LlmsimError(f"{where}: {key}: {err['msg'].removeprefix('Value error, ')}") from None
        value = err.get("input")
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        raise LlmsimError(f"{where}: {key} {shown} is not allowed: {err['msg'][0].lower()}{err['msg'][1:]}") from None


def json_schema() -> dict:
    """The JSON schema of a record (draft 2020-12), as in schemas/record.schema.json."""
    from simulator.profile_schema import SchemaGenerator
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **Record.model_json_schema(schema_generator=SchemaGenerator)}
