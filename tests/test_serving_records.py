"""Published serving runs (validate/records/published/serving), re-predicted with the vllm
engine on the h100-sxm-8x profile (validate/serving_records.py says how each run becomes a
simulation).

Gates of issue 11 over the vLLM runs: median |relative error| of mean TTFT and mean E2E
within 15%, of mean ITL/TPOT within 10%. Met today: E2E on the vLLM 0.15.1 runs. Not met
(strict xfail, so that meeting them fails the test until the gate is promoted): TTFT and
ITL. The regression guards below hold today's errors; see the report in the module
docstring of validate/serving_records.py for what the engine does not model yet.
"""

from __future__ import annotations

import pandas as pd
import pytest

from simulator.hardware import load_profile
from simulator.serving.engines import get_engine
from simulator.serving.simulate import replica_budget
from validate.serving_records import GATES, PUBLISHED_DIR, compare, load_cases, load_models

TRAINVAL = "vllm_h100_trainval.csv"
AIC = "aiconfigurator_silicon_16bit.csv"


@pytest.fixture(scope="module")
def table():
    return compare()


def _median(table, source, metric):
    t = table[(table.source == source) & table.gated & (table.metric == metric)]
    assert len(t) > 0
    return float(t.rel_error.abs().median())


def test_every_published_row_is_predicted_or_skipped_with_a_reason():
    cases = load_cases()
    raw = pd.read_csv(PUBLISHED_DIR / TRAINVAL, comment="#")
    assert {c.name for c in cases if c.source == TRAINVAL} == set(raw.experiment)
    assert sum(c.source == AIC for c in cases) == len(pd.read_csv(PUBLISHED_DIR / AIC, comment="#"))
    predicted = [c for c in cases if not c.skip]
    assert sum(c.source == TRAINVAL for c in predicted) == 9  # the four FP8 Llama-4-Scout runs are skipped
    assert sum(c.source == AIC for c in predicted) == 90  # the vLLM rows; SGLang and TRT-LLM have no engine yet
    for c in cases:
        assert c.skip == "" or "FP8" in c.skip or "no llmsim engine model" in c.skip


def test_every_file_keeps_its_source_header():
    for name in (TRAINVAL, AIC):
        head = (PUBLISHED_DIR / name).read_text().splitlines()[:3]
        assert head[0].startswith("#") and "github.com" in " ".join(head)


def test_kv_blocks_match_vllm_within_5_percent():
    """vLLM's memory profiling against kvcache.kv_budget: the published block counts of the
    16-bit runs (ours are 1-4% more: CUDA graph pools and NCCL buffers are not counted)."""
    raw = pd.read_csv(PUBLISHED_DIR / TRAINVAL, comment="#").drop_duplicates("experiment")
    models, hw = load_models(), load_profile("h100-sxm-8x")
    checked = 0
    for _, r in raw.iterrows():
        if r.model not in models or r.precision != "FP16" or pd.isna(r.total_kv_blocks_gpu):
            continue
        m = models[r.model]
        eng = get_engine("vllm", max_num_seqs=int(r.max_num_seqs), max_num_batched_tokens=int(r.max_num_batched_tokens))
        blocks = replica_budget(m, hw, eng, int(r.tp), 1, m.dtype).num_blocks
        assert blocks == pytest.approx(r.total_kv_blocks_gpu, rel=0.05), r.experiment
        checked += 1
    assert checked == 8


def test_e2e_of_the_vllm_runs_meets_the_gate(table):
    assert _median(table, TRAINVAL, "e2e_mean_s") <= GATES["e2e_mean_s"]


@pytest.mark.xfail(strict=True, reason="TTFT misses by a near-constant ~10 ms per request: the API server's "
                                       "time before the scheduler is not modelled (no published figure)")
def test_ttft_of_the_vllm_runs_meets_the_gate(table):
    assert _median(table, TRAINVAL, "ttft_mean_s") <= GATES["ttft_mean_s"]


@pytest.mark.xfail(strict=True, reason="ITL is predicted 14% fast (median): host time per step is not modelled")
def test_itl_of_the_vllm_runs_meets_the_gate(table):
    assert _median(table, TRAINVAL, "itl_mean_s") <= GATES["itl_mean_s"]


@pytest.mark.parametrize("source, metric, today", [
    (TRAINVAL, "e2e_mean_s", 0.096), (TRAINVAL, "itl_mean_s", 0.139), (TRAINVAL, "ttft_mean_s", 0.279),
    (AIC, "itl_mean_s", 0.273), (AIC, "ttft_mean_s", 0.597),
])
def test_errors_do_not_grow(table, source, metric, today):
    """Regression guard: today's median |relative error| plus 0.02."""
    assert _median(table, source, metric) <= today + 0.02


def test_predictions_are_optimistic_where_they_miss(table):
    """Every gated miss of more than 15% on the vLLM 0.15.1 runs predicts less time than was
    measured (what is missing is overhead, not work)."""
    t = table[(table.source == TRAINVAL) & table.gated]
    assert (t[t.rel_error.abs() > 0.15].rel_error < 0).all()
