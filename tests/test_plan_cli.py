"""`llmsim plan`: JSON contract, the report on disk, capacity overrides and bad input."""

import json
import subprocess
import sys

import pytest

from helpers import run_cli, run_json


def test_plan_json_subprocess_is_pure_json():
    # A real process: solver banners printed from C++ would land on stdout here.
    out = subprocess.run([sys.executable, "-m", "llmsim", "plan", "--json"], capture_output=True, text=True,
                         check=True).stdout
    d = json.loads(out)
    assert {"policy", "estimate", "engine", "engines", "search_seconds", "candidates_evaluated"} <= set(d)
    p = d["policy"]
    assert {"gpu_batch_size", "num_gpu_batches", "weights", "cache", "activations", "cpu_attention",
            "compress_weights", "compress_cache", "tp", "pp", "dp"} <= set(p)
    for k in ("weights", "cache", "activations"):
        assert sum(p[k].values()) == pytest.approx(1.0)
        assert all(0.0 <= v <= 1.0 for v in p[k].values())
    assert d["estimate"]["feasible"] is True
    assert d["model"] == "opt-30b" and d["hardware"] == "t4-gcp"
    assert d["workload"]["prompt_len"] == 512 and d["workload"]["gen_len"] == 32
    assert d["engine"] == "llmsim" and set(d["engines"]) == {"flexgen", "accelerate", "zero-inference"}
    for e in d["engines"].values():
        assert e["feasible"] == (e["throughput_tok_s"] is not None) and (e["feasible"] or e["reason"])


def test_plan_report_files(tmp_path):
    out = tmp_path / "rep"
    code, stdout, err = run_cli("plan", "--model", "opt-13b", "--report", str(out))
    assert code == 0, err
    assert "recommended:" in stdout and "report:" in stdout
    names = {p.name for p in out.iterdir()}
    assert names == {"report.md", "report.html", "memory.png", "components.png", "pareto.png", "configs.csv"}
    for png in ("memory.png", "components.png", "pareto.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3 and 'src="memory.png"' not in html
    md = (out / "report.md").read_text()
    assert "## Recommendation" in md and "## The best plan of each engine on this machine" in md
    assert "![Throughput vs latency](pareto.png)" in md and "| flexgen |" in md


def test_capacity_overrides_reach_the_estimate():
    d = run_json("plan", "--model", "opt-6.7b", "--gpu-mem", "8", "--cpu-mem", "64GiB", "--disk", "100",
                 "--headroom", "0")  # the overrides themselves (the headroom's margin: tests/test_report.py)
    cap = d["estimate"]["capacity_bytes"]
    assert cap["gpu"] == 8 * 2**30 and cap["cpu"] == 64 * 2**30 and cap["disk"] == 100 * 2**30
    assert d["estimate"]["peak_memory_bytes"]["gpu"] <= 8 * 2**30


def test_plan_latency_objective_and_bound():
    thr = run_json("plan", "--model", "opt-6.7b", "--prompt-len", "128", "--gen-len", "8")
    lat = run_json("plan", "--model", "opt-6.7b", "--prompt-len", "128", "--gen-len", "8", "--objective", "latency")
    assert lat["estimate"]["total_latency_s"] < thr["estimate"]["total_latency_s"]
    bounded = run_json("plan", "--model", "opt-6.7b", "--prompt-len", "128", "--gen-len", "8",
                       "--max-latency", str(lat["estimate"]["total_latency_s"] * 1.5))
    assert bounded["estimate"]["total_latency_s"] <= lat["estimate"]["total_latency_s"] * 1.5 * (1 + 1e-9)


def test_infeasible_plan_exits_zero_with_reason():
    d = run_json("plan", "--model", "opt-175b", "--gpu-mem", "16", "--cpu-mem", "30", "--disk", "30")
    assert d["feasible"] is False and d["policy"] is None
    assert d["reason"].startswith("nothing fits")


@pytest.mark.parametrize("args,message", [
    (["plan", "--objective", "speed"], "--objective: 'speed' is not one of throughput, latency"),
    (["plan", "--gpu-mem", "-3"], "--gpu-mem"),
    (["plan", "--gpu-mem", "lots"], "--gpu-mem: 'lots' is not a size"),
    (["plan", "--max-latency", "0"], "--max-latency must be a positive number"),
    (["plan", "--min-throughput", "-1"], "--min-throughput must be a positive number"),
    (["plan", "--dtype", "int3"], "--dtype: 'int3' is not one of"),
    (["plan", "--hardware", "t4-gcp", "--dtype", "bf16"],
     "--dtype bf16: the t4-gcp profile has no gpu.bf16_TFLOPs (allowed here: fp16, fp32)"),
    (["plan", "--report", "/proc/llmsim-report"], "--report '/proc/llmsim-report': cannot write"),
    (["plan", "--num-sequences", "0"], "--num-sequences must be a positive integer, got 0"),
])
def test_plan_bad_input(args, message):
    code, out, err = run_cli(*args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_plan_chooses_the_dtype_and_says_why():
    d = run_json("plan", "--model", "opt-125m", "--hardware", "cpu-2core")
    assert d["dtype"] == d["policy"]["dtype"] == "bf16"
    assert d["dtype_choice"]["searched"] == ["fp16", "bf16", "fp32"] and d["dtype_choice"]["forced"] is False
    assert d["dtype_choice"]["reason"].startswith("dtype bf16, the best of fp16, bf16, fp32 here: ")
    # The other engines plan the same case, each among the dtypes it runs.
    assert set(d["engines"]) == {"flexgen", "accelerate", "zero-inference"}
    forced = run_json("plan", "--model", "opt-125m", "--hardware", "cpu-2core", "--dtype", "fp16")
    assert forced["dtype"] == "fp16" and forced["dtype_choice"]["forced"] is True
    assert forced["dtype_choice"]["reason"].startswith("dtype fp16 (set by --dtype): layer GEMMs at batch ")
    assert d["estimate"]["throughput_tok_s"] > 2 * forced["estimate"]["throughput_tok_s"]
    code, out, err = run_cli("plan", "--model", "opt-125m", "--hardware", "cpu-2core")
    assert code == 0, err
    assert "dtype bf16, the best of fp16, bf16, fp32 here" in " ".join(out.split())
