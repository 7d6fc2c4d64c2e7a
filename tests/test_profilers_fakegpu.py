"""The GPU code paths of the profilers, run end to end on the CPU against a stand-in for
``torch.cuda`` (CI has no GPU). The stand-in keeps tensors on the CPU and times "events"
with the host clock, so the figures mean nothing; what is checked is that every GPU step
runs, that the profile it assembles (gpu + links sections, tables, raw measurements) passes
the planner's strict loader, and that the planner predicts with it. The real 5% checks run
on a GPU machine (tests/test_profilers_gpu.py, scripts/gpu_profile.sh)."""

from __future__ import annotations

import contextlib
import time
import types

import pytest
import yaml

torch = pytest.importorskip("torch")

from hardware_profiles import cpu, disk, gpu, pcie, profile, shapes  # noqa: E402
from simulator.cost import estimate  # noqa: E402
from simulator.models import get_model  # noqa: E402
from simulator.policy import Placement, Policy, Workload  # noqa: E402
from simulator.units import KiB, MiB  # noqa: E402


class FakeDevice:
    type = "cuda"

    def __init__(self, index=0):
        self.index = index

    def __str__(self):
        return f"cuda:{self.index}"


class FakeEvent:
    def __init__(self, enable_timing=False):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):  # ms, like CUDA events
        return max(end.t - self.t, 1e-9) * 1e3


class FakeStream:
    def wait_stream(self, other):
        pass


def _cpu(kw):
    kw = dict(kw)
    if isinstance(kw.get("device"), (FakeDevice, str)) and str(kw.get("device")).startswith("cuda"):
        kw["device"] = "cpu"
    kw.pop("pin_memory", None)
    return kw


class FakeTorch:
    """torch with ``cuda`` replaced: CUDA devices are FakeDevice, their tensors live on the CPU."""

    def __init__(self):
        calls = self.calls = []

        def graph(g):
            raise RuntimeError("no graphs on the stand-in")

        self.cuda = types.SimpleNamespace(
            is_available=lambda: True, device_count=lambda: 1, init=lambda: None,
            synchronize=lambda *a: None, empty_cache=lambda: None, _sleep=lambda n: calls.append("spin"),
            mem_get_info=lambda *a: (60 * 2**30, 80 * 2**30),
            get_device_properties=lambda d: types.SimpleNamespace(name="Fake GPU", major=9, minor=0,
                                                                  multi_processor_count=132, uuid="fake-uuid"),
            get_device_name=lambda *a: "Fake GPU", current_stream=lambda *a: FakeStream(),
            Stream=lambda *a: FakeStream(), stream=lambda s: contextlib.nullcontext(),
            device=lambda d: contextlib.nullcontext(), Event=FakeEvent, CUDAGraph=object, graph=graph)

    def __getattr__(self, name):
        return getattr(torch, name)

    def device(self, spec):
        s = str(spec)
        return FakeDevice(int(s.split(":")[1]) if ":" in s else 0) if s.startswith("cuda") else torch.device(spec)

    def Generator(self, device=None):
        return torch.Generator()

    def randint(self, *a, **kw):
        return torch.randint(*a, **_cpu(kw))

    def randn(self, *a, **kw):
        return torch.randn(*a, **_cpu(kw))

    def rand(self, *a, **kw):
        return torch.rand(*a, **_cpu(kw))

    def empty(self, *a, **kw):
        return torch.empty(*a, **_cpu(kw))

    def tensor(self, *a, **kw):
        return torch.tensor(*a, **_cpu(kw))


@pytest.mark.slow
def test_gpu_code_paths_assemble_a_profile_the_planner_accepts(tmp_path, monkeypatch):
    # Small sizes: the stand-in computes on this CPU.
    monkeypatch.setattr(pcie, "SIZES_QUICK", (64 * KiB, 4 * MiB, 64 * MiB))
    monkeypatch.setattr(gpu, "PEAK_N", 256)
    monkeypatch.setattr(shapes, "QUICK_PRESETS", ("opt-125m",))
    monkeypatch.setattr(shapes, "GPU_M_QUICK", (1, 16, 128))
    monkeypatch.setitem(shapes.ATTN_GRID, "gpu_quick", ((1, 4), (128,)))
    monkeypatch.setitem(shapes.ATTN_GRID, "cpu_quick", ((1, 4), (128,)))
    monkeypatch.setattr(shapes, "CPU_M_QUICK", (1, 16))
    monkeypatch.setitem(cpu.PEAK_N, True, 256)
    monkeypatch.setitem(disk.LAYOUT, True, {"file": 16 * MiB, "pass": 4 * MiB, "passes": 1, "blocks": (4 * MiB,),
                                            "readers": (1,), "cached": 4 * MiB, "parallel_block": MiB})
    monkeypatch.setattr(disk, "MIN_FILE", 4 * MiB)
    monkeypatch.setattr(disk, "BOUNCE", 2 * MiB)
    real_low_precision = gpu.low_precision_peak

    def int8_only(torch_, device, kind, n):  # the CPU's fp8 GEMM is emulated: seconds per call
        if kind == "fp8":
            raise RuntimeError("fp8 is not supported on this stand-in")
        return real_low_precision(torch_, device, kind, n)

    monkeypatch.setattr(gpu, "low_precision_peak", int8_only)
    fake = FakeTorch()
    opts = profile.check_options(str(tmp_path / "fake-gpu.yaml"), True, "cuda", str(tmp_path), False)
    hw, summary = profile.profile_machine(opts, torch=fake)

    assert summary["sections"] == ["gpu", "cpu", "disk", "links"] and summary["device"] == "cuda:0"
    assert summary["absent"] == {"interconnect": "fewer than two GPUs"}
    assert "spin" in fake.calls  # pinned copies and kernels were timed behind a spin kernel
    assert not hw.device_is_host and hw.gpu_count == 1 and hw.device.name == "Fake GPU"
    doc = yaml.safe_load((tmp_path / "fake-gpu.yaml").read_text())
    assert doc["gpu"]["memory_GiB"] == 80 and doc["gpu"]["reserved_GiB"] == 20
    assert {(r["dtype"], r["k"], r["n"]) for r in doc["gpu"]["matmul_table"]} == {
        (d, k, n) for d in ("fp16", "bf16") for k, n in shapes.model_gemm_shapes(("opt-125m",))}
    assert all(r["m"] == [1, 16, 128] for r in doc["gpu"]["matmul_table"])
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
