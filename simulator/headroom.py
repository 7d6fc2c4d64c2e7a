"""Memory headroom: the share of each memory the plan leaves free.

A plan that fills a GPU to the last byte fails on the real machine: the CUDA context, the
caching allocator's fragmentation and a library's workspace take memory the model does not
count. vLLM leaves such a margin by default: it sizes its KV cache so that the engine uses at
most ``gpu_memory_utilization`` = 0.9 of the GPU's memory (vLLM engine arguments,
``--gpu-memory-utilization``, default 0.9; docs.vllm.ai, "Engine Arguments"), the figure the
serving simulation uses too (``simulator.serving.kvcache.kv_budget``). The planner keeps the
same 10% free by default, of the GPU memory and of the host RAM (the operating system, the
page cache and pinned staging buffers live there).

One place applies it: ``with_headroom`` returns the profile whose usable bytes are

    usable_tier(headroom) = usable_tier x (1 - headroom_frac_tier)       (bytes)

(``ComputeDevice.usable_bytes`` = memory - reserved), which is the capacity the memory model,
the placement LP and every ``estimate()`` see (``cost.Terms.capacity_bytes``). The margin is
``headroom_frac x usable`` bytes, on top of what the profile already reserves. The disk tier
has no headroom. On a CPU-only machine the gpu tier is host RAM: both take the CPU figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from simulator.errors import PolicyError

DEFAULT_HEADROOM_FRAC = 0.10  # of GPU memory: vLLM's default gpu_memory_utilization 0.9 (module docstring)
DEFAULT_CPU_HEADROOM_FRAC = 0.0  # of host RAM: the profile's cpu.reserved_GiB is the OS's share
HEADROOM_SOURCE = "GPU as vLLM's default --gpu-memory-utilization 0.9; host RAM: the profile's reserve"
MAX_HEADROOM_FRAC = 0.9  # a margin above 90% leaves too little to plan anything useful


@dataclass(frozen=True)
class Headroom:
    """Fractions (0..1) of the GPU memory and of the host RAM left free, and where the
    figures come from (``source``: the default's citation, or ``--headroom`` when given)."""

    gpu_frac: float = DEFAULT_HEADROOM_FRAC
    cpu_frac: float = DEFAULT_CPU_HEADROOM_FRAC
    source: str = HEADROOM_SOURCE

    def margin_bytes(self, hw) -> dict:
        """{tier: bytes kept free} on ``hw`` (the profile before the headroom)."""
        gpu_frac = self.cpu_frac if hw.device_is_host else self.gpu_frac
        return {"gpu": gpu_frac * hw.device.usable_bytes, "cpu": self.cpu_frac * hw.cpu.usable_bytes, "disk": 0.0}

    def to_dict(self, hw=None) -> dict:
        out = {"gpu_frac": self.gpu_frac, "cpu_frac": self.cpu_frac, "source": self.source}
        if hw is not None:
            out["margin_bytes"] = self.margin_bytes(hw)
        return out

    def text(self) -> str:
        """``"10% of GPU memory and 10% of host RAM left free (vLLM's ...)"``."""
        from simulator.units import format_percent as percent_text
        if self.gpu_frac == 0 and self.cpu_frac == 0:
            return f"no memory left free beyond the profile's reserve ({self.source})"
        if self.gpu_frac == self.cpu_frac:
            share = f"{percent_text(self.gpu_frac)}% of GPU memory and of host RAM"
        else:
            share = f"{percent_text(self.gpu_frac)}% of GPU memory and {percent_text(self.cpu_frac)}% of host RAM"
        return f"{share} left free ({self.source})"


NO_HEADROOM = Headroom(0.0, 0.0, "none: the policy against the profile's usable memory")


def parse_headroom(text: str | None, flag: str = "--headroom", default: Headroom | None = None) -> Headroom:
    """``--headroom PCT`` (GPU memory and host RAM) or ``--headroom GPU_PCT,CPU_PCT``, in
    percent, each in 0..90; None: ``default`` (plan's: ``Headroom()``, cited)."""
    if text is None:
        return default if default is not None else Headroom()
    parts = str(text).split(",")
    if len(parts) not in (1, 2):
        raise PolicyError(f"{flag}: {text!r} is not PCT or GPU_PCT,CPU_PCT (percent of memory left free)")
    fracs = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise PolicyError(f"{flag}: {p.strip()!r} is not a number of percent (e.g. 10, or 10,5)") from None
        if not math.isfinite(v) or not 0.0 <= v <= 100 * MAX_HEADROOM_FRAC:
            raise PolicyError(f"{flag}: {p.strip()!r} must be a percent from 0 to {100 * MAX_HEADROOM_FRAC:g}")
        fracs.append(v / 100.0)
    gpu, cpu = fracs[0], fracs[-1]
    return Headroom(gpu, cpu, f"{flag} {text}")


def with_headroom(hw, headroom: Headroom):
    """``hw`` whose GPU and CPU usable bytes are ``usable x (1 - headroom_frac)`` (module
    docstring): the capacities the memory model and the search see. Unit: bytes."""
    margin = headroom.margin_bytes(hw)
    dev = replace(hw.device, reserved_bytes=hw.device.reserved_bytes + margin["gpu"])
    cpu = replace(hw.cpu, reserved_bytes=hw.cpu.reserved_bytes + margin["cpu"])
    return replace(hw, device=dev, cpu=cpu)
