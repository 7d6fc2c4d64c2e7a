"""The CPU suite's noise handling (llmsim/suites.py), decided on scripted measurements: a
quiet machine passes, a consistent miss fails, a transient miss is confirmed away, a busy
machine ends "too busy" (exit 3) within the wait budget, interfered runs are discarded, and
a machine that changed under the profile is re-profiled."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from llmsim import suites  # noqa: E402
from simulator.models import ModelSpec  # noqa: E402
from simulator.policy import Policy  # noqa: E402

TINY = ModelSpec(name="tiny", family="opt", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, ffn_dim=128,
                 vocab_size=128, max_position_embeddings=64, dtype="fp32")
CASES = [(f"tiny/{k}", TINY, Policy(dtype="fp32", gpu_batch_size=k + 1)) for k in range(4)]


class Script:
    """Scripted machine: per case name a list of (errors of each attempt), the others' CPU
    share per sample, the probe's drift per call, and how often the machine was profiled."""

    def __init__(self, errors=None, busy=None, drifts=None, run_others=None):
        self.errors = {n: list(v) for n, v in (errors or {}).items()}
        self.busy = list(busy or [])
        self.drifts = list(drifts or [])
        self.run_others = list(run_others or [])
        self.profiles = 0
        self.runs = {n: 0 for n, _, _ in CASES}

    def sample(self):
        return self.busy.pop(0) if self.busy else 0.0

    def install(self, monkeypatch):
        script = self

        class FakeProbe:
            def __init__(self, models):
                self.reference = None

            def set_reference(self):
                self.reference = {"gemm_s": 1.0}

            def drift(self, now=None):
                return script.drifts.pop(0) if script.drifts else 0.0

        def execute(model, workload, policy, device, workdir, repeats, around):
            runs = []
            for k in range(repeats):
                others = script.run_others.pop(0) if script.run_others else 0.0
                runs.append({"throughput_tok_s": 100.0 + k, "observed": {"others_frac": others},
                             "policy": policy.gpu_batch_size})
            return runs

        def compare(model, hw, workload, policy, run):
            name = next(n for n, _, p in CASES if p == policy)
            script.runs[name] += 1
            seq = script.errors.get(name, [0.02])
            err = seq.pop(0) if len(seq) > 1 else seq[0]
            return {"policy": policy, "measured": {"throughput_tok_s": run["throughput_tok_s"], "disk_io_mode_used": None},
                    "predicted": {"throughput_tok_s": run["throughput_tok_s"] * (1 + err), "bottleneck": "gpu"},
                    "errors": {"throughput_tok_s": err}, "components": [], "estimate": None, "run": run}

        def profile(workdir, path, models, guard, say, fixed):
            script.profiles += 1
            guard.wait_quiet()
            return "hw"

        monkeypatch.setattr(suites, "Probe", FakeProbe)
        monkeypatch.setattr(suites, "execute", execute)
        monkeypatch.setattr(suites, "compare", compare)
        monkeypatch.setattr(suites, "_profile", profile)
        return self

    def run(self, tmp_path, budget_s=30.0):
        guard = suites.NoiseGuard(suites.SuiteState(), budget_s=budget_s, sample=self.sample, sleep=lambda s: None)
        return suites.run_ci_suite(str(tmp_path), cases=CASES, guard=guard)


def test_a_quiet_machine_within_the_gates_passes(monkeypatch, tmp_path):
    res = Script().install(monkeypatch).run(tmp_path)
    assert res["verdict"] == "passed" and res["exit_code"] == 0 and res["n"] == 4
    assert res["median_abs_error"] == pytest.approx(0.02) and res["noise"]["waited_s"] == 0


def test_a_consistent_miss_is_confirmed_then_fails(monkeypatch, tmp_path):
    s = Script(errors={"tiny/1": [0.40]}).install(monkeypatch)
    res = s.run(tmp_path)
    assert res["verdict"] == "failed" and res["exit_code"] == 1
    assert s.runs["tiny/1"] == suites.MAX_ATTEMPTS and s.runs["tiny/0"] == 1
    assert res["max_abs_error"] == pytest.approx(0.40)


def test_a_transient_miss_is_run_again_and_passes(monkeypatch, tmp_path):
    s = Script(errors={"tiny/2": [0.40, 0.03]}).install(monkeypatch)
    res = s.run(tmp_path)
    assert res["verdict"] == "passed" and s.runs["tiny/2"] == 2
    assert next(c for c in res["cases"] if c["name"] == "tiny/2")["attempt"] == 2


def test_a_failing_median_reruns_the_cases_beyond_it(monkeypatch, tmp_path):
    errs = {n: [0.15] for n, _, _ in CASES}
    s = Script(errors=errs).install(monkeypatch)
    res = s.run(tmp_path)
    assert res["verdict"] == "failed" and all(v == suites.MAX_ATTEMPTS for v in s.runs.values())
    s = Script(errors={n: [0.15, 0.04] for n, _, _ in CASES}).install(monkeypatch)
    assert s.run(tmp_path)["verdict"] == "passed"


def test_a_machine_that_stays_busy_ends_too_busy_within_the_budget(monkeypatch, tmp_path):
    s = Script(busy=[0.5] * 1000).install(monkeypatch)
    res = s.run(tmp_path, budget_s=20.0)
    assert res["verdict"] == "too_busy" and res["exit_code"] == suites.EXIT_TOO_BUSY
    assert "50% of the CPUs" in res["too_busy"]
    assert 20.0 < res["noise"]["waited_s"] <= 20.0 + suites.QUIET_WINDOW_S
    assert len(s.busy) == 1000 - 21  # stopped sampling once the budget was spent


def test_a_busy_spell_is_waited_out(monkeypatch, tmp_path):
    s = Script(busy=[0.5, 0.6, 0.04]).install(monkeypatch)
    res = s.run(tmp_path)
    assert res["verdict"] == "passed" and res["noise"]["waited_s"] == pytest.approx(2 * suites.QUIET_WINDOW_S)


def test_interfered_runs_are_discarded_and_the_median_clean_run_is_kept(monkeypatch, tmp_path):
    # case 0: runs 1 and 3 interfered -> one clean run: void, run again (all clean)
    s = Script(run_others=[0.5, 0.0, 0.5]).install(monkeypatch)
    res = s.run(tmp_path)
    first = next(c for c in res["cases"] if c["name"] == "tiny/0")
    assert first["attempt"] == 2 and first["clean_runs"] == 3
    assert first["measured_throughput_tok_s"] == 101.0  # the median of 100, 101, 102
    assert any("void" in e for e in res["noise"]["events"])


def test_a_probe_that_drifts_away_reprofiles_once_then_gives_up(monkeypatch, tmp_path):
    s = Script(drifts=[0.3] * suites.PROBE_TRIES).install(monkeypatch)  # case 0: every try off, then re-profile
    res = s.run(tmp_path)
    assert res["verdict"] == "passed" and s.profiles == 2 and res["noise"]["reprofiles"] == 1
    s = Script(drifts=[0.3] * (20 * suites.PROBE_TRIES)).install(monkeypatch)
    res = s.run(tmp_path, budget_s=1000)
    assert res["verdict"] == "too_busy" and "probe" in res["too_busy"] and s.profiles == 2


def test_the_suite_cases_cover_the_components():
    models = suites.ci_model_sets()["small"]
    cases = suites.ci_cases(models)
    assert len(cases) == 19 and len({n for n, _, _ in cases}) == 19
    pols = [p for _, _, p in cases if not callable(p)]
    assert any(not p.overlap for p in pols) and any(p.cpu_attention for p in pols)
    assert any(p.weights.disk_frac > 0 for p in pols) and any(p.cache.cpu_frac == 1 for p in pols)
    moe_modes = {p.expert_offload for _, m, p in cases if m.is_moe and p.weights.cpu_frac == 1}
    assert moe_modes == {"prefetch", "fetch", "cpu"}


def test_the_plan_case_runs_what_plan_recommends_on_the_measured_profile():
    """Issue 9: ``validate --plan`` is a case of the suite. Its policy is asked of the search
    on the profile the suite measured: on a CPU whose fp16 GEMMs are slow the plan must not
    keep fp16 (cpu-2core measured fp16 far below fp32 and bf16)."""
    from simulator.hardware import load_profile
    name, model, plan_for = suites.ci_cases(suites.ci_model_sets()["small"])[-1]
    assert name.endswith("/plan") and callable(plan_for)
    pol = plan_for(load_profile("cpu-2core"))
    assert pol.gpu_batch_size == suites.CI_BATCH and pol.num_gpu_batches in (1, 2)
    assert pol.dtype in ("fp32", "bf16")


@pytest.mark.parametrize("args, says", [(["--repeats", "0"], "--repeats must be at least 1, got 0"),
                                        (["--profile", "no-such-profile.yaml"], "no-such-profile.yaml")])
def test_plan_case_components_refuses_bad_input_in_one_line(args, says):
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "plan_case_components.py"
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plan_case_components: error:") and says in lines[0]
