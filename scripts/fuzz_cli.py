"""Throw bad input at every subcommand and classify what comes back (issue 9, section 5).

    PYTHONPATH=$PWD python scripts/fuzz_cli.py [--only SUBSTRING] [--verbose] [--json]

Every case is a command line that must fail as the conventions say: exit code 2, exactly
one line on stderr that names the file / flag / key and the bad value, nothing on stdout.
Outcomes:

    ok          exit 2, one line, every expected word in it
    traceback   an exception escaped (in-process) or "Traceback" on stderr (subprocess)
    hang        the subprocess ran past its timeout (a FIFO, a device file, or a suite run
                that ignored the flags it was given)
    wrong-code  another exit code (0, 1, 130...)
    noisy       exit 2 but stdout not empty or stderr not exactly one line
    unnamed     exit 2, one line, but it misses the file, flag, key or value

Cases that can hang, read a device or need a fresh process run as subprocesses with a
timeout; the rest in-process through ``tests/helpers.run_cli``. The script prints one line
per failing case (all with --verbose) and a count per class and outcome.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import yaml  # noqa: E402

from simulator.hardware import DATA_DIR  # noqa: E402


@dataclass
class Case:
    klass: str
    args: list[str]
    expect: list[str] = field(default_factory=list)  # words the one line must contain
    subprocess: bool = False
    timeout_s: float = 20.0


TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128,
        "torch_dtype": "float32"}
MIXTRAL = {**TINY, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}
OPT = {"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
       "vocab_size": 256, "max_position_embeddings": 128}
SHORT = ("--prompt-len", "8", "--gen-len", "4")  # within the tiny configs' 128 positions
BAD_VALUES = {"list": [], "string": "abc", "null": None, "nan": float("nan"), "zero": 0, "negative": -4,
              "float": 64.5, "bool": True, "huge": 10**30, "map": {}}


def _write(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return str(path)


def _sparse(path: Path, nbytes: int) -> str:
    """A file of ``nbytes`` that takes no disk space (a hole), to test size limits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(nbytes)
    return str(path)


def build_cases(tmp: Path) -> list[Case]:
    cases: list[Case] = []
    add = lambda klass, args, expect=(), **kw: cases.append(Case(klass, list(args), list(expect), **kw))  # noqa: E731

    # ------------------------------------------------ file names and special files
    long_name = "x" * 300
    for cmd in ("predict", "plan"):
        add("name too long", [cmd, "--model", long_name + ".json"], ["--model", "too long"])
        add("name too long", [cmd, "--model", long_name], ["--model"])
        add("name too long", [cmd, "--hardware", long_name + ".yaml"], ["--hardware", "too long"])
        add("name too long", [cmd, "--hardware", long_name], ["--hardware"])
        add("name too long", [cmd, "--model", "/".join(["abcdefgh"] * 600) + "/config.json"], ["--model", "too long"])
    add("name too long", ["plan", "--report", str(tmp / long_name)], ["--report", "too long"])
    add("name too long", ["validate", "--records", str(tmp / long_name)], ["--records", "too long"])
    add("name too long", ["profile", "--out", str(tmp / (long_name + ".yaml"))], ["--out", "too long"])
    add("name too long", ["validate", "--model", str(tmp / "tiny.json"), "--hardware", "cpu-2core",
                          "--record", str(tmp / long_name)], ["--record", "too long"])

    fifo_json, fifo_yaml = tmp / "pipe.json", tmp / "pipe.yaml"
    os.mkfifo(fifo_json)
    os.mkfifo(fifo_yaml)
    (tmp / "dirmodel").mkdir()
    (tmp / "dir.yaml").mkdir()
    for cmd in ("predict", "plan"):
        add("special file", [cmd, "--model", str(fifo_json)], ["--model", str(fifo_json), "not a regular file"],
            subprocess=True, timeout_s=15)
        add("special file", [cmd, "--hardware", str(fifo_yaml)], ["--hardware", str(fifo_yaml), "not a regular file"],
            subprocess=True, timeout_s=15)
    add("special file", ["predict", "--model", "/dev/zero"], ["--model", "/dev/zero"], subprocess=True, timeout_s=15)
    add("special file", ["predict", "--model", "/dev/null"], ["--model", "/dev/null"], subprocess=True)
    add("special file", ["predict", "--hardware", "/dev/zero"], ["--hardware", "/dev/zero"], subprocess=True,
        timeout_s=15)
    add("special file", ["predict", "--model", str(tmp / "dirmodel")], ["--model", "dirmodel"])
    add("special file", ["predict", "--hardware", str(tmp / "dir.yaml")], ["--hardware", "dir.yaml"])
    add("special file", ["predict", "--model", str(tmp)], ["--model"])

    # ------------------------------------------------ config.json contents
    bad_json = {
        "binary": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 40, "empty": "", "list": "[1, 2]", "string": '"opt"',
        "null": "null", "truncated": '{"model_type": "llama", "hidden_', "latin1": '{"name": "caf\xe9"}'.encode("latin-1"),
    }
    for what, data in bad_json.items():
        p = _write(tmp / "cfg" / f"{what}.json", data)
        add("config.json unreadable", ["predict", "--model", p], [p])
    p = _sparse(tmp / "cfg" / "huge.json", 200 * 2**20)
    add("config.json unreadable", ["predict", "--model", p], [p, "too big"])
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                "vocab_size", "max_position_embeddings", "head_dim", "rope_theta", "rms_norm_eps"):
        for what in ("list", "string", "null", "nan", "zero", "negative", "float", "bool", "huge"):
            if key in ("num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta",
                       "rms_norm_eps") and what == "null":
                continue  # optional keys: null means "not given" (the default), as in transformers
            if key in ("rope_theta", "rms_norm_eps") and what in ("float", "huge"):
                continue  # legitimate values
            cfg = {**TINY, key: BAD_VALUES[what]}
            p = _write(tmp / "cfg" / f"{key}-{what}.json", json.dumps(cfg))
            add("config.json field", ["predict", "--model", p, "--hardware", "cpu-2core", *SHORT], [p, key])
    for key in ("num_local_experts", "num_experts_per_tok"):
        for what in ("list", "string", "zero", "float"):
            p = _write(tmp / "cfg" / f"{key}-{what}.json", json.dumps({**MIXTRAL, key: BAD_VALUES[what]}))
            add("config.json field", ["predict", "--model", p, "--hardware", "cpu-2core", *SHORT], [p, key])
    for key, what in (("ffn_dim", "string"), ("ffn_dim", "zero"), ("num_attention_heads", "zero"),
                      ("word_embed_proj_dim", "list"), ("do_layer_norm_before", "string")):
        p = _write(tmp / "cfg" / f"opt-{key}-{what}.json", json.dumps({**OPT, key: BAD_VALUES[what]}))
        add("config.json field", ["predict", "--model", p, "--hardware", "cpu-2core", *SHORT], [p, key])
    for key, value in (("model_type", ["llama"]), ("model_type", None), ("torch_dtype", ["float16"]),
                       ("torch_dtype", "int8"), ("tie_word_embeddings", "no"), ("num_attention_heads", 3),
                       ("num_key_value_heads", 3), ("hidden_size", 2), ("model_type", "gpt2")):
        p = _write(tmp / "cfg" / f"{key}-{json.dumps(value)}.json".replace('"', "").replace("[", "").replace("]", ""),
                   json.dumps({**TINY, key: value}))
        add("config.json field", ["predict", "--model", p, "--hardware", "cpu-2core", *SHORT], [p, key])
    p = _write(tmp / "cfg" / "missing.json", json.dumps({k: v for k, v in TINY.items() if k != "vocab_size"}))
    add("config.json field", ["predict", "--model", p, *SHORT], [p, "vocab_size"])
    p = _write(tmp / "cfg" / "dupe.json", '{"model_type": "llama", "hidden_size": 64, "hidden_size": 128, '
               + json.dumps({k: v for k, v in TINY.items() if k not in ("model_type", "hidden_size")})[1:])
    add("duplicate key", ["predict", "--model", p, *SHORT], [p, "hidden_size"])

    # ------------------------------------------------ profiles (YAML)
    base = yaml.safe_load((DATA_DIR / "t4-gcp.yaml").read_text())
    base_text = (DATA_DIR / "t4-gcp.yaml").read_text()

    def prof(name, mutate=None, text=None):
        if text is None:
            doc = json.loads(json.dumps(base))
            mutate(doc)
            text = yaml.safe_dump(doc)
        return _write(tmp / "prof" / f"{name}.yaml", text)

    def setkey(section, key, value):
        return lambda d: d[section].__setitem__(key, value)

    for section, key in (("disk", "capacity_GiB"), ("cpu", "memory_GiB"), ("gpu", "memory_GiB"),
                         ("gpu", "hbm_GBps"), ("links", "h2d_pinned_GBps"), ("gpu", "fp16_TFLOPs")):
        p = prof(f"{section}-{key}-1e300", setkey(section, key, 1e300))
        add("absurd number", ["plan", "--hardware", p], [p, f"{section}.{key}"])
    p = prof("hbm-tiny", setkey("gpu", "hbm_GBps", 1e-300))
    add("absurd number", ["plan", "--hardware", p], [p, "gpu.hbm_GBps"])
    p = prof("int-overflow", text=re.sub(r"(?m)^  capacity_GiB: .*$", "  capacity_GiB: 1" + "0" * 400, base_text))
    add("absurd number", ["predict", "--hardware", p], [p, "disk.capacity_GiB"])
    p = prof("count-huge", setkey("gpu", "count", 10**30))
    add("absurd number", ["plan", "--hardware", p], [p, "gpu.count"])
    p = prof("cores-huge", setkey("cpu", "cores", 10**30))
    add("absurd number", ["predict", "--hardware", p], [p, "cpu.cores"])
    for what, value in (("list", [1]), ("string", "12"), ("null", None), ("bool", True), ("map", {"a": 1})):
        p = prof(f"hbm-{what}", setkey("gpu", "hbm_GBps", value))
        add("profile field", ["predict", "--hardware", p], [p, "gpu.hbm_GBps"])
    for text_name, text in (("nan", re.sub(r"(?m)^  hbm_GBps: .*$", "  hbm_GBps: .nan", base_text)),
                            ("inf", re.sub(r"(?m)^  hbm_GBps: .*$", "  hbm_GBps: .inf", base_text))):
        p = prof(f"hbm-{text_name}", text=text)
        add("profile field", ["predict", "--hardware", p], [p, "gpu.hbm_GBps"])
    p = prof("key-sources-list", lambda d: d["metadata"].__setitem__("key_sources", ["gpu.hbm_GBps"]))
    add("profile field", ["predict", "--hardware", p], [p, "metadata.key_sources"])
    p = prof("table-bad", lambda d: d["gpu"].__setitem__("matmul_table", [{"dtype": "fp16", "k": 64, "n": 64,
                                                                           "m": [1, 2], "time_us": [1, "x"]}]))
    add("profile field", ["predict", "--hardware", p], [p, "matmul_table"])
    p = prof("table-huge-k", lambda d: d["gpu"].__setitem__("matmul_table", [{"dtype": "fp16", "k": 10**400, "n": 64,
                                                                              "m": [1, 2], "time_us": [1, 2]}]))
    add("profile field", ["predict", "--hardware", p], [p, "matmul_table"])
    p = prof("name-list", lambda d: d.__setitem__("name", ["a"]))
    add("profile field", ["predict", "--hardware", p], [p, "name"])
    p = prof("source-list", setkey("metadata", "source", ["measured"]))
    add("profile field", ["predict", "--hardware", p], [p, "metadata.source"])
    p = prof("link-list", lambda d: d["interconnect"].__setitem__("intra_node_link", ["nvlink"])
             if "interconnect" in d else d.__setitem__("interconnect", {"intra_node_link": ["nvlink"]}))
    add("profile field", ["predict", "--hardware", p], [p, "intra_node_link"])
    p = prof("version-list", lambda d: d.__setitem__("schema_version", [1]))
    add("profile field", ["predict", "--hardware", p], [p, "schema_version"])
    p = prof("dupe-top", text=base_text + "\nname: other\n")
    add("duplicate key", ["predict", "--hardware", p], [p, "name"])
    p = prof("dupe-inner", text=re.sub(r"(?m)^(  hbm_GBps: .*)$", r"\1\n  hbm_GBps: 3200", base_text))
    add("duplicate key", ["predict", "--hardware", p], [p, "hbm_GBps"])
    p = prof("anchor-merge", text=base_text.replace("gpu:\n", "gpu: &g\n", 1) + "interconnect:\n  <<: *g\n")
    add("profile field", ["predict", "--hardware", p], [p])
    for what, data in (("binary", b"\x00\x01\x02\xff" * 100), ("empty", ""), ("list", "- 1\n- 2\n"),
                       ("tag", "!!python/object:os.system {}\n"), ("latin1", "name: caf\xe9\n".encode("latin-1")),
                       ("tabs", "schema_version: 1\n\tname: x\n")):
        p = _write(tmp / "prof" / f"{what}.yaml", data)
        add("profile unreadable", ["predict", "--hardware", p], [p])
    p = _sparse(tmp / "prof" / "huge.yaml", 200 * 2**20)
    add("profile unreadable", ["predict", "--hardware", p], [p, "too big"])

    # ------------------------------------------------ flags
    for cmd in ("predict", "plan"):
        for flag, value in (("--prompt-len", "0"), ("--prompt-len", "-3"), ("--prompt-len", str(10**30)),
                            ("--gen-len", "0"), ("--gen-len", str(10**20)), ("--num-sequences", "0"),
                            ("--num-sequences", str(10**30)), ("--prompt-len", "1.5"), ("--gen-len", "abc")):
            add("bad flag value", [cmd, flag, value], [flag, value])
        add("bad flag value", [cmd, "--prompt-len", "4000", "--gen-len", "100"], ["--prompt-len", "4100"])
    for flag, value in (("--gpu-batch-size", "0"), ("--gpu-batch-size", str(10**30)), ("--num-gpu-batches", "-1"),
                        ("--num-gpu-batches", str(10**30)), ("--weights", "nan,nan,nan"), ("--weights", "1e400,0,0"),
                        ("--weights", "50,50"), ("--weights", ""), ("--cache", "-0,100,0,"),
                        ("--disk-io", "o_direct"), ("--dtype", "FP16"),
                        ("--dtype", "")):
        add("bad flag value", ["predict", flag, value], [flag])
    for flag, value in (("--gpu-mem", "1e300"), ("--gpu-mem", "1e400"), ("--cpu-mem", "1e300TiB"), ("--disk", "0"),
                        ("--disk", "nan"), ("--disk", "-5"), ("--gpu-mem", "12 parsecs"), ("--gpu-mem", "1e-300"),
                        ("--max-latency", "nan"), ("--max-latency", "inf"), ("--max-latency", "-1"),
                        ("--min-throughput", "0"), ("--min-throughput", "1e400"), ("--objective", "speed"),
                        ("--gpus", "0"), ("--gpus", "-1"), ("--gpus", "100000"), ("--gpus", str(10**30)),
                        ("--dtype", "int8"), ("--report", "/dev/null"), ("--report", "/proc/version"),
                        ("--report", str(tmp / "tiny.json") + "/sub")):
        add("bad flag value", ["plan", flag, value], [flag])
    tiny = _write(tmp / "tiny.json", json.dumps(TINY))
    vbase = ["validate", "--model", tiny, "--hardware", "cpu-2core", "--prompt-len", "4", "--gen-len", "2",
             "--gpu-batch-size", "1", "--num-gpu-batches", "1"]
    for flag, value in (("--threads", "0"), ("--threads", "-2"), ("--threads", str(10**30)), ("--repeats", "0"),
                        ("--repeats", "-1"), ("--device", "cuda:x"), ("--device", "CPU"), ("--device", "cuda:0"),
                        ("--offload-dir", "/dev/null"), ("--offload-dir", str(tmp / "tiny.json")),
                        ("--record", "/proc/version"), ("--record", str(tmp / "tiny.json"))):
        add("bad flag value", vbase + [flag, value], [flag])
    for flag, value in (("--threads", "0"), ("--threads", "-1"), ("--out", str(tmp)), ("--out", "x.txt"),
                        ("--out", "/proc/nope/x.yaml"), ("--disk-dir", "/dev/null"), ("--disk-dir", "/no/such"),
                        ("--device", "tpu"), ("--device", "cuda:x")):
        add("bad flag value", ["profile", "--quick", "--out", str(tmp / "p.yaml")] + [flag, value], [flag])
    # flags that conflict or would be ignored
    recs = tmp / "records-ok"
    recs.mkdir()
    add("ignored flag", ["validate", "--records", str(recs), "--suite", "ci"], ["--records", "--suite"])
    add("ignored flag", ["validate", "--records", str(recs), "--plan"], ["--records", "--plan"])
    add("ignored flag", ["validate", "--records", str(recs), "--model", "opt-125m"], ["--records", "--model"])
    add("ignored flag", ["validate", "--records", str(recs), "--record", str(tmp / "r2")], ["--records", "--record"])
    # In a process with a timeout: a CLI that ignores the flag runs the whole CPU suite (minutes).
    for flag, value in (("--model", "opt-125m"), ("--weights", "0,100,0"), ("--hardware", "cpu-2core")):
        add("ignored flag", ["validate", "--suite", "ci", flag, value], ["--suite", flag], subprocess=True,
            timeout_s=30)
    add("ignored flag", ["validate", "--plan", "--model", tiny, "--hardware", "cpu-2core", "--weights", "0,100,0"],
        ["--plan", "--weights"])
    add("bad flag value", ["models", "extra"], ["extra"])
    add("bad flag value", ["hardware", "--json", "--bogus"], ["--bogus"])
    add("bad flag value", ["nosuchcommand"], ["nosuchcommand"])

    # ------------------------------------------------ serving: simulate and capacity
    # A valid run each (a later flag overrides an earlier one: click keeps the last).
    sim = ["simulate", "--model", "opt-1.3b", "--hardware", "a100-80g-sxm", "--num-requests", "20", "--rate", "5",
           "--prompt-len", "64", "--output-len", "8"]
    cap = ["capacity", "--model", "opt-1.3b", "--hardware", "a100-80g-sxm", "--num-requests", "20",
           "--ttft-p99", "1s", "--prompt-len", "64", "--output-len", "8"]
    trace_bin = _write(tmp / "trace" / "bin.csv", b"\x00\xff" * 50)
    trace_latin = _write(tmp / "trace" / "latin.jsonl", '{"a": "caf\xe9"}\n'.encode("latin-1"))
    trace_dupe = _write(tmp / "trace" / "dupe.jsonl", '{"arrival_s": 0, "arrival_s": 1, "prompt_tokens": 8, '
                        '"output_tokens": 4}\n')
    trace_nan = _write(tmp / "trace" / "nan.csv", "arrival_s,prompt_tokens,output_tokens\nnan,8,4\n")
    trace_huge = _write(tmp / "trace" / "huge.csv", "arrival_s,prompt_tokens,output_tokens\n0," + "9" * 400 + ",4\n")
    fifo_csv = tmp / "pipe.csv"
    os.mkfifo(fifo_csv)
    for flag, value in (("--trace", str(fifo_csv)), ("--trace", trace_bin), ("--trace", trace_latin),
                        ("--trace", trace_dupe), ("--trace", trace_nan), ("--trace", trace_huge),
                        ("--trace", str(tmp / (long_name + ".csv"))), ("--trace", str(tmp)),
                        ("--rate", "nan"), ("--rate", "0"), ("--rate", "-1"),
                        ("--num-requests", "0"), ("--num-requests", str(10**30)), ("--concurrency", "0"),
                        ("--concurrency", str(10**30)), ("--block-size", "0"), ("--block-size", str(10**30)),
                        ("--gpu-memory-utilization", "2"), ("--gpu-memory-utilization", "nan"),
                        ("--swap-space", "1e300"), ("--ttft-slo", "soon"), ("--tpot-slo", "nan"),
                        ("--seed", "-1"), ("--out", "/dev/null"),
                        ("--out", str(tmp / long_name)), ("--weights-cpu", "150"), ("--weights-cpu", "nan"),
                        ("--think-time", "-1"), ("--think-time", "nan"), ("--burstiness", "0"),
                        ("--burstiness", "nan"), ("--max-num-seqs", "0"), ("--max-num-batched-tokens", "-1"),
                        ("--num-gpu-blocks", "0"), ("--tp", "0"), ("--pp", str(10**30)), ("--replicas", "0"),
                        ("--gpus", "0"), ("--router", "random"), ("--preemption", "drop"),
                        ("--length-dist", "lognormal:nan"), ("--length-dist", "uniform:-1"),
                        ("--prompt-len", "0"), ("--output-len", str(10**30)), ("--engine", "nope"),
                        ("--dtype", "int4")):
        base = [a for a in sim if a not in ("--prompt-len", "64", "--output-len", "8")] if flag == "--trace" else sim
        add("serving flag", base + [flag, value], [flag], subprocess=True, timeout_s=60)
    # Accepted on purpose: --rate 1e300 (every request at once, the limit of a rate), --seed
    # 10**30 (numpy takes any non-negative seed), --hardware a,,b (the empty name is skipped).
    for flag, value in (("--hardware", str(fifo_yaml)),
                        ("--gpu-hour-price", "free"), ("--gpu-hour-price", "nan"), ("--gpu-hour-price", "1,2,3"),
                        ("--ttft-p99", "nan"), ("--tpot-p99", "-5ms"), ("--rate", "inf"), ("--rate", "0"),
                        ("--num-requests", str(10**30)), ("--trace", trace_bin), ("--block-size", "0")):
        base = [a for a in cap if a not in ("--prompt-len", "64", "--output-len", "8")] if flag == "--trace" else cap
        add("serving flag", base + [flag, value], [flag], subprocess=True, timeout_s=60)

    # ------------------------------------------------ records
    rec_src = sorted((ROOT / "validate" / "records" / "cpu-2core").glob("*.json"))[0]
    good = json.loads(rec_src.read_text())
    prof_src = ROOT / "validate" / "records" / "cpu-2core" / "profiles"

    def rdir(name, files: dict, with_profiles=True):
        d = tmp / "recs" / name
        d.mkdir(parents=True)
        if with_profiles:
            (d / "profiles").mkdir()
            for f in prof_src.glob("*.yaml"):
                (d / "profiles" / f.name).write_bytes(f.read_bytes())
        for fname, data in files.items():
            _write(d / fname, data if isinstance(data, (str, bytes)) else json.dumps(data))
        return str(d)

    def mutated(path_keys, value=..., delete=False):
        rec = json.loads(json.dumps(good))
        node = rec
        for k in path_keys[:-1]:
            node = node[k]
        if delete:
            del node[path_keys[-1]]
        else:
            node[path_keys[-1]] = value
        return rec

    add("records", ["validate", "--records", rdir("empty", {}, with_profiles=False)], ["no records", "empty"])
    add("records", ["validate", "--records", rdir("only-profiles", {})], ["no records", "only-profiles"])
    add("records", ["validate", "--records", str(rec_src)], ["--records", rec_src.name])
    for name, data in (("binary", b"\x00\xff\xfe" * 50), ("malformed", '{"schema_version": 1,'), ("empty", ""),
                       ("list", "[]"), ("latin1", '{"a": "caf\xe9"}'.encode("latin-1")), ("nan-top", "NaN")):
        add("records", ["validate", "--records", rdir(f"r-{name}", {f"{name}.json": data})], [f"{name}.json"])
    for keys, value, delete in ((["case"], None, True), (["case", "model"], None, True),
                                (["case", "model", "hidden_size"], "big", False), (["case", "model"], [], False),
                                (["case", "workload"], None, True), (["case", "workload", "prompt_len"], None, True),
                                (["case", "workload", "gen_len"], "8", False), (["case", "policy"], "fast", False),
                                (["case", "policy", "weights"], [1, 0, 0], False),
                                (["case", "policy", "weights", "gpu_frac"], "1", False),
                                (["case", "name"], None, True), (["case", "name"], 7, False),
                                (["profile"], None, True), (["profile", "file"], None, True),
                                (["profile", "file"], 5, False), (["profile", "file"], "profiles/none.yaml", False),
                                (["profile", "file"], "/etc/passwd", False), (["profile", "name"], None, True),
                                (["measured"], None, True), (["measured"], [], False),
                                (["measured", "throughput_tok_s"], None, True),
                                (["measured", "throughput_tok_s"], "fast", False),
                                (["measured", "throughput_tok_s"], 0, False),
                                (["measured", "throughput_tok_s"], -3.0, False),
                                (["predicted"], None, True), (["predicted", "throughput_tok_s"], "x", False),
                                (["schema_version"], 2, False), (["schema_version"], None, True)):
        label = ".".join(keys) + ("-deleted" if delete else f"-{json.dumps(value)}")
        fname = "rec-" + label.replace("/", "_").replace('"', "").replace("[", "").replace("]", "").replace(" ", "") + ".json"
        add("records", ["validate", "--records", rdir(f"k-{label}".replace("/", "_"), {fname: mutated(keys, value, delete)})],
            [fname, keys[-1] if delete or keys[-1] != "file" else "profile.file"])
    d = tmp / "recs" / "fifo"
    d.mkdir(parents=True)
    os.mkfifo(d / "x.json")
    add("records", ["validate", "--records", str(d)], ["x.json", "not a regular file"], subprocess=True, timeout_s=20)
    return cases


# ------------------------------------------------------------------ running
def run_inprocess(args: list[str]) -> tuple[int | None, str, str, str | None]:
    from helpers import run_cli
    try:
        code, out, err = run_cli(*args)
        return code, out, err, None
    except BaseException as e:  # noqa: BLE001  (what we are hunting)
        return None, "", "", "".join(traceback.format_exception_only(type(e), e)).strip()


def _limit_memory():
    """At most 4 GiB of address space: a command that reads /dev/zero must not take the machine down."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


def run_subprocess(args: list[str], timeout_s: float) -> tuple[int | None, str, str, str | None]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        p = subprocess.run([sys.executable, "-m", "llmsim", *args], capture_output=True, text=True, timeout=timeout_s,
                           env=env, cwd=tempfile.gettempdir(), stdin=subprocess.DEVNULL, errors="replace",
                           preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        return None, "", "", "hang"
    if "Traceback (most recent call last)" in p.stderr:
        return p.returncode, p.stdout, p.stderr, p.stderr.strip().splitlines()[-1]
    return p.returncode, p.stdout, p.stderr, None


def classify(case: Case, code, out, err, exc) -> str:
    if exc == "hang":
        return "hang"
    if exc is not None:
        return "traceback"
    if code != 2:
        return "wrong-code"
    if out or err.count("\n") != 1 or not err.endswith("\n"):
        return "noisy"
    if any(w.lower() not in err.lower() for w in case.expect):
        return "unnamed"
    return "ok"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run only cases whose class or arguments contain this text")
    ap.add_argument("--verbose", action="store_true", help="print every case, not only the failing ones")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="llmsim-fuzz-") as t:
        tmp = Path(t)
        cases = build_cases(tmp)
        if a.only:
            cases = [c for c in cases if a.only in c.klass or any(a.only in x for x in c.args)]
        cwd = os.getcwd()
        os.chdir(tmp)  # profile / validate write their defaults into the current directory
        try:
            for c in cases:
                sink = io.StringIO()
                with contextlib.redirect_stderr(sink):
                    res = run_subprocess(c.args, c.timeout_s) if c.subprocess else run_inprocess(c.args)
                outcome = classify(c, *res)
                code, out, err, exc = res
                short = [x if len(x) < 60 else x[:25] + "..." + x[-25:] for x in c.args]
                line = (exc or err.strip().replace("\n", " | "))[:300]
                results.append({"class": c.klass, "args": short, "outcome": outcome, "code": code, "message": line})
                if a.verbose or outcome != "ok":
                    print(f"{outcome:10s} [{c.klass}] {' '.join(short)}\n           -> {code}: {line}", flush=True)
        finally:
            os.chdir(cwd)
    table = collections.Counter((r["class"], r["outcome"]) for r in results)
    if a.json:
        print(json.dumps(results, indent=2))
    klasses = sorted({r["class"] for r in results})
    outcomes = ("ok", "traceback", "hang", "wrong-code", "noisy", "unnamed")
    print(f"\n{'class':24s} " + " ".join(f"{o:>10s}" for o in outcomes))
    for k in klasses:
        print(f"{k:24s} " + " ".join(f"{table[(k, o)]:10d}" for o in outcomes))
    tot = collections.Counter(r["outcome"] for r in results)
    print(f"{'all (' + str(len(results)) + ' cases)':24s} " + " ".join(f"{tot[o]:10d}" for o in outcomes))
    return 0 if tot["ok"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
