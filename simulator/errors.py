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


class OutputError(LlmsimError):
    """A file or folder llmsim was asked to write cannot be written (disk full, not a folder...)."""


class Interrupted(BaseException):
    """Ctrl-C, raised by the command line's SIGINT handler instead of KeyboardInterrupt:
    typer turns a KeyboardInterrupt into a silent exit code, and libraries that catch broad
    exceptions can swallow one. A BaseException (not an LlmsimError): nothing catches it on
    the way to ``llmsim.cli.main``, which prints one line and exits 130."""


class SpecError(LlmsimError):
    """Invalid sweep spec (``llmsim sweep``): unreadable, unknown key, empty list, bad value."""
