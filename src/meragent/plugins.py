"""Plug-in backends named ``py:MODULE:ATTR`` in a profile, resolved with importlib.

A profile may name any importable callable as a role's backend (a custom chat model, or the
``run_deps`` factory that builds a run's loaded models), so new backends need no change here.
The module must be importable (installed, or on ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib
from typing import Any

from meragent.errors import ConfigError

PLUGIN_PREFIX = "py:"


def is_plugin(backend: str) -> bool:
    """Whether a role's backend names a ``py:MODULE:ATTR`` plug-in."""
    return backend.startswith(PLUGIN_PREFIX)


def load_plugin(backend: str, *, role: str) -> Any:
    """The object ``py:MODULE:ATTR`` names (ConfigError saying why when it cannot be found)."""
    spec = backend.removeprefix(PLUGIN_PREFIX)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"role {role}: plug-in backend {backend!r} must be 'py:MODULE:ATTR'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"role {role}: cannot import plug-in module {module_name!r}: {exc}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"role {role}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"role {role}: plug-in {backend!r} is not callable")
    return target
