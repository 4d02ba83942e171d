"""One scrubber for every way text leaves the process: terminal lines, log records and stores.

A server that echoes the request (``auth=Bearer sk-…`` in an error body) must not put the API
key on a terminal, in a run folder or on a trace page. The values to hide are registered once,
where the configuration holds them (:func:`register_secret`), and :func:`scrub` replaces them,
plus anything that looks like a bearer token, with :data:`REDACTED`. The registry is filled only
by explicit calls, never at import time.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

REDACTED = "********"
#: Shorter values are not treated as secrets: replacing "a" everywhere would mangle every line.
MIN_SECRET_CHARS = 4
#: A bearer token echoed from an Authorization header, whether or not its value is registered.
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]{6,}")
_lock = threading.Lock()
_known: set[str] = set()


def _plain(value: Any) -> str | None:
    """The plain text of a secret (pydantic ``SecretStr`` or ``str``), None when empty."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    text = getter() if callable(getter) else value
    return text if isinstance(text, str) and text else None


def register_secret(value: Any) -> None:
    """Hide ``value`` (a ``str`` or ``SecretStr``; None is ignored) from everything scrubbed."""
    text = _plain(value)
    if text is not None and len(text) >= MIN_SECRET_CHARS:
        with _lock:
            _known.add(text)


def known_secrets() -> list[str]:
    """The registered values, longest first (so a secret containing another is hidden whole)."""
    with _lock:
        return sorted(_known, key=len, reverse=True)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every registered (and ``extra``) secret and bearer token redacted."""
    values = {s for s in extra if s and len(s) >= MIN_SECRET_CHARS} | set(known_secrets())
    for secret in sorted(values, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "bearer" not in text.lower():  # the token pattern's literal, looked for in C first
        return text
    return _BEARER.sub(rf"\g<1>{REDACTED}", text)


def scrub_optional(text: str | None, extra: Iterable[str] = ()) -> str | None:
    """:func:`scrub` that lets None through (for nullable store columns)."""
    return None if text is None else scrub(text, extra)


def scrub_data(value: Any) -> Any:
    """A copy of JSON-like ``value`` (dicts, lists, strings) with every string scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {key: scrub_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_data(item) for item in value]
    return value
