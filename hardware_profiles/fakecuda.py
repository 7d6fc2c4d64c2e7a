"""A stand-in for ``torch.cuda`` on a CPU-only machine, so the GPU code paths of the
profilers and of the GPU check (``validate/gpu_check.py --dry-run``) run in CI.

``FakeTorch()`` is ``torch`` with ``cuda`` replaced: ``cuda`` devices are ``FakeDevice``
objects whose tensors live on the CPU (``pin_memory`` is dropped), "events" are stamped
with the host clock (``time.perf_counter``), streams, graphs and synchronization are
no-ops, and the device reports 80 GiB with 60 GiB free. The figures measured through it
are the host's and mean nothing; what it proves is that every GPU step runs and that what
it assembles has the right form.

``shrink(patch)`` sets the profilers' sizes small enough for a 2-core machine (the stand-in
computes on it); ``patch`` is pytest's ``monkeypatch`` in tests, or ``Permanent()`` in a
process of its own (the dry run), which sets the values for the rest of that process.
"""

from __future__ import annotations

import contextlib
import time
import types

from simulator.units import KiB, MiB

FAKE_GPU_NAME = "Fake GPU"


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
    """torch with ``cuda`` replaced: CUDA devices are FakeDevice, their tensors live on the CPU.
    ``calls`` lists the spin kernels queued (``"spin"``), to check that timing used them.

    Run it with one torch thread (``torch.set_num_threads(1)``) on a shared machine: a
    parallel copy of a few KiB then waits for a descheduled worker thread, and on the busy
    2-core VM every copy up to 64 MiB took the same ~8 ms, which leaves no bandwidth to fit."""

    def __init__(self):
        import torch

        self._torch = torch
        calls = self.calls = []

        def graph(g):
            raise RuntimeError("no graphs on the stand-in")

        self.cuda = types.SimpleNamespace(
            is_available=lambda: True, device_count=lambda: 1, init=lambda: None, current_device=lambda: 0,
            synchronize=lambda *a: None, empty_cache=lambda: None, _sleep=lambda n: calls.append("spin"),
            mem_get_info=lambda *a: (60 * 2**30, 80 * 2**30),
            get_device_properties=lambda d: types.SimpleNamespace(name=FAKE_GPU_NAME, major=9, minor=0,
                                                                  multi_processor_count=132, uuid="fake-uuid"),
            get_device_name=lambda *a: FAKE_GPU_NAME, current_stream=lambda *a: FakeStream(),
            Stream=lambda *a: FakeStream(), stream=lambda s: contextlib.nullcontext(),
            device=lambda d: contextlib.nullcontext(), Event=FakeEvent, CUDAGraph=object, graph=graph)

    def __getattr__(self, name):  # only called for names not set on the instance
        if name == "_torch":
            raise AttributeError(name)
        return getattr(self._torch, name)

    def device(self, spec):
        s = str(spec)
        return FakeDevice(int(s.split(":")[1]) if ":" in s else 0) if s.startswith("cuda") else self._torch.device(spec)

    def Generator(self, device=None):
        return self._torch.Generator()

    def randint(self, *a, **kw):
        return self._torch.randint(*a, **_cpu(kw))

    def randn(self, *a, **kw):
        return self._torch.randn(*a, **_cpu(kw))

    def rand(self, *a, **kw):
        return self._torch.rand(*a, **_cpu(kw))

    def empty(self, *a, **kw):
        return self._torch.empty(*a, **_cpu(kw))

    def tensor(self, *a, **kw):
        return self._torch.tensor(*a, **_cpu(kw))


class Permanent:
    """``monkeypatch``'s setattr/setitem without the undo: for a process of its own."""

    @staticmethod
    def setattr(obj, name, value):
        setattr(obj, name, value)

    @staticmethod
    def setitem(mapping, key, value):
        mapping[key] = value


def shrink(patch) -> None:
    """Small sizes for every profiler, so a profile through the stand-in takes seconds on a
    2-core machine: link sweeps up to 64 MiB, 256^3 peak GEMMs, a 16 MiB disk file, short
    attention grids; and no fp8 peak (the CPU emulates fp8 GEMMs: seconds per call)."""
    from hardware_profiles import cpu, disk, gpu, pcie, shapes

    patch.setattr(pcie, "SIZES_QUICK", (64 * KiB, 4 * MiB, 64 * MiB))
    patch.setattr(gpu, "PEAK_N", 256)
    patch.setattr(gpu, "GEMM_TABLE_BUDGET_S", {True: 600, False: 600})  # every shape, however slow the CPU
    patch.setattr(gpu, "ATTENTION_BUDGET_S", {True: 600, False: 600})
    patch.setattr(shapes, "QUICK_PRESETS", ("opt-125m",))
    patch.setattr(shapes, "GPU_M_QUICK", (1, 16, 128))
    patch.setitem(shapes.ATTN_GRID, "gpu_quick", ((1, 4), (128,)))
    patch.setitem(shapes.ATTN_GRID, "cpu_quick", ((1, 4), (128,)))
    patch.setattr(shapes, "CPU_M_QUICK", (1, 16))
    patch.setitem(cpu.PEAK_N, True, 256)
    patch.setitem(disk.LAYOUT, True, {"file": 16 * MiB, "pass": 4 * MiB, "passes": 1, "blocks": (4 * MiB,),
                                      "readers": (1,), "cached": 4 * MiB, "parallel_block": MiB})
    patch.setattr(disk, "MIN_FILE", 4 * MiB)
    patch.setattr(disk, "BOUNCE", 2 * MiB)
    real_low_precision = gpu.low_precision_peak

    def int8_only(torch_, device, kind, n):
        if kind == "fp8":
            raise RuntimeError("fp8 is not supported on this stand-in")
        return real_low_precision(torch_, device, kind, n)

    patch.setattr(gpu, "low_precision_peak", int8_only)
