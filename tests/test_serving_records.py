"""Published serving runs (validate/records/published/serving), re-predicted with the vllm
engine on the h100-sxm-8x profile (validate/serving_records.py says how each run becomes a
simulation).

Gates of issue 11 over the vLLM runs: median |relative error| of mean TTFT and mean E2E
within 15%, of mean ITL/TPOT within 10%. Met: TTFT and E2E on the vLLM 0.15.1 runs. Not
met (strict xfail, so that meeting it fails the test until the gate is promoted): ITL. The
regression guards below hold today's errors; the vllm engine's docstring
(simulator/serving/engines/vllm.py) says what it does not model yet.
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


def test_ttft_of_the_vllm_runs_meets_the_gate(table):
    assert _median(table, TRAINVAL, "ttft_mean_s") <= GATES["ttft_mean_s"]


def test_itl_of_the_vllm_runs_meets_the_gate(table):
    assert _median(table, TRAINVAL, "itl_mean_s") <= GATES["itl_mean_s"]


@pytest.mark.parametrize("source, metric, today", [
    (TRAINVAL, "e2e_mean_s", 0.025), (TRAINVAL, "itl_mean_s", 0.051), (TRAINVAL, "ttft_mean_s", 0.109),
    (AIC, "itl_mean_s", 0.217), (AIC, "ttft_mean_s", 0.442),
])
def test_errors_do_not_grow(table, source, metric, today):
    """Regression guard: today's median |relative error| plus 0.01."""
    assert _median(table, source, metric) <= today + 0.01


def test_the_closed_loop_itl_misses_no_longer_grow_with_tp(table):
    """The aiconfigurator rows run one workload at tp 2, 4 and 8. With decode GEMMs at the
    published H100 line (4.4 us + bytes / 3.18 TB/s, h100-sxm-8x) rather than 2.3 TB/s through
    the origin, what the simulation leaves out of a decode step is the same at every tp: at
    the decode-heavy rows (outputs >= 512 tokens, <= 16 users) measured-minus-predicted ITL
    differs between tp 8 and tp 2 by -1.3..+0.1 ms, where it grew by 1.6..2.9 ms (the per-GEMM
    time that does not shrink with tp, charged as bandwidth that does)."""
    t = table[(table.source == AIC) & table.gated & (table.metric == "itl_mean_s")].copy()
    meta = {c.name: (c.tp, c.output_len, c.concurrency, c.prompt_len) for c in load_cases() if c.source == AIC}
    for i, k in enumerate(("tp", "osl", "c", "isl")):
        t[k] = t.case.map(lambda n, i=i: meta[n][i])
    t["gap"] = t.measured - t.predicted
    p = t[(t.osl >= 512) & (t.c <= 16)].pivot_table(index=["isl", "osl", "c"], columns="tp", values="gap")
    d = (p[8] - p[2]).dropna()
    assert len(d) == 8 and (d.abs() <= 1.5e-3).all() and abs(d.mean()) <= 0.75e-3


def test_the_multi_head_models_itl_misses_are_its_decode_attention_read(table):
    """Llama-2-7B, the one model whose cache has a K/V head per query head, was predicted
    28-43% fast at vLLM's decode steps while the GQA models were not; vLLM's measured
    FlashAttention-3 MHA read share (``mha_decode_read_share``, flash-attention #1572) takes
    at least 7 points off each of its misses, leaving -9..-21% (since the decode GEMMs got the
    published H100 line, h100-sxm-8x: its steps are mostly K/V reads, which that line does not
    speed up), and the ITL errors of all runs average within 8% (signed)."""
    t = table[(table.source == TRAINVAL) & table.gated & (table.metric == "itl_mean_s")]
    assert len(t) >= 12 and abs(t.rel_error.mean()) <= 0.08
    mha = t[t.case.str.contains("llama-2-7b")].sort_values(["case", "stage"])
    assert len(mha) == 3 and (mha.rel_error.abs() <= 0.22).all()
    cases = [c for c in load_cases() if c.source == TRAINVAL and not c.skip and "llama-2-7b" in c.name]
    full = compare(cases=cases, engine_overrides={"mha_decode_read_share": 1.0})
    f = full[full.gated & (full.metric == "itl_mean_s")].sort_values(["case", "stage"])
    assert len(f) == 3 and (f.rel_error < -0.25).all()
    assert (mha.rel_error.abs().to_numpy() <= f.rel_error.abs().to_numpy() - 0.07).all()


def test_async_scheduling_explains_most_of_the_ttft_gap(table):
    """The same runs without vLLM's default async scheduling (the engine's other settings
    kept): TTFT misses by a median 0.22 (0.28 before the decode GEMMs got their measured read
    rate), almost all of it optimistic; with it the one-iteration admission lag takes a third
    of that off (0.143)."""
    cases = [c for c in load_cases() if c.source == TRAINVAL and not c.skip]
    sync = compare(cases=cases, engine_overrides={"async_scheduling": False})
    t = sync[sync.gated & (sync.metric == "ttft_mean_s")]
    assert float(t.rel_error.abs().median()) > 0.2
    assert (t.rel_error < 0).mean() >= 0.8
    assert _median(table, TRAINVAL, "ttft_mean_s") < 0.7 * float(t.rel_error.abs().median())


def test_summary_gives_the_medians_the_gates_read(table):
    from validate.serving_records import summary
    s = summary(table)
    assert set(s) == {TRAINVAL, AIC}
    assert s[TRAINVAL]["ttft_mean_s"]["rows"] == 15 and s[TRAINVAL]["e2e_mean_s"]["rows"] == 12
    for source in (TRAINVAL, AIC):
        for metric, v in s[source].items():
            assert v["median_abs_error"] == pytest.approx(_median(table, source, metric), rel=1e-12)
            assert v["gate"] == GATES[metric]

