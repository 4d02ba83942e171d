"""Synonym grouping by a chat model, one call per distinct label set, cached on disk.

The prompt (our own wording) asks what the MER2024 paper's section 3.4 grouping prompt asks: act
as an emotion expert, put words that are synonyms or describe a consistent emotional state in one
group, and answer with the groups only, as a list of lists. Replies are parsed leniently (Python
or JSON literal, bracketed groups inside chatter, or one group per line). Results are stored as
JSON files named by a hash of (model id, prompt version, sorted label set) under a directory the
caller passes in (normally ``Settings.cache_dir / "llm_groups"``), so a re-run costs nothing.

A call that fails or yields nothing usable leaves that sample ungrouped (identity), is recorded
in :attr:`LLMGrouper.failures`, and is not cached, so the next run retries it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meragent.agents.chat import model_id_of
from meragent.errors import one_line
from meragent.eval.grouping import normalise_label, register_grouper
from meragent.eval.parsing import mertools2025_list

#: Bump when the prompt changes so cached answers of the old prompt are not reused.
PROMPT_VERSION = "1"

GROUPING_SYSTEM_PROMPT = (
    "You are an expert on human emotions. You will receive a set of emotion words. Sort them "
    "into groups so that the words in one group are synonyms or name the same emotional state. "
    "Use every word exactly once and keep each word as written; a word with no partner forms a "
    "group of its own. Reply with the groups only, written as a list of lists."
)
_EXAMPLE_WORDS = ["cheerful", "furious", "happy", "angry", "tired"]
_EXAMPLE_ANSWER = "[['cheerful', 'happy'], ['furious', 'angry'], ['tired']]"

_FENCE = re.compile(r"```[a-zA-Z]*")
_INNER_LIST = re.compile(r"\[([^\[\]]*)\]")
_LINE_PREFIX = re.compile(r"^\s*(?:group\s*\d*\s*[:.)-]|\d+[.):]|[-*•])\s*", re.IGNORECASE)


def grouping_messages(labels: Sequence[str]) -> list[tuple[str, str]]:
    """(role, text) chat turns for one label set: system, one worked example, the request."""
    return [
        ("system", GROUPING_SYSTEM_PROMPT),
        ("human", _user_turn(_EXAMPLE_WORDS)),
        ("ai", _EXAMPLE_ANSWER),
        ("human", _user_turn(labels)),
    ]


def _user_turn(labels: Sequence[str]) -> str:
    return f"Emotion words: {json.dumps(list(labels), ensure_ascii=False)}\nGroups:"


def parse_groups(text: str, labels: Sequence[str]) -> list[list[str]] | None:
    """Groups of ``labels`` found in a reply, or None when the reply has no usable group.

    Words the model invented are dropped; a word placed in two groups stays in the first one.
    """
    known = {normalise_label(label).strip() for label in labels}
    for candidate in (_literal_groups(text), _bracketed_groups(text), _line_groups(text)):
        groups = _clean_groups(candidate, known)
        if groups:
            return groups
    return None


def _literal_groups(text: str) -> list[list[str]] | None:
    cleaned = _FENCE.sub("", text)
    start, end = cleaned.find("["), cleaned.rfind("]")
    if start < 0 or end <= start:
        return None
    source = cleaned[start : end + 1]
    for loader in (ast.literal_eval, json.loads):
        try:
            value = loader(source)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, list | tuple):
            # A flat list of words carries no grouping: each word is its own group.
            return [
                [str(v) for v in item] if isinstance(item, list | tuple) else [str(item)]
                for item in value
            ]
    return None


def _bracketed_groups(text: str) -> list[list[str]]:
    return [mertools2025_list(match) for match in _INNER_LIST.findall(text)]


def _line_groups(text: str) -> list[list[str]]:
    groups = []
    for line in _FENCE.sub("", text).splitlines():
        body = _LINE_PREFIX.sub("", line).strip()
        if "," in body:
            groups.append(mertools2025_list(body))
    return groups


def _clean_groups(candidate: list[list[str]] | None, known: set[str]) -> list[list[str]]:
    seen: set[str] = set()
    groups = []
    for group in candidate or []:
        members = []
        for member in group:
            key = normalise_label(str(member)).strip()
            if key in known and key not in seen:
                seen.add(key)
                members.append(key)
        if members:
            groups.append(members)
    return groups


def _reply_text(reply: Any) -> str:
    content = getattr(reply, "content", reply)
    if isinstance(content, list):
        parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in content]
        return "".join(parts)
    return str(content)


@register_grouper("llm")
class LLMGrouper:
    """Per-sample grouping by an injected LangChain chat model (anything with ``invoke``)."""

    name = "llm"

    def __init__(
        self, chat_model: Any, *, cache_dir: str | Path | None = None, model_id: str | None = None
    ) -> None:
        self.chat_model = chat_model
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.model_id = model_id or model_id_of(chat_model)
        self.failures: list[str] = []
        self.calls = 0
        self._memory: dict[str, dict[str, str]] = {}

    def group_ids(self, sample: str, labels: Sequence[str]) -> list[str]:
        keys = [normalise_label(label) for label in labels]
        distinct = sorted({key.strip() for key in keys if key.strip()})
        mapping = self._mapping(sample, distinct) if len(distinct) > 1 else {}
        return [mapping.get(key.strip(), key) for key in keys]

    def cache_key(self, labels: Sequence[str]) -> str:
        payload = json.dumps(
            {"model": self.model_id, "prompt": PROMPT_VERSION, "labels": sorted(set(labels))},
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _mapping(self, sample: str, labels: list[str]) -> dict[str, str]:
        key = self.cache_key(labels)
        if key in self._memory:
            return self._memory[key]
        groups = self._read_cache(key)
        if groups is None:
            groups = self._ask(sample, labels)
            if groups is None:
                return {}
            self._write_cache(key, labels, groups)
        mapping = {member: group[0] for group in groups for member in group}
        self._memory[key] = mapping
        return mapping

    def _ask(self, sample: str, labels: list[str]) -> list[list[str]] | None:
        self.calls += 1
        try:
            reply = self.chat_model.invoke(grouping_messages(labels))
        except Exception as exc:  # a backend can raise anything; one sample must not stop a run
            self.failures.append(f"{sample}: {one_line(exc, with_type=True)}")
            return None
        groups = parse_groups(_reply_text(reply), labels)
        if groups is None:
            self.failures.append(f"{sample}: reply has no list of groups")
        return groups

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.json"

    def _read_cache(self, key: str) -> list[list[str]] | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            groups = json.loads(path.read_text(encoding="utf-8"))["groups"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged entry is simply recomputed
        return groups if isinstance(groups, list) else None

    def _write_cache(self, key: str, labels: list[str], groups: list[list[str]]) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": self.model_id, "prompt": PROMPT_VERSION, "labels": labels}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**record, "groups": groups}, ensure_ascii=False), "utf-8")
        tmp.replace(path)  # atomic: a killed run never leaves half a file
