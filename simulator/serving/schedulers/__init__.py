"""Schedulers, registered by name: a new scheduling policy is a new module here whose class
derives from ``Scheduler`` and is decorated with ``@register_scheduler("name")``.

A scheduler decides, at the start of every iteration of one server, which requests run and
with how many tokens (``simulator.serving.state.Batch``), allocating their KV blocks and
preempting when they run out; the engine (``simulator.serving.simulate``) then applies the
iteration's effects. Schedulers never see time other than ``now`` and never touch costs.
"""

from __future__ import annotations

import importlib
import pkgutil

from simulator.serving.schedulers.base import SCHEDULERS, Scheduler, get_scheduler, register_scheduler

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["SCHEDULERS", "Scheduler", "get_scheduler", "register_scheduler"]
