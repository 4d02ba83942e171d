"""Load-once holders: a model is loaded on first use and shared by every tool in the process.

Tool nodes run in parallel threads, so loading is guarded by a lock; a failed load is not
cached (the next clip retries and reports the same clear error instead of a stale one).
First loads are serialised process-wide: ``transformers``' ``from_pretrained`` (and its lazy
module imports) is not thread-safe, and two models loading at once in parallel tool nodes left
parameters on the meta device ("Cannot copy out of meta tensor").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_SHARED: dict[Hashable, Any] = {}
_KEY_LOCKS: dict[Hashable, threading.Lock] = {}
_SHARED_LOCK = threading.Lock()
#: Held while any holder loads; re-entrant so a loader may itself use another holder.
_LOAD_LOCK = threading.RLock()


class Lazy(Generic[T]):
    """Calls ``loader`` the first time ``get()`` is called and keeps the result."""

    def __init__(self, loader: Callable[[], T], key: Hashable | None = None) -> None:
        self._loader = loader
        self._key = key
        self._value: T | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._value is not None

    def get(self) -> T:
        if self._value is None:
            with _LOAD_LOCK, self._lock:
                if self._value is None:
                    self._value = self._load()
        return self._value

    def _load(self) -> T:
        if self._key is None:
            return self._loader()
        with _SHARED_LOCK:
            key_lock = _KEY_LOCKS.setdefault(self._key, threading.Lock())
        # One lock per key: two tools wanting the same model wait for one load, while loads of
        # different models can proceed side by side.
        with key_lock:
            if self._key not in _SHARED:
                _SHARED[self._key] = self._loader()
            value: T = _SHARED[self._key]
            return value


def shared(key: Hashable, loader: Callable[[], T]) -> Lazy[T]:
    """A lazy holder whose value is shared process-wide with every holder of the same key."""
    return Lazy(loader, key=key)


def clear_shared() -> None:
    """Forget every shared model (tests; or to free memory between runs)."""
    with _SHARED_LOCK:
        _SHARED.clear()
