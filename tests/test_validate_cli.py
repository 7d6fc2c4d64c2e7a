"""`llmsim validate`: one case end to end on the CPU, records, and bad input."""

import json

import pytest

pytest.importorskip("torch")

from helpers import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128,
           "torch_dtype": "float32"}
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d / "config.json")


def test_validate_one_case_and_record(tiny_config, tmp_path):
    rec = tmp_path / "records"
    code, out, err = run_cli("validate", "--model", tiny_config, "--hardware", "cpu-2core", "--prompt-len", "8",
                             "--gen-len", "3", "--weights", "50,0,50", "--disk-io", "cached", "--offload-dir",
                             str(tmp_path), "--record", str(rec), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["case"]["device"] == "cpu" and d["case"]["policy"]["dtype"] == "fp32"
    for key in ("prefill_latency_s", "decode_latency_s", "throughput_tok_s"):
        assert d["measured"][key] > 0 and d["predicted"][key] > 0
        assert d["errors"][key] == pytest.approx(d["predicted"][key] / d["measured"][key] - 1)
    # the realized placement: whole tensors, so not exactly 50/50
    w = d["case"]["policy"]["weights"]
    assert 0 < w["disk_frac"] < 1 and w["gpu_frac"] + w["disk_frac"] == pytest.approx(1)
    comps = {(c["phase"], c["component"]) for c in d["components"]}
    assert ("decode", "weight_load") in comps and ("decode", "matmul") in comps
    recs = list(rec.glob("*.json"))
    assert len(recs) == 1 and (rec / "profiles" / "cpu-2core.yaml").is_file()
    code, out, err = run_cli("validate", "--records", str(rec), "--json")
    assert code in (0, 1)  # a tiny model's error is not what the gate is for; the re-prediction is
    assert json.loads(out)["n"] == 1


@pytest.mark.parametrize("args,message", [
    (["validate", "--model", "opt-125m"], "--hardware: give the profile of this machine"),
    (["validate", "--model", "opt-125m", "--hardware", "cpu-2core", "--device", "tpu"], "--device: 'tpu' is not one of"),
    (["validate", "--model", "opt-125m", "--hardware", "cpu-2core", "--device", "cuda"], "--device cuda: no CUDA device"),
    (["validate", "--suite", "nightly"], "--suite: 'nightly' is not a suite"),
    (["validate", "--records", "/no/such/dir"], "--records: no such directory"),
    (["validate", "--model", "opt-125m", "--hardware", "cpu-2core", "--repeats", "0"], "--repeats must be a positive"),
])
def test_validate_bad_input(args, message):
    code, out, err = run_cli(*args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err
