"""Invariants of the serving simulation (issue 11, "Figures"), as property tests:

- with one request at a time the simulation equals ``estimate()`` of that request's batch
  of one (prefill = TTFT, prefill + decode = end-to-end);
- on the same seeded stream a uniformly faster machine never finishes a request later
  (FCFS, no preemption): exactly (all times divided by its speed) where the schedule does
  not depend on time, and up to one of its iterations with open-loop arrivals;
- KV occupancy never exceeds capacity, and every block comes back;
- every request finishes with exactly its output tokens;
- steady decode runs evaluated at once give the times of one iteration at a time.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SYNTHETIC
from simulator.cost import estimate
from simulator.hardware import load_profile, profile_from_dict
from simulator.models import get_model
from simulator.policy import Policy, Workload
from simulator.serving.engines import get_engine
from simulator.serving.requests import LengthDist, RequestStream, StreamSpec
from simulator.serving.simulate import simulate

PROPS = settings(max_examples=25, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])


def _scaled_profile(speed: float):
    """The synthetic machine with every rate x speed and every fixed cost / speed."""
    doc = copy.deepcopy(SYNTHETIC)
    g = doc["gpu"]
    for k in ("hbm_GBps", "fp16_TFLOPs", "fp32_TFLOPs"):
        g[k] *= speed
    g["kernel_launch_us"] /= speed
    g["memory_GiB"] = 64
    return profile_from_dict(doc, f"synthetic x{speed:g}")


@pytest.mark.parametrize("model, hw, tp, pp, dtype", [
    ("llama-3-8b", "dgx-h100-8x", 1, 1, "bf16"),
    ("llama-2-70b", "dgx-h100-8x", 4, 2, "fp16"),
    ("mixtral-8x7b", "dgx-h100-8x", 2, 1, "bf16"),
    ("opt-1.3b", "h100-pcie5", 1, 1, "fp16"),  # measured GEMM and attention tables
    ("opt-125m", "cpu-2core", 1, 1, "fp32"),  # a CPU-only machine
])
@pytest.mark.parametrize("prompt, output", [(300, 20), (37, 1), (1000, 129)])
def test_one_request_at_a_time_equals_estimate(model, hw, tp, pp, dtype, prompt, output):
    m, prof = get_model(model), load_profile(hw)
    stream = RequestStream(np.array([0.0]), np.array([prompt]), np.array([output]))
    r = simulate(m, prof, stream, get_engine("continuous", dtype=dtype), tp=tp, pp=pp)
    e = estimate(m, prof, Workload(prompt, output), Policy(dtype=dtype, tp=tp, pp=pp))
    assert r.req.first_token[0] == pytest.approx(e.prefill_latency_s, rel=1e-12)
    # estimate() evaluates decode steps in segments at their mean context: exact where the
    # costs are affine in the context, within 1e-7 on a measured attention curve.
    assert r.req.finish[0] == pytest.approx(e.total_latency_s, rel=1e-7)
    assert r.simulated_iterations == output


@PROPS
@given(n=st.integers(1, 40), speed=st.floats(1.05, 4.0), prompt=st.integers(1, 600), output=st.integers(1, 80),
       seed=st.integers(0, 10_000), dist=st.sampled_from(["fixed", "uniform:0.9", "lognormal:0.5"]),
       arrivals=st.sampled_from(["burst", "closed"]), users=st.integers(1, 12))
def test_a_uniformly_faster_machine_runs_the_same_schedule_faster(n, speed, prompt, output, seed, dist, arrivals,
                                                                   users):
    """When nothing arrives while the server works except at its iteration ends (a burst at
    t = 0, or a closed loop without think time), the schedule does not depend on time: every
    instant of the faster machine is the slower machine's divided by the speed."""
    spec = StreamSpec(num_requests=n, prompt_len=prompt, output_len=output, length_dist=LengthDist.parse(dist),
                      seed=seed)
    stream = spec.closed(users) if arrivals == "closed" else spec.at_rate(1e12)
    if arrivals == "burst":
        stream = RequestStream(np.zeros(n), stream.prompt_tokens, stream.output_tokens)
    eng = get_engine("continuous", max_num_batched_tokens=4096, max_num_seqs=512)
    m = get_model("llama-2-7b")
    slow = simulate(m, _scaled_profile(1.0), stream, eng)
    fast = simulate(m, _scaled_profile(speed), stream, eng)
    np.testing.assert_allclose(fast.req.finish * speed, slow.req.finish, rtol=1e-9)
    np.testing.assert_allclose(fast.req.first_token * speed, slow.req.first_token, rtol=1e-9)


@PROPS
@given(n=st.integers(1, 40), rate=st.floats(0.5, 200.0), speed=st.floats(1.05, 4.0),
       prompt=st.integers(1, 600), output=st.integers(1, 80), seed=st.integers(0, 10_000),
       dist=st.sampled_from(["fixed", "uniform:0.9", "lognormal:0.5"]))
def test_a_faster_machine_never_finishes_a_request_later(n, rate, speed, prompt, output, seed, dist):
    """Open-loop arrivals (FCFS, no preemption). Iteration-level scheduling is not preemptive,
    so a request that arrives just after the faster machine began an iteration waits for it
    while the slower machine, still busy, may take it at once at its next iteration (this
    test's search found such streams); a request may therefore finish later by at most one
    iteration of the faster machine, never by more."""
    spec = StreamSpec(num_requests=n, prompt_len=prompt, output_len=output, length_dist=LengthDist.parse(dist),
                      seed=seed)
    stream = spec.at_rate(rate)
    eng = get_engine("continuous", max_num_batched_tokens=4096, max_num_seqs=512)
    m = get_model("llama-2-7b")
    slow = simulate(m, _scaled_profile(1.0), stream, eng)
    fast = simulate(m, _scaled_profile(speed), stream, eng)
    assert slow.req.preemptions.sum() == 0 and fast.req.preemptions.sum() == 0
    one_iteration = float((fast.series["duration_s"] / fast.series["iterations"]).max())
    assert np.all(fast.req.finish <= slow.req.finish + one_iteration * (1 + 1e-9))
    assert np.all(fast.req.first_token <= slow.req.first_token + one_iteration * (1 + 1e-9))


@PROPS
@given(n=st.integers(1, 60), rate=st.floats(1.0, 400.0), blocks=st.integers(48, 400), seed=st.integers(0, 999),
       chunked=st.booleans(), prefix=st.booleans(), swap=st.booleans(), pp=st.sampled_from([1, 2]),
       closed=st.sampled_from([0, 0, 3]))
def test_kv_occupancy_stays_within_capacity_and_every_request_gets_its_tokens(n, rate, blocks, seed, chunked,
                                                                                 prefix, swap, pp, closed):
    spec = StreamSpec(num_requests=n, prompt_len=200, output_len=60, length_dist=LengthDist.parse("lognormal:0.6"),
                      seed=seed)
    stream = spec.closed(closed) if closed else spec.at_rate(rate)
    if prefix:  # every request shares a 40-token system prompt
        stream = RequestStream(stream.arrival_s, stream.prompt_tokens + 40, stream.output_tokens,
                               np.full(n, 40), np.zeros(n, np.int64), stream.concurrency, source="prefixed")
    eng = get_engine("continuous", num_gpu_blocks=blocks * pp, chunked_prefill=chunked, prefix_caching=prefix,
                     max_num_batched_tokens=512 if chunked else 2048, preemption="swap" if swap else "recompute",
                     swap_space_bytes=2 ** 24)
    hw = load_profile("dgx-h100-8x")
    try:
        r = simulate(get_model("llama-2-7b"), hw, stream, eng, pp=pp)
    except Exception as e:  # only a request larger than the whole cache may refuse to run
        assert "infeasible" in str(e)
        return
    q = r.req
    assert np.all(r.series["used_blocks"] <= r.blocks_per_server)
    assert np.all(r.series["used_blocks"] >= 0)
    assert np.all(q.generated == q.output)
    assert np.all(q.ctx == q.prompt + q.output - 1)
    assert np.all(q.blocks == 0)
    assert np.all(np.isfinite(q.finish)) and np.all(q.first_token <= q.finish)
    assert np.all(q.arrival <= q.first_scheduled) and np.all(q.first_scheduled <= q.first_token)
    assert np.all(r.series["running"] <= eng.max_num_seqs)
    if closed:  # never more than C requests in the system
        events = np.concatenate([np.stack([q.arrival, np.ones(n)], 1), np.stack([q.finish, -np.ones(n)], 1)])
        events = events[np.lexsort((events[:, 1], events[:, 0]))]
        assert np.cumsum(events[:, 1]).max() <= closed


@PROPS
@given(n=st.integers(2, 80), rate=st.floats(0.5, 100.0), seed=st.integers(0, 999), closed=st.sampled_from([0, 8]),
       replicas=st.sampled_from([1, 2]), router=st.sampled_from(["round_robin", "least_outstanding"]))
def test_steady_runs_give_the_times_of_one_iteration_at_a_time(n, rate, seed, closed, replicas, router):
    spec = StreamSpec(num_requests=n, prompt_len=128, output_len=100, length_dist=LengthDist.parse("uniform:0.9"),
                      seed=seed)
    stream = spec.closed(closed) if closed else spec.at_rate(rate)
    eng = get_engine("continuous", num_gpu_blocks=300)
    hw, m = load_profile("dgx-a100-8x"), get_model("llama-2-13b")
    a = simulate(m, hw, stream, eng, replicas=replicas, router=router)
    b = simulate(m, hw, stream, eng, replicas=replicas, router=router, steady_runs=False)
    assert a.simulated_iterations == b.simulated_iterations
    np.testing.assert_allclose(a.req.finish, b.req.finish, rtol=1e-9)
    np.testing.assert_allclose(a.req.first_token, b.req.first_token, rtol=1e-9)
    np.testing.assert_array_equal(a.req.preemptions, b.req.preemptions)
