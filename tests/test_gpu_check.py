"""scripts/gpu_check.sh --dry-run: the whole GPU check on the CPU (the torch.cuda stand-in,
two-layer models, short budgets), so the script is known to work before a GPU machine is
at hand; and its pieces (profile naming, budgets, the cases' deadline) on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from simulator.hardware import load_profile  # noqa: E402
from llmsim import gpu_check  # noqa: E402
from validate import gpu_suite, harness  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = {"env.txt", "check.json", "bench.json", "records.tar", "summary.json", "run.log"}


def _dry_run(tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path, dict]:
    out = tmp / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--work", str(tmp / "work"),
                        *extra], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return p, out, summary


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    return _dry_run(tmp_path_factory.mktemp("gpu-check"))


@pytest.mark.slow
def test_dry_run_runs_every_step_and_returns_at_most_8_files(dry):
    p, out, summary = dry
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    steps = {r["name"]: r for r in summary["steps"]}
    assert list(steps) == [*gpu_check.STEPS, "pack"]
    assert {r["status"] for r in steps.values()} == {"ok"}, summary["steps"]
    assert all(0 < r["seconds"] <= r["budget_s"] for r in summary["steps"] if r["name"] != "pack")
    files = sorted(x.name for x in out.iterdir())
    assert len(files) <= gpu_check.MAX_FILES
    assert set(files) == OUTPUTS | {"fake-gpu.yaml"} and summary["files"] == files
    assert not (tmp := out.parent / "work").exists(), f"scratch folder {tmp} left behind"
    assert summary["profile"] == {**summary["profile"], "name": "fake-gpu", "fallback": None}
    # The printed summary (what the device tool returns) names every step and case.
    for name in [*gpu_check.STEPS, *(c.name for c in gpu_suite.cases(dry_run=True))]:
        assert name in p.stdout


@pytest.mark.slow
def test_dry_run_profile_is_named_after_the_gpu_and_loads(dry):
    _, out, _ = dry
    hw = load_profile(out / "fake-gpu.yaml")
    assert hw.name == "fake-gpu" and hw.source == "measured" and not hw.device_is_host
    assert hw.device.name == "Fake GPU"
    import yaml
    doc = yaml.safe_load((out / "fake-gpu.yaml").read_text())
    meta = doc["metadata"]
    assert meta["source"] == "measured" and meta["date"] and meta["method"] and meta["versions"]["torch"]
    assert "scripts/gpu_check.sh --dry-run" in meta["notes"]
    # Focused on the suite's models: their fp16 GEMMs at exactly the m values the cases run.
    suite = gpu_suite.cases(dry_run=True)
    m_values = sorted({c.policy.gpu_batch_size for c in suite} |
                      {c.policy.gpu_batch_size * c.workload.prompt_len for c in suite})
    layer_rows = [r for r in doc["gpu"]["matmul_table"] if r["m"] == m_values]
    assert layer_rows and {r["dtype"] for r in doc["gpu"]["matmul_table"]} == {"fp16"}
    assert "matmul_table" not in doc["cpu"]  # beside a GPU the CPU only computes attention


@pytest.mark.slow
def test_dry_run_checks_and_bench_write_their_figures(dry):
    _, out, summary = dry
    check = json.loads((out / "check.json").read_text())
    assert [r["figure"] for r in check["rows"]] == ["h2d_pinned_64MiB_GBps", "fp16_256_TFLOPs"]
    assert all(r["profile"] is not None and r["independent"] > 0 for r in check["rows"])
    assert summary["check"]["rows"] == check["rows"]
    bench = json.loads((out / "bench.json").read_text())
    assert bench["weight_streaming"]["fraction_of_h2d"] > 0 and bench["all_gpu"]["fraction_of_hbm"] > 0
    assert bench["device"] == "cpu" and bench["gpu"] == "Fake GPU"


@pytest.mark.slow
def test_dry_run_records_unpack_and_are_repredicted(dry, tmp_path):
    _, out, summary = dry
    with tarfile.open(out / "records.tar") as tar:
        for member in tar.getmembers():  # plain files and folders under the archive's root only
            assert (member.isfile() or member.isdir()) and not Path(member.name).is_absolute() \
                and ".." not in Path(member.name).parts, member.name
        # extraction filters exist from Python 3.10.12 / 3.11.4 on; the project supports 3.10+
        tar.extractall(tmp_path / "records", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    suite = gpu_suite.cases(dry_run=True)
    recs = sorted((tmp_path / "records" / "fake-gpu").glob("*.json"))
    assert len(recs) == len(suite) == 11
    assert (tmp_path / "records" / "fake-gpu" / "profiles" / "fake-gpu.yaml").is_file()
    result = harness.check_records(tmp_path / "records")
    assert result["n"] == len(suite)
    by_case = {r["case"]: r for r in result["records"]}
    assert set(by_case) == {c.name for c in suite}
    # Re-predicted now with the same code and profile: the prediction stored in the record.
    for r in result["records"]:
        assert r["predicted_throughput_tok_s"] == pytest.approx(r["recorded_predicted_throughput_tok_s"], rel=1e-9)
    assert {r["name"] for r in summary["cases"]} == set(by_case)


@pytest.mark.slow
def test_a_step_over_its_budget_is_stopped_and_the_later_steps_still_run(tmp_path):
    # The profile step gets 1 s (stopped from outside, mid-import) and the cases 2 s: the
    # run goes on with the shipped fallback profile, and the bench and the tar still happen.
    p, out, summary = _dry_run(tmp_path, "--budget", "profile=1", "--budget", "cases=2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    steps = {r["name"]: r for r in summary["steps"]}
    assert steps["profile"]["status"] == "stopped" and steps["profile"]["budget_s"] == 1
    assert steps["cases"]["status"] == "stopped" and steps["cases"]["seconds"] < 2 + gpu_check.KILL_GRACE_S + 1
    assert steps["env"]["status"] == steps["check"]["status"] == steps["bench"]["status"] == "ok"
    assert steps["pack"]["status"] == "ok"
    assert summary["profile"]["name"] == "cpu-2core" and "shipped cpu-2core" in summary["profile"]["fallback"]
    files = {x.name for x in out.iterdir()}
    assert files == OUTPUTS and len(files) <= gpu_check.MAX_FILES
    assert "stopped" in p.stdout and "FALLBACK" in p.stdout


def test_the_cases_deadline_skips_what_would_not_fit():
    suite = gpu_suite.cases(dry_run=True)
    seen = []
    result = gpu_suite.run_cases(suite, None, None, "cpu", None, None, budget_s=0.5, on_row=seen.append)
    assert result["stopped_by_budget"] and result["skipped"] == [c.name for c in suite]
    assert [r["name"] for r in seen] == result["skipped"]
    assert all(r["skipped"].startswith("budget:") for r in seen)


def test_profile_names():
    assert gpu_check.profile_name_for("NVIDIA H200") == "h200"
    assert gpu_check.profile_name_for("NVIDIA H200 NVL") == "h200"
    assert gpu_check.profile_name_for("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert gpu_check.profile_name_for("Fake GPU") == "fake-gpu"


def test_budgets_sum_within_the_run_and_overrides_are_checked():
    assert sum(gpu_check.BUDGET_S.values()) + gpu_check.PACK_RESERVE_S \
        + len(gpu_check.STEPS) * gpu_check.KILL_GRACE_S <= gpu_check.TOTAL_S <= 480
    assert gpu_check.parse_budgets(["cases=3"], True)["cases"] == 3
    for bad in ("cases", "nope=3", "cases=0", "cases=x"):
        with pytest.raises(ValueError, match="--budget"):
            gpu_check.parse_budgets([bad], False)


def test_the_gpu_suite_covers_every_component_in_about_ten_cases():
    suite = gpu_suite.cases()
    assert 8 <= len(suite) <= 12 and len({c.name for c in suite}) == len(suite)
    P = [c.policy for c in suite]
    assert any(p.weights.gpu_frac == 1 and p.cache.gpu_frac == 1 for p in P)  # all on the GPU
    assert any(p.weights.cpu_frac == 1 and not p.compress_weights for p in P)  # weights on the CPU
    assert any(p.cache.cpu_frac == 1 and p.cpu_attention for p in P)
    assert any(p.cache.cpu_frac == 1 and not p.cpu_attention for p in P)
    assert {p.disk_io for p in P if p.weights.disk_frac > 0} == {"direct", "cached"}
    assert any(p.compress_weights for p in P) and any(p.compress_cache for p in P)
    assert any(not p.overlap for p in P)
    assert any(c.model.is_moe and p.weights.cpu_frac == 1 and p.expert_offload == "fetch" for c, p in zip(suite, P))
    assert {c.model.name for c in suite} >= {"opt-6.7b", "llama-2-7b"}
    assert sum(c.expect_s for c in suite) <= 0.85 * gpu_check.BUDGET_S["cases"]


def test_steps_refuse_the_imports_the_gpu_machine_lacks():
    finder = gpu_check._RefuseImports()
    for name in ("cvxpy", "cvxpy.atoms", "highspy"):
        with pytest.raises(ImportError, match="not installed on the GPU machine"):
            finder.find_spec(name)
    assert finder.find_spec("numpy") is None  # the dry run steps ran with it installed
