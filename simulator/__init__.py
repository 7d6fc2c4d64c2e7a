"""llmsim's planner core: model specs, hardware profiles, policies and the cost model.

Nothing in this package imports torch (``tests/test_architecture.py`` enforces it), so the
planner installs and runs without a GPU stack.
"""

from simulator.errors import LlmsimError
from simulator.models import ModelSpec, get_model, list_models
from simulator.hardware import HardwareProfile, load_profile, list_profiles
from simulator.policy import Placement, Policy, Workload
from simulator.cost import Estimate, estimate

__all__ = [
    "LlmsimError",
    "ModelSpec",
    "get_model",
    "list_models",
    "HardwareProfile",
    "load_profile",
    "list_profiles",
    "Placement",
    "Policy",
    "Workload",
    "Estimate",
    "estimate",
]
