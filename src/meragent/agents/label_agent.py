"""The labeler agent: open-vocabulary emotion labels from a description.

Prompt and parser come from ``meragent.agents.labeler`` (shared with LoRA tuning). This module
calls the model, parses whatever came back, and drops words that are clearly not emotional
states (the person, the video, "none", ...). Open-vocabulary ground truth contains unusual
labels ("question", "memories", "low"), so only a short list of meta words is removed rather
than keeping a whitelist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from meragent.agents.call_record import call_fields
from meragent.agents.chat import RoleChat
from meragent.agents.labeler import labeler_messages, parse_labels

#: Words a small model emits in a label list that never name an emotional state.
NON_EMOTION_WORDS: frozenset[str] = frozenset(
    {
        "a", "an", "the", "and", "or", "it", "he", "she", "they", "i", "you", "we",
        "person", "people", "man", "woman", "boy", "girl", "character", "speaker", "individual",
        "video", "audio", "clip", "scene", "image", "frame", "subtitle", "subtitles", "text",
        "face", "voice", "tone", "words", "description", "descriptions", "emotion", "emotions",
        "emotional state", "emotional states", "label", "labels", "list", "answer", "output",
        "none", "nothing", "null", "n/a", "na", "unknown", "unclear", "not sure", "no emotion",
        "example", "examples", "assistant", "user", "system",
    }
)  # fmt: skip
_HAS_LETTER = re.compile(r"[^\W\d_]")
#: Characters no emotion label contains; an item with them is copied prompt or markup.
_NOT_LABEL_CHARS = re.compile(r"[:=\"'<>{}\[\]|/\\@#]")
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an|his|her|their)\s+")


def split_non_emotion(labels: list[str]) -> tuple[list[str], list[str]]:
    """Partition labels into (kept, dropped): meta words, no letters, or markup characters."""
    kept, dropped = [], []
    for label in labels:
        bare = _LEADING_ARTICLE.sub("", label)
        if (
            bare in NON_EMOTION_WORDS
            or not _HAS_LETTER.search(label)
            or _NOT_LABEL_CHARS.search(label)
        ):
            dropped.append(label)
        else:
            kept.append(label)
    return kept, dropped


@dataclass
class LabelResult:
    """The labeler step's outcome and everything the trace needs."""

    labels: list[str]
    flags: list[str]
    raw: str
    prompt: list[dict[str, str]]
    dropped: list[str] = field(default_factory=list)
    retries: int = 0
    latency_s: float = 0.0
    usage: dict[str, Any] | None = None

    def parsed(self) -> dict[str, Any]:
        return {"labels": self.labels, "flags": self.flags, "dropped": self.dropped}


def extract_labels(chat: RoleChat, description: str, *, few_shot: bool = True) -> LabelResult:
    """Ask the labeler model for labels and parse them best-effort (LLMError on failure)."""
    messages = labeler_messages(description, few_shot=few_shot)
    if not description.strip():
        # Nothing to read: the honest answer is an empty list, without spending a call.
        return LabelResult(labels=[], flags=["empty_description"], raw="", prompt=messages)
    reply = chat.invoke(messages)
    parsed = parse_labels(reply.text)
    labels, dropped = split_non_emotion(parsed.labels)
    flags = list(parsed.flags)
    if dropped:
        flags.append("dropped_non_emotion")
    return LabelResult(
        labels=labels, flags=flags, dropped=dropped, **call_fields(reply, messages, reply.text)
    )
