"""Typed errors of the executor (one-line messages naming the value)."""

from __future__ import annotations

from simulator.errors import LlmsimError


class ExecutorError(LlmsimError):
    """The executor cannot run this case (device, offload directory, checkpoint...)."""


class OffloadSpaceError(ExecutorError):
    """The offload directory has less free space than the policy puts on disk."""


class UnsupportedModelError(ExecutorError, NotImplementedError):
    """A model family the executor does not implement yet (Mixtral experts)."""
