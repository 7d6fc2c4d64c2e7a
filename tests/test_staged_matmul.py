"""Staged GEMMs: weights just copied into the executor's staging buffer are read from the
cache where one layer fits there (simulator.hardware.ComputeDevice, simulator.cost,
hardware_profiles.ops.staged_table)."""

import pathlib

import numpy as np
import pytest

from conftest import synthetic_profile
from simulator.cost import estimate
from simulator.ops import layer_matmul_time_s
from simulator.errors import ProfileError
from simulator.hardware import load_profile
from simulator.models import ModelSpec
from simulator.policy import Placement, Policy, Workload

TINY = ModelSpec(name="tiny", family="llama", hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=2,
                 ffn_dim=1408, vocab_size=1024, max_position_embeddings=512, dtype="fp32")
SHAPES = sorted({(512, 512), (512, 128), (512, 1408), (1408, 512)})


def _rows(us_per_flop: float):
    """One curve per tiny-Llama layer shape, m = 1 and 64, at a fixed time per FLOP."""
    return [{"dtype": "fp32", "k": k, "n": n, "m": [1, 64],
             "time_us": [2 * m * k * n * us_per_flop for m in (1, 64)]} for k, n in SHAPES]


def _host(staged: bool):
    # A CPU-only machine: the host is the compute device; streamed GEMMs at 1 GFLOP/s-ish,
    # staged ones twice as fast.
    cpu = {"matmul_table": _rows(1e-3)}
    if staged:
        cpu["staged_matmul_table"] = _rows(0.5e-3)
    return synthetic_profile(gpu=None, links=None, cpu=cpu)


def test_staged_curve_used_only_when_asked_and_measured():
    dev = _host(True).device
    m = np.array([1.0, 8.0, 64.0])
    flop = 2 * m * 512 * 1408
    assert dev.matmul_time_s(m, 512, 1408, "fp32", 4) == pytest.approx(flop * 1e-9)
    assert dev.matmul_time_s(m, 512, 1408, "fp32", 4, staged=True) == pytest.approx(flop * 0.5e-9)
    # No staged curve of this exact shape: the streamed curves answer.
    assert dev.matmul_time_s(m, 512, 1536, "fp32", 4, staged=True) == pytest.approx(
        dev.matmul_time_s(m, 512, 1536, "fp32", 4))
    plain = _host(False).device
    assert plain.matmul_time_s(m, 512, 1408, "fp32", 4, staged=True) == pytest.approx(flop * 1e-9)


def test_bad_staged_row_is_named():
    with pytest.raises(ProfileError, match=r"missing key cpu\.staged_matmul_table\[0\]\.time_us"):
        synthetic_profile(gpu=None, links=None, cpu={"staged_matmul_table": [{"dtype": "fp32", "k": 1, "n": 1, "m": [1]}]})


def _matmul(est, phase):
    return sum(r["time_s"] for r in est.breakdown if r["phase"] == phase and r["component"] == "matmul")


@pytest.mark.parametrize("frac", [0.0, 0.25, 1.0])
def test_streamed_share_of_the_weights_runs_at_the_staged_rate(frac):
    # Decode GEMMs of the layers: (1 - f) of them at the streamed rate and f at the staged
    # rate, for the CPU share f (the disk share alike); the LM head stays streamed.
    hw, wl = _host(True), Workload(prompt_len=16, gen_len=3)
    pol = Policy(gpu_batch_size=8, num_gpu_batches=2, dtype="fp32", overlap=False)
    est = estimate(TINY, hw, wl, pol.with_(weights=Placement(1 - frac, frac / 2, frac / 2)))
    base = estimate(TINY, hw, wl, pol)
    dev, L, steps, nb = hw.device, TINY.num_layers, wl.gen_len - 1, 2
    t_res = float(layer_matmul_time_s(TINY, dev, 8, "fp32"))
    t_stg = float(layer_matmul_time_s(TINY, dev, 8, "fp32", staged=True))
    assert t_stg == pytest.approx(t_res / 2)
    saved = steps * L * nb * frac * (t_res - t_stg)
    assert _matmul(base, "decode") - _matmul(est, "decode") == pytest.approx(saved, rel=1e-9, abs=1e-15)


def test_compressed_weights_are_all_staged():
    # Dequantization writes every tier's weights into the buffer: GPU-resident ones too.
    hw, wl = _host(True), Workload(prompt_len=16, gen_len=3)
    pol = Policy(gpu_batch_size=8, num_gpu_batches=2, dtype="fp32", compress_weights=True)
    a = estimate(TINY, hw, wl, pol)
    b = estimate(TINY, hw, wl, pol.with_(weights=Placement(0, 1, 0)))
    assert _matmul(a, "decode") == pytest.approx(_matmul(b, "decode"), rel=1e-12)
    plain = estimate(TINY, _host(False), wl, pol)
    assert _matmul(a, "decode") < _matmul(plain, "decode")


def test_the_recorded_ci_profile_carries_staged_curves_faster_at_decode():
    # The CPU records' profile was measured by the CI suite (llmsim validate --suite ci):
    # the suite's models' layers (a few MB) fit the cache, so it has staged curves, and at
    # the decode batch (m = 16) they ran faster than the streamed ones.
    path = pathlib.Path(__file__).resolve().parent.parent / "validate/records/cpu-2core/profiles/ci-cpu.yaml"
    dev = load_profile(path).device
    assert dev.staged_matmul_curves
    for c in dev.staged_matmul_curves:
        assert dev.matmul_time_s(16, c.k, c.n, c.dtype, 4, staged=True) < dev.matmul_time_s(16, c.k, c.n, c.dtype, 4)


def test_search_lp_is_the_cost_model_with_staged_curves():
    # The staged saving is affine in the weights' CPU and disk fractions, so the LP's block
    # time still equals estimate() at its solution (step terms removed, as in test_search).
    import dataclasses

    from simulator.search import SearchSpace, search
    hw = _host(True)
    hw = dataclasses.replace(hw, links=dataclasses.replace(hw.links, h2d_latency_s=0.0, d2h_latency_s=0.0),
                             device=dataclasses.replace(hw.device, launch_s=1e-15),
                             cpu=dataclasses.replace(hw.cpu, launch_s=1e-15))
    wl = Workload(prompt_len=16, gen_len=4)
    space = SearchSpace(gpu_batch_sizes=(8,), num_gpu_batches=(2,), compress_weights=(False,), dtype="fp32")
    plan = search(TINY, hw, wl, space=space, compare=False)
    est = estimate(TINY, hw, wl, plan.relaxed_policy)
    assert plan.feasible and est.total_latency_s == pytest.approx(plan.lp_objective_s, rel=1e-6)
    # Staged GEMMs at twice the rate pay for the copies: the weights leave the device tier.
    assert plan.relaxed_policy.weights.gpu_frac == pytest.approx(0.0, abs=1e-6)
