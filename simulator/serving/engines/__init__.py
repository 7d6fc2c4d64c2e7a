"""Serving engines, registered by name: a new engine is a new module here that decorates a
factory with ``@register_engine("name")``. An engine is data: its scheduler (by name,
``simulator.serving.schedulers``), its limits and switches with their defaults, and any
constant of the implementation (with its source). ``get_engine(name, **overrides)`` gives
its ``EngineConfig`` with the flags a user set (None leaves a default alone).
"""

from __future__ import annotations

import importlib
import pkgutil

from simulator.serving.engines.base import ENGINES, EngineConfig, get_engine, list_engines, register_engine

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["ENGINES", "EngineConfig", "get_engine", "list_engines", "register_engine"]
