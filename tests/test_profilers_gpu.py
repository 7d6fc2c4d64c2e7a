"""On a CUDA machine: issue 4's 5% checks and a --quick GPU profile the planner accepts.
Skipped without CUDA (CI has none); ``scripts/gpu_check.sh`` runs the same checks on the GPU machine."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from hardware_profiles import check  # noqa: E402


@pytest.fixture(scope="module")
def device():
    return torch.device("cuda:0")


def test_pinned_1gib_h2d_within_5pct_of_an_independent_measurement(device):
    profiler = check.profiler_h2d_GBps(torch, device)
    independent = check.independent_h2d_GBps(torch, device)
    assert profiler == pytest.approx(independent, rel=check.TOLERANCE)


def test_fp16_8192_gemm_within_5pct_of_an_independent_measurement(device):
    profiler = check.profiler_matmul_rate(torch, device, "fp16", 8192)
    independent = check.independent_matmul_rate(torch, device, 8192, torch.float16, 60)
    assert profiler == pytest.approx(independent, rel=check.TOLERANCE)


@pytest.mark.slow
def test_quick_gpu_profile_is_accepted_by_the_planner(tmp_path, capsys):
    from llmsim import profile_command as command
    from simulator.cost import estimate
    from simulator.hardware import load_profile
    from simulator.models import get_model
    from simulator.policy import Placement, Policy, Workload

    out = tmp_path / "gpu-quick.yaml"
    assert command.run(str(out), True, "cuda:0", str(tmp_path), False, True) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["device"] == "cuda:0" and "gpu" in summary["sections"] and "links" in summary["sections"]
    hw = load_profile(out)
    assert not hw.device_is_host and hw.gpu_count >= 1
    assert hw.device.matmul_curves and hw.device.decode_attention is not None
    # Its 8192^3 fp16 figure agrees with an independent measurement taken now.
    assert hw.device.peak_flop_per_s("fp16") / 1e12 == pytest.approx(
        check.independent_matmul_rate(torch, torch.device("cuda:0"), 8192, torch.float16, 60) / 1e12,
        rel=check.TOLERANCE)
    est = estimate(get_model("opt-1.3b"), hw, Workload(256, 16),
                   Policy(gpu_batch_size=16, num_gpu_batches=2, weights=Placement(1, 0, 0), cache=Placement(1, 0, 0),
                          activations=Placement(1, 0, 0), cpu_attention=False))
    assert est.feasible
