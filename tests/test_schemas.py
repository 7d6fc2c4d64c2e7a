"""The published JSON schemas (schemas/): each is the one the code generates and the command
prints, and a user's jsonschema validator accepts and refuses what llmsim's own check does."""

from __future__ import annotations

import copy
import functools
import json
import pathlib

import jsonschema
import pytest
import yaml

from helpers import run_cli
from simulator import profile_schema, sweeps
from simulator.errors import LlmsimError, ProfileError
from simulator.hardware import DATA_DIR, list_profiles, profile_from_dict
from validate import harness, record_schema

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
RECORDS = ROOT / "validate" / "records"
# file -> (the code's schema, the command that prints it)
PUBLISHED = {"profile.schema.json": (profile_schema.json_schema, ("hardware", "--schema")),
             "record.schema.json": (record_schema.json_schema, ("validate", "--schema")),
             "sweep.schema.json": (sweeps.json_schema, ("sweep", "--schema"))}
PROFILE_FILES = sorted(DATA_DIR.glob("*.yaml")) + sorted(RECORDS.glob("**/profiles/*.yaml"))
RECORD_FILES = sorted(RECORDS.glob("**/*.json"))


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_committed_schema_is_the_generated_one_and_the_command_prints_it(name):
    generate, command = PUBLISHED[name]
    committed = json.loads((SCHEMAS / name).read_text())
    assert committed == generate(), f"schemas/{name} is stale: llmsim {' '.join(command)} > schemas/{name}"
    code, out, err = run_cli(*command)
    assert (code, err) == (0, "") and json.loads(out) == committed
    assert committed["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_shipped_profile_and_record_is_valid_under_its_schema():
    profiles, records = _validator("profile.schema.json"), _validator("record.schema.json")
    assert len(PROFILE_FILES) == len(list_profiles()) + 1 >= 14
    for path in PROFILE_FILES:
        errors = [e.message for e in profiles.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], (path, errors[:3])
    assert len(RECORD_FILES) >= 300
    for path in RECORD_FILES:
        errors = [e.message for e in records.iter_errors(json.loads(path.read_text()))]
        assert errors == [], (path, errors[:3])


@functools.lru_cache
def _doc(name: str) -> dict:
    """Shipped profile ``name`` as parsed YAML (shared: copy before changing it)."""
    return yaml.safe_load((DATA_DIR / f"{name}.yaml").read_text())


def _changed(name: str, path: str, value=None, delete: bool = False) -> dict:
    """Shipped profile ``name`` with the dotted key ``path`` set to ``value`` (or deleted)."""
    doc = copy.deepcopy(_doc(name))
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    return doc


# (profile, dotted key, new value or DELETE, words llmsim's one-line error holds): each a
# problem JSON schema can state, so the published schema must refuse it too.
class _Delete:
    def __repr__(self):
        return "DELETE"


DELETE = _Delete()
BAD_PROFILES = [
    ("t4-gcp", "gpu.hbm_GBps", -1, "gpu.hbm_GBps must be > 0, got -1"),
    ("t4-gcp", "gpu.hbm_GBps", 1e-300, "gpu.hbm_GBps 1e-300 is outside the allowed range 1e-06..1e+11"),
    ("t4-gcp", "gpu.hbm_GBps", "fast", "gpu.hbm_GBps must be a number, got 'fast'"),
    ("t4-gcp", "gpu.hbm_GBps", True, "gpu.hbm_GBps must be a number, got True"),
    ("t4-gcp", "disk.capacity_GiB", 1e300, "disk.capacity_GiB 1e+300 is outside the allowed range"),
    ("t4-gcp", "gpu.count", 10**30, f"gpu.count must be at most {2**20}, got {10**30}"),
    ("t4-gcp", "cpu.cores", 2.5, "cpu.cores must be a positive integer, got 2.5"),
    ("t4-gcp", "gpu.hbm_TBps", 3, "unknown key gpu.hbm_TBps (allowed: name, count, memory_GiB"),
    ("t4-gcp", "extra", 1, "unknown key 'extra' (allowed: schema_version, name, metadata"),
    ("t4-gcp", "disk.read_direct_GBps", DELETE, "missing key disk.read_direct_GBps"),
    ("t4-gcp", "links", DELETE, "missing key 'links' (required when a gpu section is present)"),
    ("t4-gcp", "schema_version", 7, "schema_version 7 is not supported (expected 1)"),
    ("t4-gcp", "metadata.source", "vibes", "metadata.source 'vibes' is not one of measured, datasheet, paper"),
    ("t4-gcp", "metadata.key_sources", {"gpu.nope": "paper"}, "metadata.key_sources names unknown key 'gpu.nope'"),
    ("t4-gcp", "links.h2d_latency_us", -1, "links.h2d_latency_us must be >= 0, got -1"),
    ("h100-pcie5", "gpu.matmul_table.0.dtype", "fp4", "gpu.matmul_table[0].dtype 'fp4' is not one of fp32, fp16"),
    ("h100-pcie5", "gpu.matmul_table.0.time_us", [0, 1, 2, 3], "gpu.matmul_table[0].time_us[0] must be > 0, got 0"),
    ("h100-pcie5", "gpu.matmul_table.0.m", [], "gpu.matmul_table[0].m must be a non-empty list"),
    ("h100-pcie5", "gpu.decode_attention_table.0.kv_bytes", DELETE,
     "missing key gpu.decode_attention_table[0].kv_bytes"),
    ("cpu-2core", "cpu.memcpy_GBps", DELETE, "cpu.memcpy_GBps is required when there is no gpu section"),
    ("cpu-2core", "cpu.fp32_GFLOPs", DELETE, "missing key cpu.fp32_GFLOPs"),
    ("dgx-a100-8x", "interconnect.intra_node_link", "infiniband",
     "interconnect.intra_node_link 'infiniband' is not one of none, pcie, nvlink, nvswitch"),
    ("dgx-a100-8x", "interconnect.ici_link_GBps", 45, "interconnect.ici_link_GBps needs interconnect.topology: torus"),
    ("tpu-v4-64", "interconnect.topology", "ring", "interconnect.topology 'ring' is not one of switch, torus"),
    ("tpu-v4-64", "interconnect.torus_shape", "4x4", "interconnect.torus_shape '4x4' is not three positive sizes"),
    ("tpu-v4-64", "interconnect.torus_shape", "0x4x16", "interconnect.torus_shape '0x4x16' is not three positive"),
    ("tpu-v4-64", "interconnect.ici_links_per_chip", 4, "interconnect.ici_links_per_chip 4 does not match a 3D torus"),
    ("tpu-v4-64", "interconnect.ici_link_GBps", DELETE,
     "missing key interconnect.ici_link_GBps (required with topology torus)"),
    ("tpu-v4-64", "interconnect.intra_node_GBps", 300, "interconnect.intra_node_GBps is not used with topology torus"),
    ("tpu-v4-64", "interconnect.torus_wraparound", "yes", "interconnect.torus_wraparound must be true or false"),
]


@pytest.mark.parametrize("name,key,value,words", BAD_PROFILES, ids=[f"{n}:{k}={v!r}"[:60] for n, k, v, _ in
                                                                    BAD_PROFILES])
def test_a_bad_profile_is_refused_by_both_with_one_line_naming_the_key(name, key, value, words):
    doc = _changed(name, key, delete=value is DELETE) if value is DELETE else _changed(name, key, value)
    with pytest.raises(ProfileError) as e:
        profile_from_dict(doc, "bad.yaml")
    assert str(e.value).startswith(f"bad.yaml: {words}") and "\n" not in str(e.value)
    assert not _validator("profile.schema.json").is_valid(doc)


def test_the_rules_json_schema_cannot_state_are_llmsims_alone():
    """Equal counts across sections and ordered tables: the published schema accepts these
    (its documentation says so), llmsim refuses them."""
    cases = [(_changed("dgx-a100-8x", "interconnect.gpus_per_node", 4), "interconnect.gpus_per_node 4 differs from "
                                                                        "gpu.count 8"),
             (_changed("tpu-v4-64", "interconnect.torus_shape", "4x4x2"), "holds 32 chips but gpu.count x "
                                                                          "interconnect.nodes is 64"),
             (_changed("h100-pcie5", "gpu.matmul_table.0.m", [2, 1, 3, 4]), "m must be strictly increasing"),
             (_changed("h100-pcie5", "gpu.matmul_table.0.time_us", [1]), "time_us has 1 value but m has 4"),
             (_changed("cpu-2core", "cpu.threads", 3), "cpu.threads 3 exceeds cpu.cores 2")]
    validator = _validator("profile.schema.json")
    for doc, words in cases:
        with pytest.raises(ProfileError, match=words):
            profile_from_dict(doc, "bad.yaml")
        assert validator.is_valid(doc), words


def test_more_than_one_problem_is_counted_and_an_unknown_key_comes_first():
    doc = _changed("t4-gcp", "gpu.hbm_GBPS", 300)  # a typo: the intended key is then missing
    del doc["gpu"]["hbm_GBps"]
    doc["disk"]["capacity_GiB"] = -1
    with pytest.raises(ProfileError) as e:
        profile_from_dict(doc, "typo.yaml")
    assert str(e.value).startswith("typo.yaml: unknown key gpu.hbm_GBPS (allowed: ")
    assert str(e.value).endswith(" (and 2 more problems)")


def _record() -> dict:
    return json.loads(sorted((RECORDS / "cpu-2core").glob("*.json"))[0].read_text())


def _record_changed(path: str, value=None, delete: bool = False) -> dict:
    rec = _record()
    *parents, last = path.split(".")
    node = rec
    for part in parents:
        node = node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    return rec


BAD_RECORDS = [
    ("measured", DELETE, "missing key 'measured'"),
    ("case.workload.gen_len", "8", "case.workload.gen_len '8' is not allowed"),
    ("case.workload.gen_len", 0, "case.workload.gen_len 0 is not allowed"),
    ("measured.throughput_tok_s", 0, "measured.throughput_tok_s 0 is not allowed: input should be greater than 0"),
    ("measured", {"throughput_tok_s": None}, "measured: a record measures throughput_tok_s or a latency"),
    ("case.name", 7, "case.name 7 is not allowed"),
    ("profile", "ci-cpu", "profile 'ci-cpu' is not allowed"),
    ("gates", {"throughput_tok_s": -0.1}, "gates.throughput_tok_s -0.1 is not allowed"),
    ("schema_version", 2, "schema_version 2 is not allowed"),
]


@pytest.mark.parametrize("key,value,words", BAD_RECORDS, ids=[f"{k}={v!r}"[:50] for k, v, _ in BAD_RECORDS])
def test_a_bad_record_is_refused_by_both(key, value, words):
    rec = _record_changed(key, delete=True) if value is DELETE else _record_changed(key, value)
    with pytest.raises(LlmsimError) as e:
        record_schema.check_record(rec, "rec.json")
    assert str(e.value).startswith(f"rec.json: {words}"), str(e.value)
    assert not _validator("record.schema.json").is_valid(rec)


def test_the_record_schema_version_is_the_harness_one():
    assert record_schema.SCHEMA_VERSION == harness.RECORD_SCHEMA
    assert _validator("record.schema.json").is_valid(_record())


# Every value of these keys also enters a rule across sections (gpus_per_node and the torus's
# chips against gpu.count x nodes, threads against cores), which JSON schema cannot state.
ACROSS_SECTIONS = {"gpu.count", "cpu.cores", "cpu.threads", "interconnect.nodes", "interconnect.gpus_per_node",
                   "interconnect.torus_shape"}


@pytest.mark.parametrize("name", ["t4-gcp", "cpu-2core", "dgx-a100-8x", "tpu-v4-64"])
def test_the_schema_and_llmsim_agree_on_every_key_given_any_value(name):
    """Each key of each section (tables aside) deleted, or set to a value of another type, out
    of range, at a range's edge or fine, and an unknown key per section: the published schema
    refuses exactly what llmsim refuses (NaN aside: JSON has none, and a comparison with it
    is false, so a JSON schema validator lets a YAML .nan through)."""
    validator, base = _validator("profile.schema.json"), _doc(name)
    values = [None, -1, 0, "fast", True, 2.5, 3, 1e-300, 1e300, 10**30, [1], {"a": 1}]
    docs = {f"{top}={v!r}": {**base, top: v} for top in base for v in ("x", 3, [1])}
    for top, section in base.items():
        if top == "measurements" or not isinstance(section, dict):
            continue
        docs[f"{top}.new_GBps"] = _changed(name, f"{top}.new_GBps", 1)
        for key in section:
            if isinstance(section[key], list):
                continue
            docs[f"del {top}.{key}"] = _changed(name, f"{top}.{key}", delete=True)
            docs.update({f"{top}.{key}={v!r}": _changed(name, f"{top}.{key}", v) for v in values})
    disagree, refused = [], 0
    for label, doc in docs.items():
        try:
            profile_from_dict(doc, "bad.yaml")
            ok = True
        except ProfileError:
            ok, refused = False, refused + 1
        if ok != validator.is_valid(doc) and label.split("=")[0].removeprefix("del ") not in ACROSS_SECTIONS:
            disagree.append(label)
    assert disagree == [] and refused > len(docs) / 2
