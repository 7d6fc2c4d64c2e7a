"""`llmsim sweep`: the spec's validation and schema, the table against direct calls, resume.

One sweep runs on Dask through the command line (a local cluster of one worker, started
once for the module); the others run the same cell function in-process."""

from __future__ import annotations

import json
import pathlib

import pandas as pd
import pytest
import yaml

from helpers import run_cli
from simulator.errors import SpecError
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.policy import Workload
from simulator.search import search
from simulator import sweeps

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "sweep.schema.json"
EXAMPLE = ROOT / "examples" / "sweep-5gpus-8models.yaml"

BATCH = {"prompt_len": 128, "gen_len": 8}
STREAM = {"rate": 2, "num_requests": 20, "prompt_len": 128, "output_len": 8}
SMALL = {"models": ["opt-1.3b"], "hardware": ["t4-gcp", "a100-80g-sxm"], "engines": ["llmsim", "flexgen", "continuous"],
         "workloads": [BATCH, STREAM]}
TIMING = ["cell_s", "search_s"]  # the only columns that differ between two runs


def _write(path: pathlib.Path, doc) -> pathlib.Path:
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def dask_run(tmp_path_factory):
    """The small sweep on a local Dask cluster of one worker, through the command line."""
    d = tmp_path_factory.mktemp("sweep")
    spec = _write(d / "small.yaml", SMALL)
    code, out, err = run_cli("sweep", str(spec), "--out", str(d / "out"), "--workers", "1", "--json")
    assert code == 0, err
    return spec, d / "out", json.loads(out), err


def _simulated(model, hardware, engine, w):
    from simulator.serving import metrics
    from simulator.serving.engines import get_engine
    from simulator.serving.requests import StreamSpec
    from simulator.serving.simulate import simulate
    spec = StreamSpec(num_requests=w["num_requests"], prompt_len=w["prompt_len"], output_len=w["output_len"])
    stream = spec.at_rate(w["rate"]) if "rate" in w else spec.closed(w["concurrency"])
    return metrics.summary(simulate(get_model(model), load_profile(hardware), stream, get_engine(engine)))


# ------------------------------------------------------------------ the table
def test_small_sweep_on_dask_equals_search_and_simulate(dask_run):
    _, out, summary, err = dask_run
    assert summary["cells"] == 6 and summary["computed"] == 6 and summary["reused"] == 0
    assert (summary["refused"], summary["failed"], summary["feasible"]) == (0, 0, 6) and summary["workers"] == 1
    df = pd.read_parquet(out / "results.parquet")
    assert list(df.columns) == list(sweeps.COLUMNS)
    assert list(zip(df["hardware"], df["engine"])) == [("t4-gcp", "llmsim"), ("t4-gcp", "flexgen"),
                                                       ("t4-gcp", "continuous"), ("a100-80g-sxm", "llmsim"),
                                                       ("a100-80g-sxm", "flexgen"), ("a100-80g-sxm", "continuous")]
    assert df["cell_id"].is_unique
    for _, row in df[df["workload_kind"] == "batch"].iterrows():
        plan = search(get_model("opt-1.3b"), load_profile(row["hardware"]), Workload(128, 8), objective="throughput",
                      gpus=1, engine=row["engine"], compare=False)
        est, pol = plan.estimate, plan.policy
        assert row["feasible"] == plan.feasible is True and row["engine_kind"] == "planner"
        assert row["throughput_tok_s"] == pytest.approx(est.throughput_tok_s, rel=1e-12)
        assert row["total_latency_s"] == pytest.approx(est.total_latency_s, rel=1e-12)
        assert row["peak_gpu_bytes"] == pytest.approx(est.peak_memory_bytes["gpu"], rel=1e-12)
        assert row["peak_cpu_bytes"] == pytest.approx(est.peak_memory_bytes["cpu"], rel=1e-12)
        assert (row["gpu_batch_size"], row["num_gpu_batches"], row["dtype"]) == \
            (pol.gpu_batch_size, pol.num_gpu_batches, pol.dtype)
        assert row["weights_gpu_frac"] == pytest.approx(pol.weights.gpu_frac, abs=1e-12)
        assert row["num_sequences"] == est.num_sequences and row["bottleneck"] == str(est.bottleneck)
    for _, row in df[df["workload_kind"] == "stream"].iterrows():
        s = _simulated("opt-1.3b", row["hardware"], "continuous", STREAM)
        assert row["engine_kind"] == "serving" and row["replicas"] == 1 and row["num_requests"] == 20
        assert row["throughput_tok_s"] == pytest.approx(s["throughput_tok_s"], rel=1e-12)
        assert row["ttft_p99_s"] == pytest.approx(s["ttft_s"]["p99"], rel=1e-12)
        assert row["e2e_p50_s"] == pytest.approx(s["e2e_s"]["p50"], rel=1e-12)
        assert row["rate_rps"] == 2.0 and row["gen_len"] == 8 and pd.isna(row["total_latency_s"])
    assert (df["cell_s"] > 0).all()
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns) == list(df.columns) and len(csv) == 6
    assert csv["throughput_tok_s"].tolist() == pytest.approx(df["throughput_tok_s"].tolist(), rel=1e-12)
    # Nothing left behind but the table and one checkpoint part per cell; progress on stderr.
    assert sorted(p.name for p in out.iterdir()) == ["cells", "results.csv", "results.parquet"]
    assert sorted(p.stem for p in (out / "cells").iterdir()) == sorted(df["cell_id"])
    assert "llmsim sweep: 6/6 cells (100%)" in err


def test_rerun_reuses_every_finished_cell(dask_run):
    spec, out, first, _ = dask_run
    before = pd.read_parquet(out / "results.parquet")
    code, text, err = run_cli("sweep", str(spec), "--out", str(out), "--json")
    assert code == 0, err
    again = json.loads(text)
    assert (again["computed"], again["reused"]) == (0, 6) and "workers" in again and again["workers"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), before)  # timings included: reused


# ------------------------------------------------------------------ resume
class _Interrupt(BaseException):
    pass


def _interrupted_after(n: int):
    def compute(sweep, cells):
        for k, row in enumerate(sweeps.compute_in_process(sweep, cells)):
            if k == n:
                raise _Interrupt()  # as Ctrl-C does, mid-sweep
            yield row
    return compute


def _counting(asked: list):
    def compute(sweep, cells):
        asked.extend(c.cell_id for c in cells)
        yield from sweeps.compute_in_process(sweep, cells)
    return compute


RESUME = {"models": ["opt-125m", "opt-1.3b"], "hardware": ["a100-80g-sxm"], "engines": ["llmsim", "accelerate", "vllm"],
          "workloads": [{"prompt_len": 64, "gen_len": 4}, {"concurrency": 4, "num_requests": 12, "prompt_len": 64,
                                                           "output_len": 4}]}


def test_an_interrupted_sweep_resumes_without_recomputing(tmp_path):
    plan = sweeps.plan_sweep(sweeps.parse_spec(RESUME))
    assert len(plan.cells) == 6
    with pytest.raises(_Interrupt):
        sweeps.run_sweep(plan, tmp_path / "a", _interrupted_after(2))
    parts = sorted(p.stem for p in (tmp_path / "a" / "cells").iterdir())
    assert parts == sorted(c.cell_id for c in plan.cells[:2])
    assert not (tmp_path / "a" / "results.parquet").exists()
    asked: list = []
    resumed = sweeps.run_sweep(plan, tmp_path / "a", _counting(asked))
    assert asked == [c.cell_id for c in plan.cells[2:]]
    assert (resumed.computed, resumed.reused) == (4, 2)
    whole = sweeps.run_sweep(plan, tmp_path / "b")
    cols = [c for c in sweeps.COLUMNS if c not in TIMING]
    pd.testing.assert_frame_equal(resumed.frame[cols], whole.frame[cols])
    closed = whole.frame.iloc[2]  # opt-125m, the closed loop on vllm
    assert (closed["engine"], closed["concurrency"]) == ("vllm", 4)
    s = _simulated("opt-125m", "a100-80g-sxm", "vllm", RESUME["workloads"][1])
    assert closed["throughput_tok_s"] == pytest.approx(s["throughput_tok_s"], rel=1e-12)


def test_refusals_are_answers_and_bugs_are_retried(tmp_path, monkeypatch):
    spec = {"models": ["llama-2-7b"], "hardware": ["a100-80g-sxm"], "engines": ["flexgen", "accelerate"],
            "workloads": [{"prompt_len": 64, "gen_len": 4}]}
    plan = sweeps.plan_sweep(sweeps.parse_spec(spec))
    real = sweeps._plan

    def flaky(cell, model, hw):
        if cell.engine == "accelerate":
            raise ZeroDivisionError("boom")
        return real(cell, model, hw)
    monkeypatch.setattr(sweeps, "_plan", flaky)
    outcome = sweeps.run_sweep(plan, tmp_path)
    assert {k: outcome.counts()[k] for k in ("feasible", "infeasible", "refused", "failed")} == \
        {"feasible": 0, "infeasible": 0, "refused": 1, "failed": 1}
    refused, broken = outcome.frame.iloc[0], outcome.frame.iloc[1]
    assert refused["error_kind"] == "input" and not refused["feasible"]
    assert "FlexGen 0.1.x runs OPT models only" in refused["error"] and refused["reason"] == refused["error"]
    assert broken["error_kind"] == "internal" and broken["error"] == "ZeroDivisionError: boom"
    assert [p.stem for p in (tmp_path / "cells").iterdir()] == [refused["cell_id"]]  # the bug is not kept
    monkeypatch.setattr(sweeps, "_plan", real)
    asked: list = []
    second = sweeps.run_sweep(plan, tmp_path, _counting(asked)).frame
    assert asked == [broken["cell_id"]]
    assert second.iloc[1]["feasible"] and pd.isna(second.iloc[1]["error"]) and second.iloc[1]["throughput_tok_s"] > 0


def test_a_stream_needs_whole_replicas(tmp_path):
    spec = {"models": ["opt-125m"], "hardware": ["dgx-a100-8x"], "gpus": [1, 2],
            "workloads": [{"rate": 1, "num_requests": 4, "prompt_len": 16, "output_len": 2, "tp": 2}]}
    df = sweeps.run_sweep(sweeps.plan_sweep(sweeps.parse_spec(spec)), tmp_path).frame
    assert df["engine"].tolist() == ["continuous", "continuous"]  # the default serving engine
    assert df.iloc[0]["error"] == "gpus 1 is not a multiple of tp 2 x pp 1 = 2 GPUs per replica"
    assert df.iloc[1]["feasible"] and df.iloc[1]["replicas"] == 1 and df.iloc[1]["tp"] == 2


def test_cell_ids_follow_the_inputs_not_the_labels(tmp_path):
    ids = lambda doc: [c.cell_id for c in sweeps.plan_sweep(sweeps.parse_spec(doc, base_dir=tmp_path)).cells]
    base = {"models": ["opt-125m"], "hardware": ["t4-gcp"], "workloads": [BATCH]}
    assert ids(base) == ids({**base, "workloads": [{**BATCH, "name": "renamed"}]})
    assert ids(base) == ids({**base, "models": ["facebook/opt-125m"]})
    assert ids(base) != ids({**base, "workloads": [{**BATCH, "gen_len": 9}]})
    assert ids(base) != ids({**base, "objective": "latency"})
    doc = yaml.safe_load(pathlib.Path(load_profile("t4-gcp").path).read_text())
    _write(tmp_path / "same.yaml", doc)
    doc["gpu"]["memory_GiB"] = 8
    _write(tmp_path / "smaller.yaml", doc)
    same, smaller = ids({**base, "hardware": ["same.yaml"]}), ids({**base, "hardware": ["smaller.yaml"]})
    assert same != smaller  # a profile's contents, not its name, identify it


# ------------------------------------------------------------------ the spec
@pytest.mark.parametrize("change,message", [
    ({"foo": 1}, "unknown key 'foo' (allowed: models, hardware, engines, gpus, workloads, objective)"),
    ({"models": []}, "models: empty list (give at least one)"),
    ({"workloads": []}, "workloads: empty list (give at least one)"),
    ({"models": ["gpt-9"]}, "models[0]: unknown model 'gpt-9' (presets: opt-125m, opt-1.3b,"),
    ({"hardware": ["t4-gcp", "nope"]}, "hardware[1]: unknown hardware profile 'nope' (shipped: "),
    ({"engines": ["llmsim", "turbo"]}, f"engines[1]: unknown engine 'turbo' (planner engines, for batches: "
                                       f"{', '.join(sweeps.planner_engines())}; serving engines, for request streams: "
                                       f"{', '.join(sweeps.serving_engines())})"),
    ({"engines": ["llmsim"]}, "engines: no serving engine for the request-stream workloads (workloads[1])"),
    ({"workloads": [{**BATCH, "output_len": 3}]}, "workloads[0]: unknown key 'output_len' (allowed: name, "
                                                  "prompt_len, gen_len, num_sequences; a request stream needs one of"),
    ({"workloads": [{**STREAM, "rate": -1}]}, "workloads[0].rate: Input should be greater than 0, got -1"),
    ({"workloads": [{**STREAM, "concurrency": 2}]}, "workloads[0]: rate and concurrency exclude each other"),
    ({"workloads": [{**BATCH, "prompt_len": "128"}]}, "workloads[0].prompt_len: Input should be a valid integer"),
    ({"gpus": [1, 1]}, "gpus[1] (1) repeats gpus[0]"),
    ({"objective": "cost"}, "objective: Input should be 'throughput' or 'latency', got 'cost'"),
])
def test_a_bad_spec_is_one_line_naming_the_file_and_key_and_writes_nothing(tmp_path, change, message):
    spec = _write(tmp_path / "bad.yaml", {**SMALL, **change})
    out = tmp_path / "out"
    code, stdout, err = run_cli("sweep", str(spec), "--out", str(out))
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith(f"llmsim: error: sweep spec {spec}: ")
    assert message in err
    assert not out.exists()


@pytest.mark.parametrize("text,message", [
    ("models: [opt-1.3b\n", "not valid YAML at line 2"),
    ("- a\n- b\n", "expected a mapping with keys models, hardware, engines, gpus, workloads, objective, got list"),
])
def test_unparseable_specs(tmp_path, text, message):
    spec = _write(tmp_path / "bad.yaml", text)
    code, _, err = run_cli("sweep", str(spec), "--out", str(tmp_path / "out"))
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["sweep"], "give the spec file"),
    (["sweep", "x.yaml"], "--out DIR is required"),
    (["sweep", "x.yaml", "--out", "o", "--workers", "0"], "--workers must be a positive integer, got 0"),
    (["sweep", "x.yaml", "--out", "o", "--workers", "2", "--scheduler", "tcp://h:8786"], "a --scheduler brings"),
    (["sweep", "/no/such.yaml", "--out", "o"], "sweep spec /no/such.yaml: cannot read: No such file"),
])
def test_usage_errors(args, message):
    code, _, err = run_cli(*args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_paths_in_a_spec_are_relative_to_it(tmp_path):
    (tmp_path / "profiles").mkdir()
    _write(tmp_path / "profiles" / "mine.yaml", pathlib.Path(load_profile("t4-gcp").path).read_text())
    (tmp_path / "trace.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,16,2\n0.5,32,3\n")
    spec = _write(tmp_path / "spec.yaml", {"models": ["opt-125m"], "hardware": ["profiles/mine.yaml"],
                                           "workloads": [{"trace": "trace.csv"}]})
    plan = sweeps.load_sweep(spec)
    (cell,) = plan.cells
    assert cell.hardware == "profiles/mine.yaml" and plan.traces["trace.csv"].num_requests == 2
    row = sweeps.run_cell(cell, *plan.inputs(cell))
    assert row["feasible"] and row["num_requests"] == 2 and row["trace"] == "trace.csv"
    _write(tmp_path / "broken.yaml", {"schema_version": 1, "name": "broken"})
    with pytest.raises(SpecError, match=r"^sweep spec .*spec2.yaml: hardware\[0\] 'broken.yaml': "):
        sweeps.load_sweep(_write(tmp_path / "spec2.yaml", {"models": ["opt-125m"], "hardware": ["broken.yaml"],
                                                           "workloads": [BATCH]}))
    with pytest.raises(SpecError, match=r"workloads\[0\]: length_dist cannot be combined with trace"):
        sweeps.parse_spec({"models": ["opt-125m"], "hardware": ["t4-gcp"],
                           "workloads": [{"trace": "chat", "length_dist": "uniform"}]})


# ------------------------------------------------------------------ the schema and the example
def test_the_committed_schema_is_the_generated_one():
    assert json.loads(SCHEMA.read_text()) == sweeps.json_schema(), \
        "schemas/sweep.schema.json is stale: llmsim sweep --schema > schemas/sweep.schema.json"
    code, out, _ = run_cli("sweep", "--schema")
    assert code == 0 and json.loads(out) == json.loads(SCHEMA.read_text())


def test_the_schema_checks_what_the_model_checks():
    import jsonschema
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    validator.check_schema(validator.schema)
    assert validator.is_valid(yaml.safe_load(EXAMPLE.read_text()))
    assert validator.is_valid(SMALL)
    for bad in ({**SMALL, "foo": 1}, {**SMALL, "models": []}, {**SMALL, "engines": ["turbo"]},
                {**SMALL, "workloads": [{**BATCH, "rate": 1}]}, {**SMALL, "gpus": [0]},
                {k: v for k, v in SMALL.items() if k != "hardware"}):
        assert not validator.is_valid(bad), bad
        with pytest.raises(SpecError):
            sweeps.parse_spec(bad)


def test_the_example_spec_is_five_gpus_for_eight_models():
    plan = sweeps.load_sweep(EXAMPLE)
    spec = plan.spec
    assert len(spec.models) == 8 and len(spec.hardware) == 5
    assert len(plan.cells) == 8 * 5 * (2 * 4 + 1) == 360
    assert {c.engine for c in plan.cells if c.workload.kind == "stream"} == {"vllm"}
