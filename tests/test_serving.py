"""The serving simulation's parts: request streams and traces, the KV budget, iteration
costs, the FCFS scheduler, routers, metrics, capacity, and the two commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import run_cli, run_json
from simulator.ops import decode_attention_time_s, prefill_attention_time_s
from simulator.errors import PolicyError, WorkloadError
from simulator.hardware import load_profile
from simulator.models import get_model
from simulator.serving import metrics
from simulator.serving.capacity import capacity, load_of, max_rate
from simulator.serving.costs import IterationCost, chunk_attention_work, custom_allreduce_time_s
from simulator.serving.engines import get_engine, list_engines
from simulator.serving.kvcache import kv_budget
from simulator.serving.metrics import SLO
from simulator.serving.requests import LengthDist, RequestStream, StreamSpec, load_trace
from simulator.serving.schedulers import SCHEDULERS
from simulator.serving.simulate import ServingInfeasible, simulate
from simulator.units import GiB

H100 = load_profile("dgx-h100-8x")


# ------------------------------------------------------------------ request streams
def test_poisson_arrivals_have_the_rate_and_exponential_gaps():
    s = StreamSpec(num_requests=20000, prompt_len=10, output_len=10, seed=3).at_rate(4.0)
    gaps = np.diff(s.arrival_s)
    assert s.arrival_s[0] == 0.0
    assert gaps.mean() == pytest.approx(0.25, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)  # exponential: CV 1


def test_gamma_burstiness_sets_the_squared_coefficient_of_variation():
    for b in (0.25, 4.0):
        gaps = np.diff(StreamSpec(num_requests=20000, prompt_len=1, output_len=1, burstiness=b,
                                  seed=1).at_rate(2.0).arrival_s)
        assert gaps.mean() == pytest.approx(0.5, rel=0.03)
        assert (gaps.std() / gaps.mean()) ** 2 == pytest.approx(1.0 / b, rel=0.06)


def test_streams_are_seeded_and_two_rates_are_the_same_requests_time_scaled():
    spec = StreamSpec(num_requests=50, prompt_len=100, output_len=20, length_dist=LengthDist.parse("lognormal"),
                      seed=7)
    a, b = spec.at_rate(2.0), spec.at_rate(8.0)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    np.testing.assert_allclose(a.arrival_s, 4.0 * b.arrival_s)
    c = StreamSpec(num_requests=50, prompt_len=100, output_len=20, length_dist=LengthDist.parse("lognormal"),
                   seed=8).at_rate(2.0)
    assert not np.array_equal(a.prompt_tokens, c.prompt_tokens)


@pytest.mark.parametrize("text, lo, hi", [("fixed", 300, 300), ("uniform:0.5", 150, 450), ("uniform", 150, 450),
                                          ("lognormal:0.5", 1, 10 ** 6)])
def test_length_distributions_keep_their_mean_and_range(text, lo, hi):
    x = LengthDist.parse(text).sample(300, 40000, np.random.default_rng(0))
    assert x.min() >= lo and x.max() <= hi
    assert x.mean() == pytest.approx(300, rel=0.01)


@pytest.mark.parametrize("text", ["normal", "uniform:1.5", "lognormal:x", "fixed:2", "lognormal:9"])
def test_bad_length_distributions_are_named(text):
    with pytest.raises(WorkloadError, match="--length-dist"):
        LengthDist.parse(text)


def test_shipped_traces_load(tmp_path):
    chat, summ = load_trace("chat"), load_trace("summarization")
    assert chat.num_requests == summ.num_requests == 500
    assert chat.prompt_tokens.mean() < 400 < summ.prompt_tokens.mean()
    assert np.all(chat.prefix_tokens == 64) and np.all(chat.prefix_group == 0)
    assert np.all(np.diff(chat.arrival_s) >= 0)


def test_traces_in_csv_and_jsonl(tmp_path):
    (tmp_path / "t.csv").write_text("# a comment\nprompt_tokens,arrival_s,output_tokens\n10,0.5,3\n20,0.1,4\n")
    t = load_trace(str(tmp_path / "t.csv"))
    np.testing.assert_array_equal(t.arrival_s, [0.1, 0.5])  # sorted by arrival
    np.testing.assert_array_equal(t.prompt_tokens, [20, 10])
    (tmp_path / "t.jsonl").write_text('{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 2}\n\n'
                                      '{"arrival_s": 1.5, "prompt_tokens": 7, "output_tokens": 1, "prefix_tokens": 3, '
                                      '"prefix_group": 2}\n')
    j = load_trace(str(tmp_path / "t.jsonl"))
    np.testing.assert_array_equal(j.prefix_group, [-1, 2])


@pytest.mark.parametrize("body, message", [
    ("arrival_s,prompt_tokens\n0,5\n", "missing column 'output_tokens'"),
    ("arrival_s,prompt_tokens,output_tokens,ouput\n0,5,1,2\n", "unknown column 'ouput'"),
    ("arrival_s,prompt_tokens,output_tokens\n0,5.5,1\n", "line 2: prompt_tokens: '5.5' is not an integer"),
    ("arrival_s,prompt_tokens,output_tokens\n-1,5,1\n", "line 2: arrival_s"),
    ("arrival_s,prompt_tokens,output_tokens\n0,5,0\n", "line 2: output_tokens: 0 must be >= 1"),
    ("arrival_s,prompt_tokens,output_tokens\n0,5\n", "line 2: 2 fields, the header has 3"),
    ("arrival_s,prompt_tokens,output_tokens\n", "no requests"),
    ("", "empty"),
])
def test_malformed_traces_are_one_line_errors_naming_file_line_and_column(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(WorkloadError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        load_trace(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 2}\n{"arrival_s": 0,\n')
    with pytest.raises(WorkloadError, match="line 2: not valid JSON"):
        load_trace(str(path))


# ------------------------------------------------------------------ KV budget and costs
def test_kv_blocks_of_a_7b_model_on_one_h100():
    """Llama-2-7B on an 80 GiB GPU at 90%: 72 GiB - 12.55 GiB of weights - the activations
    of 2048 tokens and 256 sequences' logits, in 16-token blocks of 16 x 32 layers x 2 x 4096
    x 2 bytes = 8 MiB."""
    m = get_model("llama-2-7b")
    b = kv_budget(m, H100, "fp16", 1, 1, 16, 0.9, 2048, 256)
    assert b.block_bytes == 16 * 32 * 2 * 4096 * 2
    assert b.weights_bytes == m.weight_bytes("fp16")
    act = 2048 * (3 * 4096 + 2 * 4096 + 2 * 4096 + 3 * 11008) * 2 + 256 * 32000 * 4
    assert b.activations_bytes == act
    assert b.num_blocks == math.floor((72 * GiB - m.weight_bytes("fp16") - act) / b.block_bytes)
    assert b.num_blocks > 7000  # ~58 GiB of cache


def test_tensor_parallelism_splits_the_weights_and_the_kv_heads():
    m = get_model("llama-2-70b")  # 8 KV heads
    one = kv_budget(m, H100, "fp16", 1, 1, 16, 0.9, 2048, 256)
    four = kv_budget(m, H100, "fp16", 4, 1, 16, 0.9, 2048, 256)
    assert not one.feasible and "no room for the KV cache" in one.reason()
    assert four.feasible and four.block_bytes == one.block_bytes / 4
    assert four.weights_bytes == pytest.approx(m.weight_bytes("fp16") / 4, rel=0.01)


def test_chunk_attention_is_prefill_attention_for_a_fresh_prompt():
    m = get_model("llama-3-8b")
    cost = IterationCost.build(m, H100, "bf16", max_tokens=4096, max_seqs=8)
    for s in (1, 17, 900):
        flop, nbytes = chunk_attention_work(m, [s], [0], "bf16")
        assert cost.prefill_attention_s(flop, nbytes) == pytest.approx(
            float(prefill_attention_time_s(m, H100.device, 1, s, "bf16")), rel=1e-12)
    # Chunks after c0 cached tokens do the rest of the prompt's attention: the FLOP of a
    # prompt of 300 split 100 + 200 add up to the whole.
    whole = chunk_attention_work(m, [300], [0], "bf16")[0]
    parts = chunk_attention_work(m, [100, 200], [0, 100], "bf16")[0]
    assert parts == pytest.approx(whole, rel=1e-12)


def test_attention_per_request_pays_the_masked_pairs_and_the_row_copy():
    """The executor engine's attention: the chunk's explicit mask computes all q x (c0 + q)
    pairs, and each request's K/V rows are copied out of the pool (read + written) before
    it attends; the fused-kernel engines pay neither."""
    m = get_model("llama-2-7b")
    cpu = load_profile("cpu-2core")
    q, c0 = np.array([100, 40]), np.array([0, 60])
    causal, nbytes = chunk_attention_work(m, q, c0, "fp32")
    full, nbytes_m = chunk_attention_work(m, q, c0, "fp32", masked=True)
    assert full == pytest.approx(float((4 * q * (c0 + q)).sum()) * m.q_dim, rel=1e-12)
    assert causal == pytest.approx(float((2 * q * (q + 1 + 2 * c0)).sum()) * m.q_dim, rel=1e-12)
    assert nbytes_m == nbytes
    ex = IterationCost.build(m, cpu, "fp32", max_tokens=512, max_seqs=8, attention_ops_per_request=3)
    fused = IterationCost.build(m, cpu, "fp32", max_tokens=512, max_seqs=8)
    kv_row = m.kv_bytes_per_token("fp32")  # K and V of one token in one layer
    mem = cpu.device.mem_bytes_per_s
    assert ex.gather_s(200) == pytest.approx(2 * 200 * kv_row / mem, rel=1e-12)
    t_keys = ex.prefill_attention_s(full, nbytes_m, chunks=2, keys=200)
    t_none = ex.prefill_attention_s(full, nbytes_m, chunks=2, keys=0)
    assert t_keys - t_none == pytest.approx(ex.gather_s(200), rel=1e-9)
    assert fused.prefill_attention_s(full, nbytes_m, chunks=2, keys=200) == pytest.approx(
        fused.prefill_attention_s(full, nbytes_m, chunks=2), rel=1e-12)
    per_request = 4 * decode_attention_time_s(m, ex.dev, 1, 150.0, "fp32", ops=3)
    assert float(ex.decode_attention_s(600.0, 4)) == pytest.approx(float(per_request) + ex.gather_s(600.0), rel=1e-9)


def test_mha_decode_read_share_slows_only_the_multi_head_caches_decode_read():
    """vLLM's FlashAttention-3 decode reads a multi-head (MHA) cache at 0.64 of the copy rate
    (flash-attention #1572): Llama-2-7B's decode attention over 50k keys costs 1/0.64 of
    the device's read time, GQA Llama-3-8B's and the prefill chunks' are unchanged."""
    from simulator.serving.engines.vllm import MHA_DECODE_READ_SHARE
    assert MHA_DECODE_READ_SHARE == pytest.approx(1849 / 2890)
    assert get_engine("vllm").mha_decode_read_share == MHA_DECODE_READ_SHARE
    assert get_engine("continuous").mha_decode_read_share == 1.0
    keys = 50_000.0
    for name, slowed in (("llama-2-7b", True), ("llama-3-8b", False)):
        m = get_model(name)
        base = IterationCost.build(m, H100, "fp16", max_tokens=64, max_seqs=8)
        eng = IterationCost.build(m, H100, "fp16", max_tokens=64, max_seqs=8, mha_decode_read_share=0.64)
        read = m.kv_bytes_per_token("fp16") * keys / H100.device.mem_bytes_per_s
        launch = H100.device.launch_s
        assert float(base.decode_attention_s(keys)) == pytest.approx(read + launch, rel=1e-9)
        assert float(eng.decode_attention_s(keys)) == pytest.approx((read / 0.64 if slowed else read) + launch,
                                                                    rel=1e-9)
        flop, nbytes = chunk_attention_work(m, [200], [300], "fp16")
        assert eng.prefill_attention_s(flop, nbytes) == base.prefill_attention_s(flop, nbytes)
    for bad in (0, -0.5, 1.5, float("nan"), True):
        with pytest.raises(PolicyError, match="mha_decode_read_share must be within"):
            get_engine("vllm", mha_decode_read_share=bad)


def test_a_decode_run_is_its_iterations_one_by_one():
    m = get_model("llama-2-13b")
    cost = IterationCost.build(m, H100, "fp16", tp=2, pp=2, max_tokens=512, max_seqs=64)
    run = cost.decode_run_s(40, 40 * 700.0, 5)
    one = [cost.time_s(40, 40, decodes=40, decode_context_sum=40 * 700.0 + 40 * j) for j in range(5)]
    np.testing.assert_allclose(run, one, rtol=1e-12)
    assert run[4] > run[0]  # longer contexts read more cache


def test_offloaded_weights_stream_per_layer_beside_compute():
    m = get_model("llama-2-7b")
    local = IterationCost.build(m, H100, "fp16", max_tokens=64, max_seqs=8)
    half = IterationCost.build(m, H100, "fp16", max_tokens=64, max_seqs=8, weights_cpu_frac=0.5)
    t_local, t_half = local.time_s(1, 1, decodes=1, decode_context_sum=100), half.time_s(1, 1, decodes=1,
                                                                                        decode_context_sum=100)
    h2d = H100.links.h2d_bytes_per_s
    layer_load = 0.5 * m.layer_weight_bytes("fp16") / h2d
    head_load = 0.5 * (m.lm_head_tensor().nbytes("fp16") + 2 * 4096) / h2d  # LM head and the final norm
    assert t_half > 10 * t_local
    # The link sets the pace: L layer loads, the last layer hiding the head's load.
    assert t_half == pytest.approx(m.num_layers * layer_load + head_load, rel=1e-12)


# ------------------------------------------------------------------ scheduling
def _sim(stream, **engine):
    return simulate(get_model("llama-2-7b"), H100, stream, get_engine("continuous", **engine))


def test_registries_hold_the_engines_and_the_fcfs_scheduler():
    assert {"continuous", "vllm"} <= set(list_engines())
    assert "fcfs" in SCHEDULERS
    with pytest.raises(PolicyError, match="--engine: unknown serving engine 'tgi'"):
        get_engine("tgi")


def test_fcfs_preempts_the_latest_admitted_request_first():
    n = 6
    stream = RequestStream(np.arange(n) * 1e-3, np.full(n, 300), np.full(n, 200))
    r = _sim(stream, num_gpu_blocks=120)  # 6 x 32 blocks at the end: they cannot all stay
    pre = r.req.preemptions
    assert pre.sum() > 0 and pre[0] == 0
    assert np.argmax(pre > 0) >= 2  # the first requests keep running
    assert np.all(np.diff(r.req.finish[pre == 0]) >= 0)


def test_swap_preemption_moves_blocks_and_keeps_the_computed_context():
    n = 6
    stream = RequestStream(np.arange(n) * 1e-3, np.full(n, 300), np.full(n, 200))
    rec = _sim(stream, num_gpu_blocks=120)
    swap = _sim(stream, num_gpu_blocks=120, preemption="swap", swap_space_bytes=8 * GiB)
    assert swap.req.preemptions.sum() > 0 and rec.req.preemptions.sum() > 0
    assert swap.prefill_tokens == n * 300  # nothing recomputed
    assert rec.prefill_tokens > n * 300


def test_chunked_prefill_respects_the_token_budget_and_runs_beside_decodes():
    stream = RequestStream(np.array([0.0, 0.01]), np.array([64, 3000]), np.array([50, 5]))
    r = _sim(stream, chunked_prefill=True, max_num_batched_tokens=512)
    plain = _sim(stream, max_num_batched_tokens=4096)
    tpot = metrics.per_request(r)["tpot_s"][0]
    assert tpot < metrics.per_request(plain)["tpot_s"][0]  # the long prompt no longer stalls request 0
    assert r.scheduled_batches > plain.scheduled_batches


def test_a_prompt_over_the_budget_without_chunking_is_an_error():
    stream = RequestStream(np.array([0.0]), np.array([3000]), np.array([5]))
    with pytest.raises(PolicyError, match="--max-num-batched-tokens 2048 is smaller than a prompt of 3000"):
        _sim(stream, max_num_batched_tokens=2048)


def test_prefix_caching_skips_the_shared_blocks():
    n = 20
    stream = RequestStream(np.arange(n) * 0.5, np.full(n, 1000), np.full(n, 2), np.full(n, 900),
                           np.zeros(n, np.int64))
    cold = _sim(stream)
    warm = _sim(stream, prefix_caching=True)
    ttft_c, ttft_w = metrics.per_request(cold)["ttft_s"], metrics.per_request(warm)["ttft_s"]
    assert ttft_w[0] == pytest.approx(ttft_c[0])  # the first request fills the cache
    assert np.all(ttft_w[1:] < 0.5 * ttft_c[1:])  # 896 of 1000 tokens cached (whole blocks)


def test_max_num_seqs_bounds_the_batch():
    stream = StreamSpec(num_requests=200, prompt_len=20, output_len=50, seed=0).at_rate(1e6)
    r = _sim(stream, max_num_seqs=16)
    assert r.series["running"].max() == 16


def test_the_largest_request_must_fit_the_cache():
    stream = RequestStream(np.array([0.0]), np.array([3000]), np.array([1000]))
    with pytest.raises(ServingInfeasible, match="infeasible: .* holds 1600 tokens .* needs 250 blocks"):
        _sim(stream, num_gpu_blocks=100)


def test_routers_spread_the_requests():
    stream = StreamSpec(num_requests=400, prompt_len=100, output_len=50, seed=2).at_rate(40.0)
    m = get_model("llama-2-7b")
    rr = simulate(m, H100, stream, get_engine("continuous"), replicas=3, router="round_robin")
    np.testing.assert_array_equal(rr.req.server, np.arange(400) % 3)
    lo = simulate(m, H100, stream, get_engine("continuous"), replicas=3, router="least_outstanding")
    assert np.bincount(lo.req.server).min() > 100
    assert np.nanmean(lo.req.finish - lo.req.arrival) <= np.nanmean(rr.req.finish - rr.req.arrival) * 1.001


def test_pipelined_replicas_run_virtual_engines():
    stream = StreamSpec(num_requests=300, prompt_len=200, output_len=100, seed=1).at_rate(50.0)
    m = get_model("llama-2-13b")
    one = simulate(m, H100, stream, get_engine("continuous"), tp=1, pp=1)
    two = simulate(m, H100, stream, get_engine("continuous"), tp=1, pp=2)
    assert set(np.unique(two.req.server)) == {0, 1}
    assert two.blocks_per_server == two.kv.num_blocks // 2
    assert np.nanmean(two.req.finish - two.req.arrival) < np.nanmean(one.req.finish - one.req.arrival)



def test_async_scheduling_admits_an_arrival_one_iteration_later():
    """vLLM's async scheduling: the batch after the running one is already formed, so a
    request that reaches a busy server joins the one after it; an idle server takes it at
    once, and a lone request's decodes do not wait."""
    m = get_model("llama-2-7b")
    lone = RequestStream(np.array([0.0]), np.array([100]), np.array([50]))
    sync_1, async_1 = (simulate(m, H100, lone, get_engine("continuous", async_scheduling=a)) for a in (False, True))
    assert async_1.req.first_token[0] == sync_1.req.first_token[0]
    assert async_1.req.finish[0] == sync_1.req.finish[0]
    ends = simulate(m, H100, lone, get_engine("continuous"), steady_runs=False).series["time_s"]  # one per iteration
    t = 0.5 * (ends[10] + ends[11])  # inside iteration 11
    two = RequestStream(np.array([0.0, t]), np.array([100, 100]), np.array([50, 5]))
    s, a = (simulate(m, H100, two, get_engine("continuous", async_scheduling=x), steady_runs=False)
            for x in (False, True))
    assert s.req.first_scheduled[1] == pytest.approx(ends[11], rel=1e-12)
    assert a.req.first_scheduled[1] == pytest.approx(ends[12], rel=1e-12)
    lag = (a.req.first_token[1] - a.req.arrival[1]) - (s.req.first_token[1] - s.req.arrival[1])
    assert lag == pytest.approx(ends[12] - ends[11], rel=0.02)  # one decode iteration


def test_vllm_engine_schedules_one_step_ahead_with_its_measured_step_gap():
    e = get_engine("vllm")
    assert e.async_scheduling and e.custom_allreduce
    assert e.overhead_s == pytest.approx(160e-6)  # vLLM PR #11133: 150-170 us between CUDA-graph steps
    assert not get_engine("continuous").async_scheduling



@pytest.mark.parametrize("profile, tokens, seqs", [
    ("h100-sxm-8x", 8192, 1024), ("h200", 8192, 1024),  # >= 70 GiB, not an A100
    ("a100-80g-sxm", 2048, 256),  # 80 GB, but vLLM keeps the A100 on the small budget (PR #17885)
    ("t4-gcp", 2048, 256), ("cpu-2core", 2048, 256),  # a small GPU; a CPU profile keeps the engine's own
])
def test_vllm_sizes_its_batch_limits_by_the_gpu_as_vllm_serve_does(profile, tokens, seqs):
    e = get_engine("vllm", hw=load_profile(profile))
    assert (e.max_num_batched_tokens, e.max_num_seqs) == (tokens, seqs)


def test_the_users_flags_win_over_the_engines_hardware_defaults():
    h100 = load_profile("h100-sxm-8x")
    e = get_engine("vllm", hw=h100, max_num_batched_tokens=4096)
    assert (e.max_num_batched_tokens, e.max_num_seqs) == (4096, 1024)
    assert get_engine("continuous", hw=h100) == get_engine("continuous")  # no hardware defaults of its own
    args = ("simulate", "--model", "llama-2-7b", "--hardware", "h100-sxm-8x", "--engine", "vllm", "--rate", "2",
            "--num-requests", "20", "--prompt-len", "3000", "--output-len", "4")
    out, small = run_json(*args), run_json(*args, "--max-num-batched-tokens", "2048")
    # a 3000-token prompt fits one 8192-token step but takes two at 2048: more iterations
    assert out["simulated_iterations"] < small["simulated_iterations"]

def test_custom_allreduce_takes_one_or_two_stages_by_size_then_the_ring():
    bw, lat = 370e9, 5e-6
    ring = lambda s, tp: 2 * (tp - 1) * lat + 2 * (tp - 1) / tp * s / bw  # noqa: E731
    for tp, size, expect in [(2, 48 * 2**20, lat + 48 * 2**20 / bw),  # tp 2: always one stage
                             (4, 256 * 2**10, lat + 3 * 256 * 2**10 / bw),  # < 512 KiB: one stage
                             (4, 4 * 2**20, 2 * lat + 1.5 * 4 * 2**20 / bw),  # two stages
                             (4, 40 * 2**20, ring(40 * 2**20, 4)),  # over its 32 MiB buffer
                             (8, 128 * 2**10, lat + 7 * 128 * 2**10 / bw),
                             (8, 300 * 2**10, ring(300 * 2**10, 8))]:  # over 256 KiB at tp 8
        got = custom_allreduce_time_s(size, tp, bw, lat, ring(size, tp))
        assert float(got) == pytest.approx(expect, rel=1e-12), (tp, size)


def test_bf16_beyond_the_custom_buffer_takes_symmetric_memory_then_the_ring():
    # torch symmetric memory takes only bf16 (vLLM symm_mem.py), up to 64 MiB at tp 6 and 8 on
    # Hopper; its time is the two-stage pass, which matches vLLM PR #42324's 8 x H100 multimem
    # figures (14 / 46 / 165 us at 1 / 8 / 32 MiB) within 10% at 370 GB/s and 5 us.
    bw, lat = 370e9, 5e-6
    ring = lambda s, tp: 2 * (tp - 1) * lat + 2 * (tp - 1) / tp * s / bw  # noqa: E731
    two = lambda s, tp: 2 * lat + 2 * (tp - 1) / tp * s / bw  # noqa: E731
    for size, measured_us in ((2**20, 14), (8 * 2**20, 46), (32 * 2**20, 165)):
        got = float(custom_allreduce_time_s(size, 8, bw, lat, ring(size, 8), "bf16"))
        assert got == pytest.approx(two(size, 8), rel=1e-12) and got == pytest.approx(measured_us * 1e-6, rel=0.1)
        assert float(custom_allreduce_time_s(size, 8, bw, lat, ring(size, 8), "fp16")) == pytest.approx(
            ring(size, 8), rel=1e-12)  # fp16 goes to NCCL
    big = 80 * 2**20  # beyond symmetric memory's 64 MiB
    assert float(custom_allreduce_time_s(big, 8, bw, lat, ring(big, 8), "bf16")) == pytest.approx(ring(big, 8))


# ------------------------------------------------------------------ metrics
def test_metrics_of_a_hand_checked_run():
    stream = RequestStream(np.array([0.0, 10.0]), np.array([100, 100]), np.array([11, 1]))
    r = _sim(stream)
    cols = metrics.per_request(r)
    q = r.req
    assert cols["ttft_s"][0] == q.first_token[0]
    assert cols["tpot_s"][0] == pytest.approx((q.finish[0] - q.first_token[0]) / 10)
    assert np.isnan(cols["tpot_s"][1]) and cols["e2e_s"][1] == cols["ttft_s"][1]
    s = metrics.summary(r, SLO(ttft_s=1.0, tpot_s=1e-6))
    assert s["goodput_rps"] == pytest.approx(1 / s["duration_s"])  # only the one-token request meets TPOT
    assert s["throughput_tok_s"] == pytest.approx(12 / (q.finish[1] - 0.0))
    assert s["num_requests"] == 2 and s["ttft_s"]["p50"] == pytest.approx(np.mean(cols["ttft_s"]))


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("50ms", 0.05), ("200us", 2e-4), ("0.5", 0.5),
                                           ("2min", 120.0)])
def test_slo_durations(text, seconds):
    assert SLO.parse(text, None).ttft_s == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["fast", "1 parsec", "-1s", "0"])
def test_bad_slos_name_the_flag(text):
    with pytest.raises(WorkloadError, match="--tpot-slo"):
        SLO.parse(None, text)


# ------------------------------------------------------------------ capacity
def test_max_rate_is_the_edge_of_the_slos():
    m = get_model("llama-2-7b")
    spec = StreamSpec(num_requests=200, prompt_len=400, output_len=60, seed=0)
    slo = SLO(ttft_s=0.5, tpot_s=0.03)
    eng = get_engine("continuous")
    cap = max_rate(m, H100, spec, eng, slo)
    assert cap.feasible and cap.max_rate_rps > 1
    assert cap.ttft_p99_s <= 0.5 and cap.tpot_p99_s <= 0.03
    from dataclasses import replace
    above = 1.05 * cap.max_rate_rps
    n = max(200, math.ceil(5 * above * (0.5 + 0.03 * 59)))
    s = metrics.summary(simulate(m, H100, replace(spec, num_requests=n).at_rate(above), eng), slo)
    assert load_of(s, slo) > 1.0


def test_capacity_for_a_rate_counts_replicas_gpus_and_cost():
    m = get_model("llama-2-7b")
    spec = StreamSpec(num_requests=100, prompt_len=400, output_len=60, seed=0)
    res = capacity(m, load_profile("a100-80g-sxm"), spec, get_engine("continuous"), SLO(1.0, 0.05),
                   target_rate_rps=100.0, gpu_hour_usd=2.0)
    b = res.best
    assert res.replicas == math.ceil(100.0 / b.max_rate_rps) and res.gpus == res.replicas * b.gpus
    assert res.usd_per_million_tokens == pytest.approx(res.gpus * 2.0 / 3600 / (100.0 * 60) * 1e6)


def test_capacity_reports_an_infeasible_model():
    m = get_model("llama-2-70b")  # 129 GiB of weights on one 80 GiB GPU
    spec = StreamSpec(num_requests=50, prompt_len=100, output_len=10, seed=0)
    res = capacity(m, load_profile("a100-80g-sxm"), spec, get_engine("continuous"), SLO(1.0, 0.05))
    assert not res.feasible and "infeasible" in res.reason and "no room for the KV cache" in res.reason
    assert res.to_dict()["max_rate_rps"] == 0.0


# ------------------------------------------------------------------ commands
SIM = ("simulate", "--model", "llama-2-7b", "--hardware", "dgx-h100-8x")


def test_simulate_json_has_the_interface_keys(tmp_path):
    out = run_json(*SIM, "--rate", "5", "--num-requests", "50", "--prompt-len", "200", "--output-len", "20",
                   "--ttft-slo", "1s", "--tpot-slo", "50ms", "--out", str(tmp_path / "o"))
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(out[key]) == {"p50", "p90", "p99", "mean"}
    for key in ("throughput_tok_s", "requests_per_s", "goodput_rps", "preemptions", "num_requests",
                "simulated_iterations", "wall_s"):
        assert key in out
    assert out["num_requests"] == 50 and out["goodput_rps"] == pytest.approx(out["requests_per_s"])
    import pandas as pd
    table = pd.read_csv(tmp_path / "o" / "requests.csv")
    assert list(table.columns) == list(metrics.TABLE_COLUMNS) and len(table) == 50
    assert table.ttft_s.quantile(0.5) == pytest.approx(out["ttft_s"]["p50"])
    for name in ("occupancy.csv", "summary.json", "latency_cdf.png", "occupancy.png", "report.html"):
        assert (tmp_path / "o" / name).stat().st_size > 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["num_requests"] == 50
    assert "data:image/png;base64," in (tmp_path / "o" / "report.html").read_text()


def test_simulate_closed_loop_and_trace_and_replicas():
    c = run_json(*SIM, "--concurrency", "4", "--num-requests", "20", "--prompt-len", "100", "--output-len", "10")
    assert c["num_requests"] == 20
    t = run_json(*SIM, "--trace", "summarization", "--num-requests", "30", "--gpus", "2", "--router",
                 "least_outstanding")
    assert t["replicas"] == 2 and t["gpus"] == 2 and t["num_requests"] == 30


@pytest.mark.parametrize("args, message", [
    (("--rate", "0", "--num-requests", "5", "--prompt-len", "5", "--output-len", "5"),
     "--rate must be a number of requests per second > 0, got 0.0"),
    (("--rate", "-2", "--num-requests", "5", "--prompt-len", "5", "--output-len", "5"), "--rate must be"),
    (("--rate", "1", "--num-requests", "5", "--prompt-len", "5", "--output-len", "5", "--ttft-slo", "soon"),
     "--ttft-slo: 'soon' is not a duration"),
    (("--num-requests", "5", "--prompt-len", "5", "--output-len", "5"), "give one of --rate"),
    (("--rate", "1", "--prompt-len", "5", "--output-len", "5"), "--num-requests is required without --trace"),
    (("--rate", "1", "--trace", "nope.csv"), "--trace: no such file 'nope.csv'"),
    (("--rate", "1", "--num-requests", "5", "--prompt-len", "5", "--output-len", "5", "--engine", "x"),
     "--engine: unknown serving engine 'x'"),
    (("--rate", "1", "--num-requests", "5", "--prompt-len", "5", "--output-len", "5", "--gpus", "3", "--tp", "2"),
     "--gpus 3 is not a multiple of --tp 2"),
])
def test_simulate_bad_inputs_are_one_line_errors(args, message):
    code, out, err = run_cli(*SIM, *args)
    assert code == 2 and out == ""
    assert err.startswith("llmsim: error: ") and message in err and err.count("\n") == 1


def test_simulate_malformed_trace_and_infeasible_model(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0,abc,3\n")
    code, _, err = run_cli(*SIM, "--trace", str(bad))
    assert code == 2 and "line 2: prompt_tokens: 'abc' is not an integer" in err
    code, _, err = run_cli("simulate", "--model", "llama-2-70b", "--hardware", "a100-80g-sxm", "--rate", "1",
                           "--num-requests", "5", "--prompt-len", "100", "--output-len", "10")
    assert code == 2 and "infeasible" in err and "no room for the KV cache" in err and err.count("\n") == 1


def test_capacity_json_compares_profiles():
    rows = run_json("capacity", "--model", "llama-2-7b", "--hardware", "a100-80g-sxm,h100-pcie5", "--prompt-len",
                    "300", "--output-len", "40", "--num-requests", "100", "--ttft-p99", "1s", "--tpot-p99", "60ms",
                    "--rate", "20", "--gpu-hour-price", "1.5,2.5")
    assert [r["hardware"] for r in rows] == ["a100-80g-sxm", "h100-pcie5"]
    for r, price in zip(rows, (1.5, 2.5)):
        assert r["feasible"] and r["max_rate_rps"] > 0 and r["layout"] == {"tp": 1, "pp": 1}
        assert r["gpus_per_replica"] == 1 and r["gpus"] == r["replicas"] == math.ceil(20 / r["max_rate_rps"])
        assert r["usd_per_million_tokens"] == pytest.approx(r["gpus"] * price / 3600 / (20 * 40) * 1e6)


@pytest.mark.parametrize("args, message", [
    (("--tpot-p99", "50ms", "--ttft-p99", "one second"), "--ttft-p99: 'one second' is not a duration"),
    (("--tpot-p99", "50ms", "--rate", "0"), "--rate must be"),
    ((), "--ttft-p99 or --tpot-p99 is required"),
    (("--tpot-p99", "50ms", "--gpu-hour-price", "cheap"), "--gpu-hour-price: 'cheap' is not a number"),
])
def test_capacity_bad_inputs_are_one_line_errors(args, message):
    code, _, err = run_cli("capacity", "--model", "llama-2-7b", "--hardware", "a100-80g-sxm", "--prompt-len",
                           "100", "--output-len", "10", *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_capacity_of_a_model_too_large_says_infeasible():
    rows = run_json("capacity", "--model", "llama-2-70b", "--hardware", "a100-80g-sxm", "--prompt-len", "100",
                    "--output-len", "10", "--ttft-p99", "1s", "--num-requests", "20")
    assert rows[0]["feasible"] is False and "infeasible" in rows[0]["reason"] and rows[0]["max_rate_rps"] == 0.0
