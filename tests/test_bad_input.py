"""Bad input over every subcommand: exit 2, one line on stderr naming the flag / file / key and
the value, nothing on stdout - never a traceback, a hang or a silent wrong answer (issue 9,
section 5). The table holds one row per class found by ``scripts/fuzz_cli.py`` (which throws
~290 inputs); a hypothesis test throws random values at the flags of predict and plan."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import run_cli, without_progress
from simulator.hardware import DATA_DIR

ROOT = Path(__file__).resolve().parent.parent
try:
    import torch  # noqa: F401
    HAS_TORCH = True
except ImportError:
    HAS_TORCH = False
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="validate runs need torch")

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128,
        "torch_dtype": "float32"}
SHORT = ["--prompt-len", "8", "--gen-len", "4"]
LONG = "x" * 300  # one name of 300 bytes: ENAMETOOLONG (255 at most on Linux)
SIM = ["simulate", "--model", "opt-1.3b", "--hardware", "a100-80g-sxm", "--num-requests", "20"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The bad files of the table, by key: {key: path}."""
    d = tmp_path_factory.mktemp("bad")
    out = {"dir": str(d)}

    def put(key, name, data):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        out[key] = str(p)

    put("tiny", "tiny.json", json.dumps(TINY))
    put("heads0", "heads0.json", json.dumps({**TINY, "num_attention_heads": 0}))
    put("heads_list", "heads_list.json", json.dumps({**TINY, "num_attention_heads": [4]}))
    put("vocab_str", "vocab_str.json", json.dumps({**TINY, "vocab_size": "256"}))
    put("layers_null", "layers_null.json", json.dumps({**TINY, "num_hidden_layers": None}))
    put("layers_nan", "layers_nan.json", json.dumps({**TINY, "num_hidden_layers": float("nan")}))
    put("theta_str", "theta_str.json", json.dumps({**TINY, "rope_theta": "big"}))
    put("huge_dim", "huge_dim.json", json.dumps({**TINY, "hidden_size": 10**30}))
    put("type_list", "type_list.json", json.dumps({**TINY, "model_type": ["llama"]}))
    put("tie_str", "tie_str.json", json.dumps({**TINY, "tie_word_embeddings": "no"}))
    put("dupe_json", "dupe.json", '{"hidden_size": 32, ' + json.dumps(TINY)[1:])
    put("binary_json", "binary.json", b"\x89PNG\r\n\x1a\n\x00\x00" * 8)
    put("latin1_json", "latin1.json", '{"a": "caf\xe9"}'.encode("latin-1"))
    put("list_json", "list.json", "[1, 2]")
    put("dupe_jsonl", "dupe.jsonl", '{"arrival_s": 0, "arrival_s": 1, "prompt_tokens": 8, "output_tokens": 4}\n')
    with open(d / "sparse.json", "wb") as f:  # 200 MiB of nothing (a hole): over the size limit
        f.truncate(200 * 2**20)
    out["sparse"] = str(d / "sparse.json")
    os.mkfifo(d / "pipe.json")
    out["fifo"] = str(d / "pipe.json")
    (d / "empty_dir").mkdir()
    out["empty_dir"] = str(d / "empty_dir")

    base = (DATA_DIR / "t4-gcp.yaml").read_text()
    doc = yaml.safe_load(base)
    for key, section, field, value in (("cap_1e300", "disk", "capacity_GiB", 1e300),
                                       ("hbm_tiny", "gpu", "hbm_GBps", 1e-300),
                                       ("count_huge", "gpu", "count", 10**30),
                                       ("hbm_str", "gpu", "hbm_GBps", "fast")):
        bad = json.loads(json.dumps(doc))
        bad[section][field] = value
        put(key, f"{key}.yaml", yaml.safe_dump(bad))
    put("cap_bigint", "cap_bigint.yaml", re.sub(r"(?m)^  capacity_GiB: .*$", "  capacity_GiB: 1" + "0" * 400, base))
    dupe = re.sub(r"(?m)^(  hbm_GBps: .*)$", r"\1\n  hbm_GBps: 3200", base)
    put("dupe_yaml", "dupe.yaml", dupe)
    out["dupe_line"] = str(dupe.splitlines().index("  hbm_GBps: 3200") + 1)
    put("binary_yaml", "binary.yaml", b"\x00\x01\xff" * 30)

    good = json.loads(sorted((ROOT / "validate/records/cpu-2core").glob("*.json"))[0].read_text())
    prof = ROOT / "validate/records/cpu-2core/profiles/ci-cpu.yaml"

    def records(key, rec):
        r = d / "recs" / key
        (r / "profiles").mkdir(parents=True)
        (r / "profiles" / "ci-cpu.yaml").write_bytes(prof.read_bytes())
        (r / "rec.json").write_bytes(rec if isinstance(rec, bytes) else
                                     (rec if isinstance(rec, str) else json.dumps(rec)).encode())
        out[key] = str(r)

    def change(path, value=None, delete=False):
        rec = json.loads(json.dumps(good))
        node = rec
        for k in path[:-1]:
            node = node[k]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return rec

    records("rec_binary", b"\x00\xff" * 20)
    records("rec_malformed", '{"schema_version": 1, "case": ')
    records("rec_no_measured", change(["measured"], delete=True))
    records("rec_gen_str", change(["case", "workload", "gen_len"], "8"))
    records("rec_tput_zero", change(["measured", "throughput_tok_s"], 0))
    records("rec_name_int", change(["case", "name"], 7))
    records("rec_prof_abs", change(["profile", "file"], "/etc/passwd"))
    records("rec_prof_missing", change(["profile", "file"], "profiles/none.yaml"))
    records("rec_heads_str", change(["case", "model", "num_heads"], "many"))
    records("rec_policy_w", change(["case", "policy", "weights"], [1, 0, 0]))
    records("rec_dupe", '{"schema_version": 1, ' + json.dumps(good)[1:])
    (d / "recs" / "only-profiles" / "profiles").mkdir(parents=True)
    out["rec_empty"] = str(d / "recs" / "only-profiles")
    return out


# (arguments with {key} placeholders for files, words the one line must contain: the flag,
# file or key, and the bad value)
CASES = [
    # file and folder names
    (["predict", "--model", LONG + ".json"], ["--model", "file name too long"]),
    (["plan", "--hardware", LONG + ".yaml"], ["--hardware", "file name too long"]),
    (["plan", "--report", "{dir}/" + LONG], ["--report", "file name too long"]),
    (["validate", "--records", "{dir}/" + LONG], ["--records", "file name too long"]),
    (["profile", "--out", "{dir}/" + LONG + ".yaml"], ["--out", "file name too long"]),
    (["predict", "--model", "{fifo}"], ["--model", "{fifo}", "named pipe"]),
    (["predict", "--model", "/dev/zero"], ["--model", "/dev/zero", "character device"]),
    (["predict", "--hardware", "{empty_dir}/x.yaml"], ["--hardware", "no such file"]),
    (["predict", "--model", "{empty_dir}"], ["--model", "{empty_dir}", "without a config.json"]),
    (["predict", "--model", "{sparse}"], ["--model", "{sparse}", "too big"]),
    # config.json contents
    (["predict", "--model", "{heads0}", *SHORT], ["{heads0}", "num_attention_heads", "got 0"]),
    (["predict", "--model", "{heads_list}", *SHORT], ["{heads_list}", "num_attention_heads", "[4]"]),
    (["predict", "--model", "{vocab_str}", *SHORT], ["{vocab_str}", "vocab_size", "'256'"]),
    (["predict", "--model", "{layers_null}", *SHORT], ["{layers_null}", "num_hidden_layers", "None"]),
    (["predict", "--model", "{layers_nan}", *SHORT], ["{layers_nan}", "num_hidden_layers", "nan"]),
    (["predict", "--model", "{theta_str}", *SHORT], ["{theta_str}", "rope_theta", "'big'"]),
    (["predict", "--model", "{huge_dim}", *SHORT], ["{huge_dim}", "hidden_size", "at most 2147483647"]),
    (["predict", "--model", "{type_list}", *SHORT], ["{type_list}", "model_type", "['llama']"]),
    (["predict", "--model", "{tie_str}", *SHORT], ["{tie_str}", "tie_word_embeddings", "'no'"]),
    (["predict", "--model", "{dupe_json}", *SHORT], ["{dupe_json}", "duplicate key 'hidden_size'"]),
    (["predict", "--model", "{binary_json}"], ["{binary_json}", "binary"]),
    (["predict", "--model", "{latin1_json}"], ["{latin1_json}", "not UTF-8", "0xe9"]),
    (["predict", "--model", "{list_json}"], ["{list_json}", "expected a JSON object, got list"]),
    # profiles
    (["plan", "--hardware", "{cap_1e300}"], ["{cap_1e300}", "disk.capacity_GiB", "1e+300"]),
    (["plan", "--hardware", "{hbm_tiny}"], ["{hbm_tiny}", "gpu.hbm_GBps", "1e-300"]),
    (["plan", "--hardware", "{count_huge}"], ["{count_huge}", "gpu.count", "at most"]),
    (["predict", "--hardware", "{cap_bigint}"], ["{cap_bigint}", "disk.capacity_GiB", "must be a number"]),
    (["predict", "--hardware", "{hbm_str}"], ["{hbm_str}", "gpu.hbm_GBps", "'fast'"]),
    (["predict", "--hardware", "{dupe_yaml}"], ["{dupe_yaml}", "duplicate key 'hbm_GBps'", "at line {dupe_line}"]),
    (["predict", "--hardware", "{binary_yaml}"], ["{binary_yaml}", "binary"]),
    # flags
    (["predict", "--prompt-len", str(10**30)], ["--prompt-len", str(10**30)]),
    (["predict", "--gpu-batch-size", "0"], ["--gpu-batch-size", "got 0"]),
    (["predict", "--gpu-batch-size", "1.5"], ["--gpu-batch-size", "'1.5'"]),
    (["predict", "--weights", "nan,0,100"], ["--weights", "nan,0,100"]),
    (["plan", "--gpu-mem", "1e300"], ["--gpu-mem", "1e300", "at most 1 EiB"]),
    (["plan", "--cpu-mem", "1e-300"], ["--cpu-mem", "1e-300", "at least 1 byte"]),
    (["plan", "--num-sequences", str(10**30)], ["--num-sequences", str(10**30)]),
    (["plan", "--max-latency", "nan"], ["--max-latency", "nan"]),
    (["plan", "--gpus", "0"], ["--gpus 0"]),
    (["plan", "--report", "/dev/null"], ["--report", "/dev/null", "not a folder"]),
    (["plan", "--report", "{tiny}/sub"], ["--report", "{tiny}", "not a folder"]),
    (["profile", "--threads", "0", "--out", "{dir}/p.yaml"], ["--threads", "got 0"]),
    (["profile", "--out", "{dir}"], ["--out", "{dir}", "is a directory"]),
    (["models", "extra"], ["extra"]),
    # validate: conflicting or ignored flags, one case's flags
    (["validate", "--records", "{rec_empty}", "--suite", "ci"], ["--records and --suite"]),
    (["validate", "--suite", "ci", "--model", "opt-125m"], ["--suite and --model"]),
    (["validate", "--suite", "ci", "--weights", "0,100,0"], ["--suite and --weights"]),
    (["validate", "--plan", "--cache", "0,100,0", "--hardware", "cpu-2core"], ["--plan and --cache"]),
    pytest.param(["validate", "--model", "{tiny}", "--hardware", "cpu-2core", "--threads", "0"],
                 ["--threads", "got 0"], marks=needs_torch),
    pytest.param(["validate", "--model", "{tiny}", "--hardware", "cpu-2core", "--threads", str(10**30)],
                 ["--threads", str(10**30)], marks=needs_torch),
    pytest.param(["validate", "--model", "{tiny}", "--hardware", "cpu-2core", "--device", "cuda:x"],
                 ["--device", "'cuda:x'"], marks=needs_torch),
    pytest.param(["validate", "--model", "{tiny}", "--hardware", "cpu-2core", "--record", "{tiny}"],
                 ["--record", "{tiny}", "not a folder"], marks=needs_torch),
    # validate --records
    # simulate / capacity (serving)
    (SIM + ["--trace", "{fifo}"], ["--trace", "{fifo}", "named pipe"]),
    (SIM + ["--trace", "{dir}/" + LONG + ".csv"], ["--trace", "file name too long"]),
    (SIM + ["--trace", "{dupe_jsonl}"], ["--trace", "{dupe_jsonl}", "line 1", "duplicate key 'arrival_s'"]),
    (SIM + ["--trace", "{binary_json}"], ["--trace", "{binary_json}", "binary"]),
    (SIM + ["--rate", "5", "--prompt-len", "64", "--output-len", "8", "--num-requests", str(10**30)],
     ["--num-requests", str(10**30), "at most"]),
    (SIM + ["--rate", "5", "--prompt-len", "64", "--output-len", str(10**30)], ["--output-len", str(10**30)]),
    (SIM + ["--concurrency", "4", "--prompt-len", "64", "--output-len", "8", "--think-time", "nan"],
     ["--think-time", "nan"]),
    (SIM + ["--rate", "5", "--prompt-len", "64", "--output-len", "8", "--replicas", "0"], ["--replicas", "got 0"]),
    (SIM + ["--rate", "5", "--prompt-len", "64", "--output-len", "8", "--block-size", str(10**30)],
     ["--block-size", str(10**30)]),
    (SIM + ["--rate", "5", "--prompt-len", "64", "--output-len", "8", "--out", "/dev/null"],
     ["--out", "/dev/null", "not a folder"]),
    (SIM + ["--trace", "{dir}"], ["--trace", "{dir}", "is a directory"]),
    (["capacity", "--model", "opt-1.3b", "--hardware", "a100-80g-sxm,", "--prompt-len", "64", "--output-len", "8",
      "--ttft-p99", "1s", "--tpot-p99", "50ms"], ["--hardware", "'a100-80g-sxm,'", "empty name"]),
    (["capacity", "--model", "opt-1.3b", "--hardware", "a100-80g-sxm,a100-80g-sxm", "--prompt-len", "64",
      "--output-len", "8", "--ttft-p99", "1s", "--tpot-p99", "50ms"], ["--hardware", "'a100-80g-sxm'", "named twice"]),
    # validate --records
    (["validate", "--records", "{rec_empty}"], ["no records in", "{rec_empty}"]),
    (["validate", "--records", "{tiny}"], ["--records", "{tiny}", "not a folder"]),
    (["validate", "--records", "{rec_binary}"], ["rec.json", "binary"]),
    (["validate", "--records", "{rec_malformed}"], ["rec.json", "not valid JSON", "line 1"]),
    (["validate", "--records", "{rec_no_measured}"], ["rec.json", "missing key 'measured'"]),
    (["validate", "--records", "{rec_gen_str}"], ["rec.json", "case.workload.gen_len", "'8'"]),
    (["validate", "--records", "{rec_tput_zero}"], ["rec.json", "measured.throughput_tok_s", "0", "greater than 0"]),
    (["validate", "--records", "{rec_name_int}"], ["rec.json", "case.name", "7"]),
    (["validate", "--records", "{rec_prof_abs}"], ["rec.json", "profile.file", "/etc/passwd"]),
    (["validate", "--records", "{rec_prof_missing}"], ["rec.json", "profile.file", "no such file", "none.yaml"]),
    (["validate", "--records", "{rec_heads_str}"], ["rec.json", "case.model", "num_heads", "'many'"]),
    (["validate", "--records", "{rec_policy_w}"], ["rec.json", "case.policy.weights", "[1, 0, 0]"]),
    (["validate", "--records", "{rec_dupe}"], ["rec.json", "duplicate key 'schema_version'"]),
]


def _fill(items, files):
    return [x.format(**files) for x in items]


@pytest.mark.parametrize("args,words", CASES)
def test_bad_input_one_line_exit_2(files, args, words):
    code, out, err = run_cli(*_fill(args, files))
    err = without_progress(err)
    assert (code, out) == (2, ""), err
    assert err.startswith("llmsim: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for w in _fill(words, files):
        assert w in err, f"{w!r} not in {err!r}"


def test_fifo_as_model_does_not_hang(files):
    """A named pipe with no writer: reading it would block forever (a real process, since a
    hang cannot be caught in-process)."""
    p = subprocess.run([sys.executable, "-m", "llmsim", "predict", "--model", files["fifo"]], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == f"llmsim: error: --model {files['fifo']!r}: is a named pipe, not a regular file\n"


# ------------------------------------------------------------------ fuzzing the flags
NUMBERISH = st.one_of(
    st.integers(min_value=-10**3, max_value=10**4).map(str),
    st.sampled_from(["0", "-1", "1e300", "1e-300", "nan", "inf", "-inf", "1e400", str(10**30), "", " ", "1.5",
                     "0x10", "1_000", "12GiB", "3 parsecs", "100,0,0", "50,50,0", "10,90", "-0,100,0"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
PREDICT_FLAGS = ["--model", "--hardware", "--prompt-len", "--gen-len", "--num-sequences", "--gpu-batch-size",
                 "--num-gpu-batches", "--weights", "--cache", "--activations", "--disk-io", "--dtype"]
PLAN_FLAGS = ["--model", "--hardware", "--prompt-len", "--gen-len", "--num-sequences", "--objective",
              "--max-latency", "--min-throughput", "--gpu-mem", "--cpu-mem", "--disk", "--dtype", "--gpus"]
NAMES = st.sampled_from(["opt-125m", "opt-1.3b", "llama-2-7b", "mixtral-8x7b", "t4-gcp", "cpu-2core", "h100-pcie5",
                         "gpt-9", "/no/such.json", "/dev/null", ".", "..", "~", "-", "--json"])
BOOLS = {"predict": ["--gpu-attention", "--compress-weights", "--compress-cache", "--no-overlap", "--json"],
         "plan": ["--json"]}


def _argv(draw, command: str, flags: list[str]) -> list[str]:
    args = [command]
    for flag in draw(st.lists(st.sampled_from(flags), max_size=4, unique=True)):
        value = draw(NAMES if flag in ("--model", "--hardware", "--dtype", "--objective", "--disk-io")
                     and draw(st.booleans()) else NUMBERISH)
        args += [flag, value]
    args += draw(st.lists(st.sampled_from(BOOLS[command]), max_size=2, unique=True))
    return args


@st.composite
def predict_argv(draw):
    # Valid-looking defaults that fit the short runs below: a small model, short prompts.
    return _argv(draw, "predict", PREDICT_FLAGS)


@st.composite
def plan_argv(draw):
    return _argv(draw, "plan", PLAN_FLAGS)


def _check_outcome(args):
    code, out, err = run_cli(*args)  # an exception escaping here is a traceback: the test fails
    err = without_progress(err)
    assert code in (0, 2), (args, code, err)
    if code == 2:
        assert out == "" and err.count("\n") == 1 and err.startswith("llmsim: error: "), (args, err)
    else:
        assert out.strip(), args
        if "--json" in args:
            json.loads(out)


@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(predict_argv())
def test_fuzz_predict_flags(args):
    _check_outcome(args)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(plan_argv())
def test_fuzz_plan_flags(args):
    _check_outcome(args)
