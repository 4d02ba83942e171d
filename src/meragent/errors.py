"""Exception types that reach the user as one clear line (the CLI turns them into exit code 2)."""

from __future__ import annotations


class MeragentError(Exception):
    """Base class for every error meant for the user rather than for a traceback."""

    exit_code = 2


class ConfigError(MeragentError):
    """A setting, profile or model path is invalid."""


class DataError(MeragentError):
    """A clip, manifest, feature file or label is unusable."""


class MediaError(DataError):
    """A media file cannot be decoded (corrupt, empty, no usable stream)."""


class ModelLoadError(MeragentError):
    """Weights for a role cannot be loaded from the configured id or path."""

    def __init__(self, role: str, source: str, reason: str) -> None:
        super().__init__(f"cannot load {role} model from {source!r}: {reason}")
        self.role = role
        self.source = source


class LLMError(MeragentError):
    """A chat model call failed after its retries, or returned nothing usable."""


def one_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first non-empty line of ``str(exc)`` (else the type name), scrubbed of secrets.

    ``with_type`` prefixes the type name (``"TimeoutError: no answer"``), as trace rows show it.
    """
    from meragent.secrets import scrub  # deferred: errors imports nothing of ours at import time

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    name = type(exc).__name__
    if not lines:
        return name
    text = scrub(lines[0])
    return f"{name}: {text}" if with_type else text
