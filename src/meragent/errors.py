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
