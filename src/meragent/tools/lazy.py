"""Load-once holders: a model is loaded on first use and shared by every tool in the process.

Tool nodes run in parallel threads, so each holder (and each shared key) has its own lock: two
tools wanting the same model wait for one load, while loads of different models do not wait
for each other here. A loader may legitimately return None ("no head trained for this
feature"); that answer is kept like any other, so it is not looked for again on every clip. A
failed load is not kept (the next clip retries and reports the same clear error).

What is really not thread-safe is ``transformers``' ``from_pretrained`` (it patches
``torch.nn.Module`` globally while it builds a model: two models loading at once left
parameters on the meta device); :func:`meragent.tools.model_source.model_load_errors` serialises
those calls alone, so a slow non-HF load (a TFLite file, a face detector) never blocks them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class _Unset:
    """The sentinel of a holder that has not loaded yet (None is a legitimate value)."""

    def __repr__(self) -> str:
        return "<not loaded>"


UNSET: Any = _Unset()
_SHARED: dict[Hashable, Any] = {}
_KEY_LOCKS: dict[Hashable, threading.RLock] = {}
_SHARED_LOCK = threading.Lock()


def _key_lock(key: Hashable) -> threading.RLock:
    with _SHARED_LOCK:
        return _KEY_LOCKS.setdefault(key, threading.RLock())


class Lazy(Generic[T]):
    """Calls ``loader`` the first time ``get()`` is called and keeps the result (even None)."""

    def __init__(self, loader: Callable[[], T], key: Hashable | None = None) -> None:
        self._loader = loader
        self._key = key
        self._value: Any = UNSET
        self._lock = threading.RLock() if key is None else _key_lock(key)

    @property
    def loaded(self) -> bool:
        return self._value is not UNSET

    def get(self) -> T:
        value = self._value
        if value is UNSET:
            with self._lock:
                if self._value is UNSET:
                    self._value = self._load()
                value = self._value
        return cast(T, value)

    def _load(self) -> T:
        if self._key is None:
            return self._loader()
        # The key's lock is held: read or fill the process-wide entry for this model.
        if self._key not in _SHARED:
            _SHARED[self._key] = self._loader()
        return cast(T, _SHARED[self._key])


def shared(key: Hashable, loader: Callable[[], T]) -> Lazy[T]:
    """A lazy holder whose value is shared process-wide with every holder of the same key."""
    return Lazy(loader, key=key)


def clear_shared() -> None:
    """Forget every shared model (tests; or to free memory between runs)."""
    with _SHARED_LOCK:
        _SHARED.clear()
