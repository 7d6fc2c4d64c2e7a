"""The profiles that ``llmsim profile`` wrote and the repository ships: they load, say how
they were measured, and the planner predicts with them."""

from __future__ import annotations

import pytest
import yaml

from helpers import run_json
from simulator.hardware import DATA_DIR, load_profile


def test_cpu_2core_profile_is_measured_and_cpu_only():
    hw = load_profile("cpu-2core")
    assert hw.name == "cpu-2core" and hw.source == "measured"
    assert hw.device_is_host and hw.gpu_count == 0 and hw.cpu_cores == 2
    assert {c.dtype for c in hw.cpu.matmul_curves} >= {"fp32"} and hw.cpu.decode_attention is not None
    doc = yaml.safe_load((DATA_DIR / "cpu-2core.yaml").read_text())
    assert "gpu" not in doc and "links" not in doc
    assert doc["measurements"]["run"]["quick"] is False
    # Measured while the machine was otherwise idle (the profiler records the others' share).
    assert doc["metadata"]["machine"]["other_processes_cpu_frac"] < 0.1
    # The host's link is its memcpy; memory_GBps counts read + written of that copy.
    assert hw.links.h2d_bytes_per_s == pytest.approx(doc["cpu"]["memcpy_GBps"] * 1e9)
    assert doc["cpu"]["memory_GBps"] == pytest.approx(2 * doc["cpu"]["memcpy_GBps"], rel=2e-3)


def test_predict_accepts_the_cpu_2core_profile_by_name():
    est = run_json("predict", "--hardware", "cpu-2core", "--dtype", "fp32", "--model", "opt-125m",
                   "--prompt-len", "64", "--gen-len", "8", "--weights", "0,100,0")
    assert est["feasible"] is True and est["hardware"] == "cpu-2core"
    assert est["total_latency_s"] > 0 and est["throughput_tok_s"] > 0
