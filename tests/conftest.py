"""Shared fixtures: a synthetic profile with round numbers for hand-computed estimates."""

from __future__ import annotations

import copy

import pytest
import yaml

from simulator.hardware import profile_from_dict

SYNTHETIC = {
    "schema_version": 1,
    "name": "synthetic",
    "metadata": {"source": "estimate", "date": "2026-11-25", "method": "round numbers for hand arithmetic"},
    "gpu": {"name": "toy", "count": 1, "memory_GiB": 16, "hbm_GBps": 100, "fp16_TFLOPs": 10,
            "fp32_TFLOPs": 5, "kernel_launch_us": 1},
    "cpu": {"name": "toy cpu", "cores": 8, "memory_GiB": 64, "memory_GBps": 20, "op_overhead_us": 2,
            "fp32_GFLOPs": 100, "memcpy_GBps": 5},
    "disk": {"capacity_GiB": 1000, "read_direct_GBps": 2, "write_direct_GBps": 1, "read_cached_GBps": 4},
    "links": {"h2d_pinned_GBps": 10, "d2h_pinned_GBps": 8, "duplex_pinned_GBps": 12},
}


def synthetic_doc(**overrides) -> dict:
    """A deep copy of SYNTHETIC with section keys overridden: synthetic_doc(gpu={'hbm_GBps': 1})."""
    doc = copy.deepcopy(SYNTHETIC)
    for section, values in overrides.items():
        if values is None:
            doc.pop(section, None)
        elif isinstance(values, dict):
            doc.setdefault(section, {}).update(values)
        else:
            doc[section] = values
    return doc


def synthetic_profile(**overrides):
    return profile_from_dict(synthetic_doc(**overrides), "synthetic")


@pytest.fixture
def toy_hw():
    return synthetic_profile()


@pytest.fixture
def write_yaml(tmp_path):
    def _write(doc, name="profile.yaml"):
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        return path
    return _write
