"""The GPU code paths of the profilers, run end to end on the CPU against a stand-in for
``torch.cuda`` (CI has no GPU): ``hardware_profiles.fakecuda``, which keeps tensors on the CPU
and times "events" with the host clock, so the figures mean nothing; what is checked is that every GPU step
runs, that the profile it assembles (gpu + links sections, tables, raw measurements) passes
the planner's strict loader, and that the planner predicts with it. The real 5% checks run
on a GPU machine (scripts/gpu_check.sh)."""

from __future__ import annotations

import pytest
import yaml

torch = pytest.importorskip("torch")

from hardware_profiles import fakecuda, profile, shapes  # noqa: E402
from simulator.cost import estimate  # noqa: E402
from simulator.models import get_model  # noqa: E402
from simulator.policy import Placement, Policy, Workload  # noqa: E402


@pytest.mark.slow
def test_gpu_code_paths_assemble_a_profile_the_planner_accepts(tmp_path, monkeypatch):
    fakecuda.shrink(monkeypatch)  # small sizes: the stand-in computes on this CPU
    fake = fakecuda.FakeTorch()
    opts = profile.check_options(str(tmp_path / "fake-gpu.yaml"), True, "cuda", str(tmp_path), False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see fakecuda.FakeTorch
    try:
        hw, summary = profile.profile_machine(opts, torch=fake)
    finally:
        torch.set_num_threads(threads)

    assert summary["sections"] == ["gpu", "cpu", "disk", "links"] and summary["device"] == "cuda:0"
    assert summary["absent"] == {"interconnect": "fewer than two GPUs"}
    assert "spin" in fake.calls  # pinned copies and kernels were timed behind a spin kernel
    assert not hw.device_is_host and hw.gpu_count == 1 and hw.device.name == "Fake GPU"
    doc = yaml.safe_load((tmp_path / "fake-gpu.yaml").read_text())
    assert doc["gpu"]["memory_GiB"] == 80 and doc["gpu"]["reserved_GiB"] == 20
    assert {(r["dtype"], r["k"], r["n"]) for r in doc["gpu"]["matmul_table"]} == {
        (d, k, n) for d in ("fp16", "bf16") for k, n in shapes.model_gemm_shapes(("opt-125m",))}
    assert all(r["m"] == [1, 16, 128] for r in doc["gpu"]["matmul_table"])
    # the GEMM read rate and fixed time: the line through the table's half-precision rows at m = 1
    from hardware_profiles.ops import gemm_memory_fit
    from hardware_profiles.timing import Summary
    rows = {(r["dtype"], r["k"], r["n"]): {1: Summary(r["time_us"][0] * 1e-6, 0, 0, 1, ())}
            for r in doc["gpu"]["matmul_table"]}
    rate, fixed = gemm_memory_fit(rows)  # from the table's rounded times: close to the profiler's own fit
    shortest_us = min(r["time_us"][0] for r in doc["gpu"]["matmul_table"] if r["dtype"] in ("fp16", "bf16"))
    assert doc["gpu"]["gemm_memory_GBps"] == pytest.approx(rate / 1e9, rel=0.05)
    assert doc["gpu"].get("gemm_fixed_us", 0.0) == pytest.approx(fixed * 1e6, abs=0.05 * shortest_us)
    assert [r["kv_bytes"] for r in doc["gpu"]["decode_attention_table"]] == [
        shapes.kv_bytes(1, 128, 2), shapes.kv_bytes(4, 128, 2)]
    # The CPU beside a GPU stores its attention cache in fp16 and upcasts it.
    assert doc["cpu"]["decode_attention_table"][0]["dtype"] == "fp16"
    links = doc["measurements"]["links"]
    assert set(links) >= {"h2d_pinned", "d2h_pinned", "both_pinned", "h2d_pageable", "d2h_pageable"}
    assert links["both_pinned"]["moved_bytes"] == [2 * s for s in links["both_pinned"]["size_bytes"]]
    assert links["copy_verified"] is True
    assert doc["links"]["h2d_pinned_GBps"] == links["h2d_pinned"]["fit"]["GBps"]
    assert "graph_error" in doc["measurements"]["gpu"]["launch"]  # graphs refused: recorded, not fatal
    peak = doc["measurements"]["gpu"]["peak"]
    assert "fp8_TFLOPs" not in doc["gpu"] and peak["fp8"]["absent"].startswith("RuntimeError: fp8 is not supported")
    assert doc["gpu"]["int8_TFLOPs"] == peak["int8"]["TFLOPs"] > 0
    assert doc["measurements"]["disk"]["read_to_gpu"]["GBps"] > 0  # the bounce-buffer path ran
    est = estimate(get_model("opt-125m"), hw, Workload(64, 8),
                   Policy(gpu_batch_size=8, weights=Placement(0, 1, 0), cache=Placement(1, 0, 0)))
    assert est.feasible
