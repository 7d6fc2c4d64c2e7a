"""`llmsim predict/models/hardware`: JSON contract, every preset on every profile, bad input."""

import pytest

from helpers import run_cli, run_json
from simulator.hardware import list_profiles
from simulator.models import PRESETS

ESTIMATE_FIELDS = {"prefill_latency_s", "decode_latency_s", "total_latency_s", "throughput_tok_s",
                   "decode_throughput_tok_s", "peak_memory_bytes", "breakdown", "bottleneck", "feasible", "reason"}


def test_predict_default_case_json():
    d = run_json("predict", "--headroom", "0")  # the JSON contract (FlexGen's policy fills the T4 to 14.5 of 15 GiB)
    assert ESTIMATE_FIELDS <= set(d)
    assert d["model"] == "opt-30b" and d["hardware"] == "t4-gcp"
    assert d["feasible"] is True and d["reason"] == ""
    assert d["policy"]["weights"] == {"gpu_frac": 0.1, "cpu_frac": 0.9, "disk_frac": 0.0}  # fractions in JSON
    assert d["total_latency_s"] == pytest.approx(d["prefill_latency_s"] + d["decode_latency_s"])
    n = d["num_sequences"] * d["workload"]["gen_len"]
    assert d["throughput_tok_s"] == pytest.approx(n / d["total_latency_s"])
    assert {r["phase"] for r in d["breakdown"]} == {"prefill", "decode"}
    assert set(d["peak_memory_bytes"]) == {"gpu", "cpu", "disk"}


def test_predict_human_output():
    code, out, err = run_cli("predict", "--model", "opt-6.7b", "--hardware", "h100-pcie5")
    assert code == 0, err
    assert "opt-6.7b on h100-pcie5" in out and "throughput" in out and "bottleneck" in out


@pytest.mark.parametrize("hardware", list_profiles())
@pytest.mark.parametrize("model", list(PRESETS))
def test_every_preset_on_every_profile_answers(model, hardware):
    from simulator.hardware import load_profile
    rated = load_profile(hardware).device.dtypes
    dtype = "fp16" if "fp16" in rated else "bf16"  # a TPU rates bf16 only
    d = run_json("predict", "--model", model, "--hardware", hardware, "--weights", "0,100,0",
                 "--gpu-batch-size", "8", "--num-gpu-batches", "2", "--prompt-len", "256", "--gen-len", "16",
                 "--dtype", dtype)
    assert d["total_latency_s"] > 0
    if not d["feasible"]:
        assert "memory: needs" in d["reason"] and "short by" in d["reason"]


def test_infeasible_exits_zero_with_reason():
    code, out, err = run_cli("predict", "--model", "opt-175b", "--weights", "100,0,0", "--json")
    assert code == 0
    assert '"feasible": false' in out and "gpu memory: needs" in out


@pytest.mark.parametrize("args,message", [
    (["predict", "--model", "gpt-9"], "--model: unknown model 'gpt-9'"),
    (["predict", "--hardware", "nope"], "--hardware: unknown profile 'nope'"),
    (["predict", "--hardware", "/no/such.yaml"], "--hardware: no such file"),
    (["predict", "--prompt-len", "-5"], "--prompt-len must be a positive integer, got -5"),
    (["predict", "--weights", "50,40,0"], "--weights: percents must sum to 100"),
    (["predict", "--cache", "abc"], "--cache: expected three percents"),
    (["predict", "--gpu-batch-size", "x"], "'--gpu-batch-size'"),
    (["predict", "--frobnicate"], "No such option: --frobnicate"),
    (["predict", "--dtype", "fp8"], "--dtype: 'fp8' is not one of"),
    (["predict", "--prompt-len", "4000", "--gen-len", "100"], "exceeds opt-30b's max_position_embeddings 2048"),
    (["predict", "--num-sequences", "100"], "--num-sequences 100 is not a multiple of the block size 192"),
    (["predict", "--compress-cache"], "--cpu-attention with --compress-cache is not supported"),
])
def test_bad_input_one_line_exit_2(args, message):
    code, out, err = run_cli(*args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("llmsim: error: ")
    assert message in err


def test_bad_profile_file_one_line(tmp_path):
    import yaml
    from conftest import synthetic_doc
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(synthetic_doc(cpu={"memory_GiB": -4})))
    code, out, err = run_cli("predict", "--hardware", str(p))
    assert code == 2 and out == ""
    assert err == f"llmsim: error: {p}: cpu.memory_GiB must be > 0, got -4\n"


def test_model_from_config_path(tmp_path):
    import json
    cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 2048}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    d = run_json("predict", "--model", str(tmp_path / "config.json"), "--hardware", "h100-pcie5")
    assert d["feasible"] is True


def test_listings():
    models = run_json("models")
    assert [m["name"] for m in models] == list(PRESETS)
    hw = run_json("hardware")
    assert {h["name"] for h in hw} == set(list_profiles())
    code, out, _ = run_cli("models")
    assert code == 0 and "opt-175b" in out
