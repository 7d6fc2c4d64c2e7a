"""Typed errors. Every message names the file, key or flag and the bad value.

The CLI turns any ``LlmsimError`` into one line on stderr and exit code 2.
"""


class LlmsimError(Exception):
    """Base class of every error llmsim raises on purpose."""


class ModelError(LlmsimError):
    """Unknown model name or an unreadable / incomplete config.json."""


class ProfileError(LlmsimError):
    """Unreadable or invalid hardware profile."""


class PolicyError(LlmsimError):
    """Invalid workload or policy (bad lengths, fractions that do not sum to 1, ...)."""


class SearchError(LlmsimError):
    """The policy search could not produce a plan (solver failures on every solver)."""


class WorkloadError(LlmsimError):
    """Invalid request stream: a malformed trace, a bad rate, length distribution or SLO."""


class SpecError(LlmsimError):
    """Invalid sweep spec (``llmsim sweep``): unreadable, unknown key, empty list, bad value."""
