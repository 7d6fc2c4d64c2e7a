"""The executor's continuous batching (validate/executor/serving.py): it generates exactly
the tokens of the static executor, request by request, whatever the batching, chunking and
preemption; it launches the attention operations the ``executor`` serving engine charges;
its per-request times are consistent. (Its speed against the simulation is the serving CPU
suite's job, llmsim/serving_suite.py (llmsim validate --suite serving), not a timed test.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simulator.hardware import load_profile
from simulator.policy import Policy, Workload
from simulator.serving.engines import get_engine
from simulator.serving.costs import IterationCost, chunk_attention_work
from simulator.serving.requests import RequestStream
from simulator.serving.simulate import simulate
from validate.executor import Executor
from validate.executor.errors import ExecutorError
from validate.executor.opcount import OpCounter
from validate.executor.serving import ATTENTION_OPS_PER_REQUEST, _batch_inputs, _Model, _Pool, run_stream
from validate.suite_models import ci_model_sets

MODELS = ci_model_sets()["small"]


PROMPTS, OUTPUTS = np.array([5, 40, 17, 30, 3, 16]), np.array([6, 3, 40, 1, 30, 40])
_REFERENCE: dict = {}


def _reference(model) -> list:
    """The static executor's greedy tokens for each request alone (the same prompt ids)."""
    if model.name not in _REFERENCE:
        g = torch.Generator().manual_seed(7919)
        prompts = [torch.randint(0, model.vocab_size, (int(p),), generator=g) for p in PROMPTS]
        _REFERENCE[model.name] = [
            list(Executor(model, Workload(int(p), int(o)), Policy(dtype="fp32"), device="cpu")
                 .run(prompt_ids=ids[None, :]).tokens[0]) for p, o, ids in zip(PROMPTS, OUTPUTS, prompts)]
    return _REFERENCE[model.name]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("chunked, budget, blocks", [(False, 256, 64), (True, 16, 64), (False, 256, 6)])
def test_continuous_batching_generates_the_static_executors_tokens(model, chunked, budget, blocks):
    n = len(PROMPTS)
    # Preemption case: all at once, so the schedule does not depend on the clock.
    arrival = np.zeros(n) if blocks == 6 else np.arange(n) * 0.002
    stream = RequestStream(arrival, PROMPTS, OUTPUTS)
    eng = get_engine("executor", chunked_prefill=chunked, max_num_batched_tokens=budget)
    run = run_stream(model, stream, eng, num_blocks=blocks)
    if blocks == 6:  # 6 blocks of 16 cannot hold them all: recomputed, as the simulation schedules it
        sim = simulate(model, load_profile("cpu-2core"), stream, eng.with_(num_gpu_blocks=blocks))
        assert run.req.preemptions.sum() > 0
        np.testing.assert_array_equal(run.req.preemptions, sim.req.preemptions)
    for i, ref in enumerate(_reference(model)):
        assert list(run.tokens[i]) == ref, f"request {i}"
    cols = run.per_request()
    assert np.all(cols["ttft_s"] > 0) and np.all(cols["e2e_s"] >= cols["ttft_s"])
    assert np.all(run.req.generated == stream.output_tokens)
    assert len(run.iteration_s) == len(run.batch_tokens) > 0


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_attention_costs_the_operations_the_executor_engine_charges(model):
    """Operator calls per decode request and layer: gather keys, gather values, attention."""
    m = _Model(model, torch.device("cpu"), torch.float32, 0)
    pool = _Pool(model, 64, 16, "cpu", torch.float32)

    def count(requests: int) -> int:
        segments, off = [], 0
        for r in range(requests):
            segments.append((off, 1, 20, torch.arange(r * 64, r * 64 + 21)))
            off += 1
        with torch.inference_mode(), OpCounter() as oc:
            m.forward(torch.ones(requests, dtype=torch.long), torch.full((requests,), 20), segments, pool)
        return sum(oc.counts.values())

    per_request = (count(4) - count(2)) / (2 * model.num_layers)
    assert per_request == ATTENTION_OPS_PER_REQUEST == get_engine("executor").attention_ops_per_request


def test_host_builds_the_inputs_with_the_operations_the_executor_engine_charges():
    """The torch operations that build an iteration's inputs, outside the forward: 4 per
    request (block table, slots) and 2 per iteration (tokens, positions), whatever mix of
    decodes and chunks; the executor engine charges them at the launch cost."""
    from types import SimpleNamespace

    from simulator.serving.engines.executor import HOST_OPS_PER_ITERATION, HOST_OPS_PER_REQUEST

    def count(decodes: int, chunks: int) -> int:
        n = decodes + chunks
        req = SimpleNamespace(blocks=np.full(n, 3), ctx=np.full(n, 20), target=np.full(n, 40))
        units = [(i, 1, True) for i in range(decodes)] + [(i, 8, False) for i in range(decodes, n)]
        with torch.inference_mode(), OpCounter() as oc:
            _batch_inputs(units, req, [list(range(40))] * n, [[] for _ in range(n)], list(range(64)), 16,
                          torch.device("cpu"))
        return sum(oc.counts.values())

    for decodes, chunks in ((1, 0), (3, 1), (6, 2)):
        assert count(decodes, chunks) == HOST_OPS_PER_ITERATION + HOST_OPS_PER_REQUEST * (decodes + chunks)
    eng = get_engine("executor")
    assert (eng.host_ops_per_iteration, eng.host_ops_per_request) == (HOST_OPS_PER_ITERATION, HOST_OPS_PER_REQUEST)
    m = MODELS[0]
    hw = load_profile("cpu-2core")
    bare = IterationCost.build(m, hw, "fp32", max_tokens=64, max_seqs=8, attention_ops_per_request=3)
    host = IterationCost.build(m, hw, "fp32", max_tokens=64, max_seqs=8, attention_ops_per_request=3,
                               host_ops=(HOST_OPS_PER_ITERATION, HOST_OPS_PER_REQUEST))
    launch = hw.device.launch_s
    assert host.time_s(5, 5, decodes=5, decode_context_sum=100.0) - bare.time_s(
        5, 5, decodes=5, decode_context_sum=100.0) == pytest.approx((2 + 4 * 5) * launch, rel=1e-9)
    np.testing.assert_allclose(host.decode_run_s(3, 60.0, 4) - bare.decode_run_s(3, 60.0, 4), (2 + 4 * 3) * launch,
                               rtol=1e-9)
    f, b = chunk_attention_work(m, [8], [0], "fp32", masked=True)
    assert host.time_s(10, 3, f, b, decodes=2, decode_context_sum=50.0, chunks=1) - bare.time_s(
        10, 3, f, b, decodes=2, decode_context_sum=50.0, chunks=1) == pytest.approx((2 + 4 * 3) * launch, rel=1e-9)


def test_bad_streams_are_refused():
    model = MODELS[0]
    closed = RequestStream(np.zeros(2), np.array([4, 4]), np.array([2, 2]), concurrency=1)
    with pytest.raises(ExecutorError, match="open-loop"):
        run_stream(model, closed, get_engine("executor"), num_blocks=8)
    big = RequestStream(np.zeros(1), np.array([200]), np.array([2]))
    with pytest.raises(ExecutorError, match="needs 13 blocks; the pool has 8"):
        run_stream(model, big, get_engine("executor"), num_blocks=8)


def test_the_serving_suite_simulates_each_case_at_the_operator_cost_timed_around_it():
    """llmsim/serving_suite.py re-times the profile's per-operator cost around each case and
    simulates at it: the iteration time is linear in that cost, with a slope of the operator
    calls the executor engine charges (at least the layers' elementwise operations and the
    per-request attention calls), and the timing is the profiler's own, a few microseconds."""
    from llmsim.serving_suite import op_overhead_s, suite_focus, with_op_overhead
    from simulator.engines.llmsim import ELEMENTWISE_KERNELS
    hw, model, n = load_profile("cpu-2core"), MODELS[1], 4
    eng = get_engine("executor")

    def decode_s(op_s):
        h = with_op_overhead(hw, op_s)
        assert h.device.launch_s == op_s and h.cpu.launch_s == op_s
        cost = IterationCost.build(model, h, "fp32", max_tokens=64, max_seqs=16,
                                   attention_ops_per_request=eng.attention_ops_per_request,
                                   host_ops=(eng.host_ops_per_iteration, eng.host_ops_per_request))
        return float(cost.decode_run_s(n, 40.0 * n, 1)[0])

    t = [decode_s(k * 10e-6) for k in (1, 2, 3)]
    calls = (t[1] - t[0]) / 10e-6
    assert calls == pytest.approx((t[2] - t[1]) / 10e-6, rel=1e-9)  # linear in the per-operator cost
    least = model.num_layers * (ELEMENTWISE_KERNELS[("llama", "fp32")] + eng.attention_ops_per_request * n)
    assert least <= calls <= least + 100
    op = op_overhead_s(suite_focus())
    assert 0.3e-6 < op < 1e-3
