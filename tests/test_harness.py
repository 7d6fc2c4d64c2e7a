"""Records: written atomically with their profile, re-predicted, gated on error."""

import json

import pytest

from simulator.cost import estimate
from simulator.hardware import DATA_DIR, load_profile
from simulator.models import ModelSpec, get_model
from simulator.policy import Placement, Policy, Workload
from validate.harness import check_records, errors_of, load_records, make_record, repredict, write_record


def _record(tmp_path, name, skew, model="opt-1.3b", device="cuda"):
    m, wl = get_model(model), Workload(128, 8)
    pol = Policy(gpu_batch_size=4, weights=Placement(0.5, 0.5, 0))
    hw = load_profile("h100-pcie5")
    est = estimate(m, hw, wl, pol)
    # "Measured" = predicted / (1 + skew) for throughput: the model is off by `skew`.
    measured = {"throughput_tok_s": est.throughput_tok_s / (1 + skew), "prefill_latency_s": est.prefill_latency_s,
                "decode_latency_s": est.decode_latency_s, "total_latency_s": est.total_latency_s * (1 + skew),
                "decode_throughput_tok_s": est.decode_throughput_tok_s}
    rec = make_record(name, m, wl, pol, device, "h100-pcie5", "profiles/h100-pcie5.yaml", measured, est,
                      {"gpu": "test"}, {"torch": "x"})
    return write_record(rec, tmp_path, DATA_DIR / "h100-pcie5.yaml")


def test_record_round_trip_and_errors(tmp_path):
    path = _record(tmp_path, "a", 0.10)
    assert (tmp_path / "profiles" / "h100-pcie5.yaml").is_file()
    (p, rec), = load_records(tmp_path)
    assert p == path and rec["errors"]["throughput_tok_s"] == pytest.approx(0.10)
    assert ModelSpec.from_dict(rec["case"]["model"]) == get_model("opt-1.3b")
    est = repredict(rec, tmp_path)
    assert est.throughput_tok_s == pytest.approx(rec["predicted"]["throughput_tok_s"], rel=1e-12)
    assert not list(tmp_path.glob("*.tmp"))


def test_check_records_gates(tmp_path):
    for i, e in enumerate((0.01, -0.02, 0.03)):
        _record(tmp_path, f"ok{i}", e)
    res = check_records(tmp_path)
    assert res["n"] == 3 and res["passed"]
    assert res["median_abs_error"] == pytest.approx(0.02) and res["max_abs_error"] == pytest.approx(0.03)
    _record(tmp_path, "bad", 0.20)  # one case beyond 15%
    res = check_records(tmp_path)
    assert not res["passed"] and res["max_abs_error"] == pytest.approx(0.20)


def test_check_records_detects_a_cost_model_change(tmp_path, monkeypatch):
    for i in range(3):
        _record(tmp_path, f"c{i}", 0.0)
    assert check_records(tmp_path)["passed"]
    # A profile edit that makes the link 30% faster changes every prediction of this
    # link-bound case: the stored measurements now disagree and the gate fails.
    prof = tmp_path / "profiles" / "h100-pcie5.yaml"
    text = prof.read_text().replace("h2d_pinned_GBps: 54.3", "h2d_pinned_GBps: 70.6")
    prof.write_text(text)
    res = check_records(tmp_path)
    assert not res["passed"] and res["median_abs_error"] > 0.05


def test_errors_of_handles_missing():
    e = errors_of({"throughput_tok_s": 11.0, "decode_throughput_tok_s": None}, {"throughput_tok_s": 10.0})
    assert e["throughput_tok_s"] == pytest.approx(0.1) and e["decode_throughput_tok_s"] is None


def test_cpu_records_are_gated_at_the_cpu_suite_limits(tmp_path):
    for i, e in enumerate((0.06, -0.07, 0.08)):
        _record(tmp_path / "cpu", f"c{i}", e, device="cpu")
    for i, e in enumerate((0.01, 0.02, -0.03)):
        _record(tmp_path / "gpu", f"g{i}", e)
    res = check_records(tmp_path)
    assert res["n"] == 6 and res["passed"]
    assert res["by_device"]["cpu"]["median_limit"] == 0.10 and res["by_device"]["gpu"]["median_limit"] == 0.05
    _record(tmp_path / "gpu", "g-bad", 0.20)
    res = check_records(tmp_path)  # a GPU record beyond 15% fails the GPU gate; CPU still passes
    assert res["by_device"]["gpu"]["max_abs_error"] == pytest.approx(0.20)
    assert not res["passed"] and res["by_device"]["cpu"]["passed"] and not res["by_device"]["gpu"]["passed"]


def test_bad_records_dir(tmp_path):
    from simulator.errors import LlmsimError
    with pytest.raises(LlmsimError, match="no such directory"):
        check_records(tmp_path / "nope")
    (tmp_path / "x.json").write_text(json.dumps({"schema_version": 9}))
    with pytest.raises(LlmsimError, match="schema_version 9 is not 1"):
        check_records(tmp_path)


def test_committed_records_still_predicted_within_their_gates():
    """The records of real runs in validate/records/ re-predicted with today's cost model:
    a change that breaks accuracy on a real machine fails here (and in CI)."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent / "validate" / "records"
    res = check_records(root)
    assert res["n"] >= 14
    assert res["passed"], {k: (v["median_abs_error"], v["max_abs_error"]) for k, v in res["by_device"].items()}
    # Today's predictions equal those recorded (the profiles are stored beside the records),
    # unless the cost model changed since - which this test exists to surface.
    for r in res["records"]:
        assert r["predicted_throughput_tok_s"] == pytest.approx(r["recorded_predicted_throughput_tok_s"], rel=0.15)
