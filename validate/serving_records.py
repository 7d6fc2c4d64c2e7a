"""Published serving runs of other engines, re-predicted by the serving simulation.

The files in ``records/published/serving/`` are published measurements kept as published
(``scripts/convert_serving_records.py`` copies them with their source headers); this module
turns each run into a request stream and an engine configuration, simulates it, and
compares. Gates (issue 11): over the vLLM runs, the median of |relative error| of the mean
TTFT and of the mean end-to-end latency within ``GATES``, of the mean ITL / TPOT within 10%.

How a published run becomes a simulation (one rule per caveat of the data):
- ``vllm_h100_trainval.csv`` (vLLM 0.15.1, H100 SXM): the stages of an experiment run back
  to back as Poisson arrivals at each stage's rate for its duration (state carries over
  from stage 0 to stage 1, as in the run); each stage row is compared with the requests
  that arrived in it ("summary" rows, the union of the stages, are not re-predicted).
  Every prompt opens with the experiment's shared system prompt (its length parsed from
  ``prompt_len_dist``): one prefix group, cached after the first request. Outputs are
  ``output_len`` tokens, except where the data says they stopped early at end-of-sequence
  (Llama-2-7B: "~22% short of the maximum"): there the stream's output length is what the
  published means imply, ``1 + (E2E - TTFT) / ITL``, and E2E is not compared (it would
  only repeat those means). FP8 runs (Llama-4-Scout) are not predicted: llmsim models 16-
  and 32-bit compute only.
- ``aiconfigurator_silicon_16bit.csv`` (closed loop at a fixed concurrency C, fixed input
  and output lengths): ``4 C`` requests (at least 64) from C users; the first C, which
  start together, are left out of the statistics (steady state). The data do not say
  whether TTFT and TPOT are means or medians: compared with the simulated means. E2E and
  throughput there are derived, not measured: not compared. Only the vLLM rows are
  predicted (there is no SGLang or TensorRT-LLM engine model yet); ``max_num_seqs`` and
  ``max_num_batched_tokens`` were not recorded: ``vllm serve``'s defaults for the GPU
  (``simulator.serving.engines.vllm.batch_defaults``: 8192 and 1024 on an 80 GB H100). They ran vLLM 0.12.0,
  before async scheduling became vLLM's default (0.14 release notes): predicted without it.
- Hardware: the runs name ``dgx-h100-8x`` (datasheet peaks); they are predicted on
  ``h100-sxm-8x``, the same node with the H100's measured rates.
Relative error: ``(predicted - measured) / measured``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.errors import LlmsimError
from simulator.hardware import load_profile
from simulator.models import ModelSpec, get_model
from simulator.serving.engines import get_engine
from simulator.serving.requests import RequestStream
from simulator.serving.simulate import simulate

PUBLISHED_DIR = Path(__file__).resolve().parent / "records" / "published" / "serving"
HARDWARE = {"H100-80GB-HBM3-SXM": "h100-sxm-8x", "H100-80GB-SXM": "h100-sxm-8x"}
GATES = {"ttft_mean_s": 0.15, "e2e_mean_s": 0.15, "itl_mean_s": 0.10}
EARLY_EOS_MODELS = ("meta-llama/Llama-2-7b-hf",)
CLOSED_LOOP_WAVES = 4
ASYNC_DEFAULT_VERSION = (0, 14)  # vLLM 0.14 release notes: "Async scheduling is now enabled by default"


def engine_version(engine: str) -> tuple:
    """(major, minor) of an engine label such as ``vllm-0.15.1``; (0, 0) when it has none."""
    m = re.search(r"(\d+)\.(\d+)", engine)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@dataclass
class Case:
    """One simulation: a published experiment (all its stages) or one closed-loop row."""

    source: str
    name: str
    engine: str
    model_id: str
    gpu: str
    tp: int
    prompt_len: int
    output_len: int
    prefix_tokens: int = 0
    stages: list = field(default_factory=list)  # [(label, rate_rps, duration_s)]
    concurrency: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    measured: dict = field(default_factory=dict)  # label -> {metric: value}
    compared: tuple = ("ttft_mean_s", "itl_mean_s", "e2e_mean_s")
    skip: str = ""
    notes: list = field(default_factory=list)


def _csv(path: Path):
    import pandas as pd
    try:
        return pd.read_csv(path, comment="#")
    except (OSError, ValueError) as e:
        raise LlmsimError(f"{path}: not a readable published-runs file: {e}") from None


def load_models(directory=PUBLISHED_DIR) -> dict:
    """{Hugging Face id: ModelSpec} of the published runs' models (``models.yaml``; YAML,
    not JSON: ``validate/records`` holds the executor's JSON records)."""
    from simulator.files import load_yaml, read_text
    path = Path(directory) / "models.yaml"
    raw = load_yaml(read_text(path), str(path))  # strict: a model given twice is an error
    return {hf_id: get_model(spec) if isinstance(spec, str) else ModelSpec.from_dict(spec, f"models.yaml[{hf_id}]")
            for hf_id, spec in raw.items()}


def trainval_cases(path: Path, models: dict) -> list[Case]:
    df = _csv(path)
    cases = []
    for exp, g in df.groupby("experiment", sort=False):
        first = g.iloc[0]
        m = re.search(r"(\d+)-token system prompt", str(first.prompt_len_dist))
        case = Case(source=path.name, name=str(exp), engine=str(first.engine), model_id=str(first.model),
                    gpu=str(first.gpu), tp=int(first.tp), prompt_len=int(first.prompt_len),
                    output_len=int(first.output_len), prefix_tokens=int(m.group(1)) if m else 0,
                    max_num_seqs=int(first.max_num_seqs), max_num_batched_tokens=int(first.max_num_batched_tokens))
        stages = g[g.stage_index != "summary"].sort_values("stage_index")
        for _, r in stages.iterrows():
            label = f"stage {r.stage_index}"
            case.stages.append((label, float(r.rate_rps), float(r.stage_duration_s)))
            case.measured[label] = {"ttft_mean_s": r.ttft_mean_s, "ttft_p90_s": r.ttft_p90_s,
                                    "ttft_p99_s": r.ttft_p99_s, "itl_mean_s": r.itl_mean_s,
                                    "e2e_mean_s": r.e2e_mean_s, "e2e_p90_s": r.e2e_p90_s, "e2e_p99_s": r.e2e_p99_s}
        if str(first.precision).upper() not in ("FP16", "BF16"):
            case.skip = f"precision {first.precision}: llmsim models 16- and 32-bit compute only"
        elif case.model_id not in models:
            case.skip = f"no shapes for {case.model_id} in models.yaml"
        if case.model_id in EARLY_EOS_MODELS and not case.skip:
            s0 = case.measured[case.stages[0][0]]
            case.output_len = int(round(1 + (s0["e2e_mean_s"] - s0["ttft_mean_s"]) / s0["itl_mean_s"]))
            case.compared = ("ttft_mean_s", "itl_mean_s")
            case.notes.append(f"outputs stopped early at EOS: {case.output_len} tokens from the published means, "
                              "E2E not compared")
        cases.append(case)
    return cases


def aiconfigurator_cases(path: Path, models: dict) -> list[Case]:
    df = _csv(path)
    cases = []
    for _, r in df.iterrows():
        case = Case(source=path.name, name=str(r.id), engine=str(r.engine), model_id=str(r.model), gpu=str(r.gpu),
                    tp=int(r.tp), prompt_len=int(r.prompt_len), output_len=int(r.output_len),
                    concurrency=int(r.concurrency), compared=("ttft_mean_s", "itl_mean_s"))
        case.measured["row"] = {"ttft_mean_s": float(r.ttft_s), "itl_mean_s": float(r.tpot_s)}
        if not case.engine.startswith("vllm"):
            case.skip = f"engine {case.engine}: no llmsim engine model yet"
        elif case.model_id not in models:
            case.skip = f"no shapes for {case.model_id} in models.yaml"
        cases.append(case)
    return cases


def load_cases(directory=PUBLISHED_DIR) -> list[Case]:
    d = Path(directory)
    models = load_models(d)
    return (trainval_cases(d / "vllm_h100_trainval.csv", models)
            + aiconfigurator_cases(d / "aiconfigurator_silicon_16bit.csv", models))


def stream_of(case: Case, seed: int = 0) -> tuple[RequestStream, np.ndarray]:
    """The request stream of a case and each request's stage index (module docstring)."""
    rng = np.random.default_rng(seed)
    if case.concurrency is not None:
        c = case.concurrency
        n = max(CLOSED_LOOP_WAVES * c, 64)
        s = RequestStream(np.zeros(n), np.full(n, case.prompt_len), np.full(n, case.output_len), concurrency=c,
                          source=case.name)
        return s, np.where(np.arange(n) < c, -1, 0)
    arrivals, stage = [], []
    t0 = 0.0
    for k, (_, rate, duration) in enumerate(case.stages):
        n = max(1, int(round(rate * duration)))
        t = t0 + np.cumsum(rng.exponential(1.0 / rate, n))
        arrivals.append(t)
        stage.append(np.full(n, k))
        t0 += duration
    arr = np.concatenate(arrivals)
    order = np.argsort(arr, kind="stable")  # a stage's last Poisson arrivals may pass its end
    arr = arr[order]
    n = len(arr)
    group = np.zeros(n, np.int64) if case.prefix_tokens else np.full(n, -1, np.int64)
    s = RequestStream(arr - arr[0], np.full(n, case.prompt_len), np.full(n, case.output_len),
                      np.full(n, case.prefix_tokens), group, source=case.name)
    return s, np.concatenate(stage)[order]


def predict(case: Case, engine: str = "vllm", hardware: str | None = None, engine_overrides=None) -> dict:
    """{stage label: {metric: predicted}} for one case; ``engine_overrides`` replace engine
    settings after the case's own (a diagnostic: what one setting is worth)."""
    models = load_models()
    model = models[case.model_id]
    hw = load_profile(hardware or HARDWARE[case.gpu])
    overrides = {}
    if case.max_num_seqs is not None:
        overrides["max_num_seqs"] = case.max_num_seqs
    if case.max_num_batched_tokens is not None:
        overrides["max_num_batched_tokens"] = case.max_num_batched_tokens
    if case.concurrency is not None:
        overrides["max_num_seqs"] = max(get_engine(engine, hw=hw).max_num_seqs, case.concurrency)
    if engine == "vllm" and engine_version(case.engine) < ASYNC_DEFAULT_VERSION:
        overrides["async_scheduling"] = False
    eng = get_engine(engine, hw=hw, **{**overrides, **(engine_overrides or {})})
    stream, stage = stream_of(case)
    res = simulate(model, hw, stream, eng, tp=case.tp)
    q = res.req
    out = {}
    labels = [s[0] for s in case.stages] if case.concurrency is None else ["row"]
    for k, label in enumerate(labels):
        sel = stage == k
        ttft = q.first_token[sel] - q.arrival[sel]
        e2e = q.finish[sel] - q.arrival[sel]
        gaps = float(np.sum(q.output[sel] - 1))
        out[label] = {"ttft_mean_s": float(ttft.mean()), "ttft_p90_s": float(np.percentile(ttft, 90)),
                      "ttft_p99_s": float(np.percentile(ttft, 99)),
                      "itl_mean_s": float(np.sum(q.finish[sel] - q.first_token[sel]) / gaps) if gaps else math.nan,
                      "e2e_mean_s": float(e2e.mean()), "e2e_p90_s": float(np.percentile(e2e, 90)),
                      "e2e_p99_s": float(np.percentile(e2e, 99))}
    return out


def compare(directory=PUBLISHED_DIR, engine: str = "vllm", hardware: str | None = None, cases=None,
            engine_overrides=None):
    """Tidy table (pandas): one row per (case, stage, metric) with measured, predicted,
    rel_error and whether it counts for the gates; skipped cases appear with their reason."""
    import pandas as pd
    rows = []
    for case in cases if cases is not None else load_cases(directory):
        if case.skip:
            rows.append({"source": case.source, "case": case.name, "engine": case.engine, "stage": None,
                         "metric": None, "measured": None, "predicted": None, "rel_error": None, "gated": False,
                         "skip": case.skip})
            continue
        pred = predict(case, engine, hardware, engine_overrides)
        for label, measured in case.measured.items():
            for metric, value in measured.items():
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                p = pred[label][metric]
                rows.append({"source": case.source, "case": case.name, "engine": case.engine, "stage": label,
                             "metric": metric, "measured": float(value), "predicted": p,
                             "rel_error": (p - float(value)) / float(value), "gated": metric in case.compared,
                             "skip": ""})
    return pd.DataFrame(rows)


def medians(table) -> dict:
    """Median |relative error| per gated metric over the vLLM rows."""
    t = table[table.gated & table.engine.str.startswith("vllm")]
    return {m: float(t[t.metric == m].rel_error.abs().median()) for m in GATES if (t.metric == m).any()}


def summary(table) -> dict:
    """Median |relative error| per (source, gated metric) over the predicted vLLM rows, with
    the gate of each metric and the number of rows behind it."""
    out = {}
    t = table[table.gated & table.engine.str.startswith("vllm")]
    for source, g in t.groupby("source", sort=False):
        out[source] = {m: {"median_abs_error": float(g[g.metric == m].rel_error.abs().median()),
                           "gate": GATES[m], "rows": int((g.metric == m).sum())}
                       for m in GATES if (g.metric == m).any()}
    return out


def main(argv=None) -> int:
    """``python -m validate.serving_records [--json]``: the published serving runs
    re-predicted with the vllm engine, one row per (case, stage, gated metric), and the
    median |relative error| per file against the gates."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m validate.serving_records", description=main.__doc__)
    ap.add_argument("--json", action="store_true", help="print the rows and medians as JSON")
    args = ap.parse_args(argv)
    table = compare()
    gated = table[table.gated]
    if args.json:
        print(json.dumps({"rows": gated.drop(columns=["gated", "skip"]).to_dict("records"),
                          "medians": summary(table)}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    con = Console()
    t = Table(title="published serving runs, re-predicted (vllm engine)", header_style="bold")
    for col in ("case", "stage", "metric", "measured", "predicted", "error"):
        t.add_column(col, justify="left" if col in ("case", "stage", "metric") else "right")
    for r in gated[gated.source == gated.source.iloc[0]].itertuples():
        t.add_row(r.case, r.stage, r.metric, f"{r.measured * 1e3:.1f} ms", f"{r.predicted * 1e3:.1f} ms",
                  f"{r.rel_error:+.1%}")
    con.print(t)
    for source, ms in summary(table).items():
        con.print(f"{source}: " + ", ".join(
            f"{m} median |error| {v['median_abs_error']:.1%} (gate {v['gate']:.0%}, {v['rows']} rows)"
            + (" [green]met[/]" if v["median_abs_error"] <= v["gate"] else " [red]not met[/]")
            for m, v in ms.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
