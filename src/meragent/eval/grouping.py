"""Synonym groupers for MER-OV: a small registry (in the spirit of lm-eval-harness's) by name.

A grouper maps each label of a sample to a group id (MER2024 Eq. 4-5, the function G). Labels
are lower-cased before grouping and a label that no group contains maps to itself. Built-ins:

* ``identity`` - every label is its own group.
* ``cached`` - per-sample groups from a JSON file ``{sample: [[label, ...], ...]}`` (the format
  of the organisers' GPT grouping); a label maps to the first member of its group.
* ``embedding`` - sentence-embedding neighbours + word forms (:mod:`.embedding_grouper`).
* ``llm`` - a chat model groups each sample's labels, cached on disk (:mod:`.llm_grouper`).
* ``wheel`` - labels onto one MER2025 emotion wheel level (:mod:`.wheel`).

The last three live in their own modules, imported only when asked for, so importing this
module stays cheap. A grouper may have a ``fit(labels)`` method; :func:`meragent.eval.ov.score_ov`
calls it once with every distinct label of ground truth and prediction before scoring.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from meragent.errors import ConfigError, DataError


@runtime_checkable
class Grouper(Protocol):
    """Maps the labels of one sample to group ids (same length, same order)."""

    def group_ids(self, sample: str, labels: Sequence[str]) -> list[str]: ...


@runtime_checkable
class FittableGrouper(Grouper, Protocol):
    """A grouper that must see every label once before grouping (e.g. a global clustering)."""

    def fit(self, labels: Iterable[str]) -> None: ...


GrouperFactory = Callable[..., Grouper]
F = TypeVar("F", bound=GrouperFactory)

_REGISTRY: dict[str, GrouperFactory] = {}
# Built-ins whose modules pull in faiss / langchain / pandas: imported on first request only.
_LAZY_BUILTINS: dict[str, str] = {
    "embedding": "meragent.eval.embedding_grouper",
    "llm": "meragent.eval.llm_grouper",
    "wheel": "meragent.eval.wheel",
}


def register_grouper(name: str) -> Callable[[F], F]:
    """Class/factory decorator: make ``get_grouper(name, **options)`` build it."""

    def decorate(factory: F) -> F:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"grouper {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_groupers() -> list[str]:
    """Names :func:`get_grouper` accepts."""
    return sorted(set(_REGISTRY) | set(_LAZY_BUILTINS))


def get_grouper(name: str, **options: Any) -> Grouper:
    """Build the grouper registered as ``name`` with ``options`` (ConfigError when unknown/bad)."""
    if name not in _REGISTRY and name in _LAZY_BUILTINS:
        importlib.import_module(_LAZY_BUILTINS[name])
    factory = _REGISTRY.get(name)
    if factory is None:
        known = ", ".join(available_groupers())
        raise ConfigError(f"unknown grouper {name!r} (known: {known})")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"grouper {name!r}: bad options: {exc}") from None
    return factory(**options)


def normalise_label(label: str) -> str:
    """The form every grouper and scorer compares: lower-cased (nothing else, as MERTools)."""
    return label.lower()


@register_grouper("identity")
class IdentityGrouper:
    """Every label is its own group (exact string match after lower-casing)."""

    name = "identity"

    def group_ids(self, sample: str, labels: Sequence[str]) -> list[str]:
        return [normalise_label(label) for label in labels]


@register_grouper("cached")
class CachedGrouper:
    """Per-sample synonym groups read from JSON ``{sample: [[label, ...], ...]}``.

    Each label maps to the first member of its group. When a label is listed in more than one
    group of a sample, the *last* such group wins: the organisers' scorer fills a dict group by
    group (``synonym_map[label] = group[0]``), and this reproduces it. Samples absent from the
    file fall back to identity and are remembered in :attr:`missing_samples`.
    """

    name = "cached"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        groups: Mapping[str, Sequence[Sequence[str]]] | None = None,
    ) -> None:
        if (path is None) == (groups is None):
            raise ConfigError("grouper 'cached' needs exactly one of path= or groups=")
        source = str(path) if path is not None else "groups"
        raw = read_groups_json(Path(path)) if path is not None else groups
        assert raw is not None  # narrowed by the check above
        self._maps = {sample: _group_map(sample, g, source) for sample, g in raw.items()}
        self.missing_samples: set[str] = set()

    @property
    def samples(self) -> list[str]:
        return list(self._maps)

    def groups_of(self, sample: str) -> dict[str, str]:
        """The label -> group id map of one sample (empty when the sample is not cached)."""
        return dict(self._maps.get(sample, {}))

    def group_ids(self, sample: str, labels: Sequence[str]) -> list[str]:
        mapping = self._maps.get(sample)
        if mapping is None:
            self.missing_samples.add(sample)
            mapping = {}
        keys = [normalise_label(label) for label in labels]
        return [mapping.get(key, key) for key in keys]


def read_groups_json(path: str | Path) -> dict[str, Any]:
    """The raw ``{sample: [[label, ...], ...]}`` object of a synonym-groups JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"synonym groups file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"synonym groups file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"synonym groups file {path}: expected an object {{sample: [[...]]}}")
    return data


def _group_map(sample: str, groups: Any, source: str) -> dict[str, str]:
    if not isinstance(groups, list | tuple) or not all(
        isinstance(group, list | tuple) and all(isinstance(m, str) for m in group)
        for group in groups
    ):
        raise DataError(f"{source}: sample {sample!r}: groups must be a list of lists of strings")
    mapping: dict[str, str] = {}
    for group in groups:
        if not group:
            continue
        head = normalise_label(group[0])
        for member in group:
            mapping[normalise_label(member)] = head
    return mapping
