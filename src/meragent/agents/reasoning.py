"""The reasoning agent: merge the modality clues into one description plus a six-class choice.

Models that can fill a schema (tool calling / JSON schema, e.g. vLLM-served Qwen) get a pydantic
schema whose ``emotion`` field is restricted to the six classes. Models that cannot (small local
models, plain fakes) answer in text ending with ``Answer: <class>``; the parser then recovers
the choice from that line, from the last six-class word (or synonym) the text mentions, or gives
up with a flag. Every oddity becomes a flag; the raw text always goes back to the caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from meragent.agents.call_record import call_fields
from meragent.agents.chat import ChatCallError, ChatReply, RoleChat
from meragent.agents.prompts import SIX_CLASS_LIST, available_modalities, reasoning_messages
from meragent.schema import EMOTION_ALIASES, EMOTIONS, Clue

#: Words a model uses for one of the six classes (besides the class names themselves).
SIX_CLASS_SYNONYMS: dict[str, str] = {
    **EMOTION_ALIASES,
    "calm": "neutral",
    "indifferent": "neutral",
    "composed": "neutral",
    "anger": "angry",
    "furious": "angry",
    "annoyed": "angry",
    "irritated": "angry",
    "mad": "angry",
    "rage": "angry",
    "happiness": "happy",
    "joy": "happy",
    "joyful": "happy",
    "glad": "happy",
    "cheerful": "happy",
    "delighted": "happy",
    "excited": "happy",
    "pleased": "happy",
    "sadness": "sad",
    "unhappy": "sad",
    "sorrow": "sad",
    "sorrowful": "sad",
    "depressed": "sad",
    "upset": "sad",
    "grief": "sad",
    "anxious": "worried",
    "anxiety": "worried",
    "nervous": "worried",
    "afraid": "worried",
    "fear": "worried",
    "fearful": "worried",
    "scared": "worried",
    "concerned": "worried",
    "shocked": "surprise",
    "astonished": "surprise",
    "amazed": "surprise",
}
_CLASS_WORDS: dict[str, str] = {**{name: name for name in EMOTIONS}, **SIX_CLASS_SYNONYMS}
_WORD = re.compile(r"[a-z]+")
_ANSWER_LINE = re.compile(
    r"^\W*(?:final\s+)?(?:answer|emotion|class|label|prediction)\s*[:：=\-]\s*\W*([a-z]+)",
    re.IGNORECASE | re.MULTILINE,
)
_NEGATIONS = {"not", "no", "never", "without", "isn't", "wasn't", "nor"}
#: Shorter echoed lines ("Observations:") are left alone: they may be the model's own words.
ECHO_MIN_CHARS = 12


class SixClassAnswer(BaseModel):
    """What a schema-capable model fills in: a description and one constrained class."""

    description: str = Field(
        description="A short paragraph on the person's emotional state and the evidence for it."
    )
    emotion: Literal["neutral", "angry", "happy", "sad", "worried", "surprise"] = Field(
        description=f"The single closest class, one of: {SIX_CLASS_LIST}."
    )


@dataclass
class ReasoningResult:
    """The reasoning step's outcome and everything the trace needs."""

    description: str
    choice: str | None
    flags: list[str]
    raw: str
    prompt: list[dict[str, str]]
    structured: bool
    retries: int = 0
    latency_s: float = 0.0
    usage: dict[str, Any] | None = None
    modalities: list[str] = field(default_factory=list)

    def parsed(self) -> dict[str, Any]:
        """What the trace stores as the parsed output."""
        return {
            "description": self.description,
            "choice": self.choice,
            "flags": self.flags,
            "structured": self.structured,
            "modalities": self.modalities,
        }


def class_of_word(word: str) -> str | None:
    """Map one word to a six-class name via names, aliases and synonyms (None if unrelated)."""
    return _CLASS_WORDS.get(word.strip().lower())


def last_class_mention(text: str) -> str | None:
    """The six-class meaning of the last non-negated class word or synonym in ``text``."""
    words = _WORD.findall(text.lower().replace("n't", " not"))
    for index in range(len(words) - 1, -1, -1):
        emotion = _CLASS_WORDS.get(words[index])
        if emotion is None:
            continue
        previous = set(words[max(0, index - 2) : index])
        if previous & _NEGATIONS:
            continue
        return emotion
    return None


def _norm(line: str) -> str:
    return " ".join(re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line).split()).lower()


def strip_prompt_echo(text: str, prompt: str) -> tuple[str, bool]:
    """Drop output lines that repeat a prompt line verbatim (small models often echo)."""
    prompt_lines = {_norm(line) for line in prompt.splitlines()}
    kept = [
        line
        for line in text.splitlines()
        if len(_norm(line)) < ECHO_MIN_CHARS or _norm(line) not in prompt_lines
    ]
    stripped = "\n".join(kept).strip()
    return stripped, stripped != text.strip()


def parse_reasoning_text(raw: str | None) -> tuple[str, str | None, list[str]]:
    """Split free text into (description, six-class choice or None, flags)."""
    text = (raw or "").strip()
    if not text:
        return "", None, ["empty_output"]
    flags: list[str] = []
    choice = None
    matches = list(_ANSWER_LINE.finditer(text))
    description = text
    if matches:
        last = matches[-1]
        choice = class_of_word(last.group(1))
        description = (text[: last.start()] + text[last.end() :]).strip()
        if choice is None:
            flags.append("answer_not_a_class")
    else:
        flags.append("no_answer_line")
    return _checked_answer(description, choice, flags, text)


def _checked_answer(
    description: str, choice: str | None, flags: list[str], text: str
) -> tuple[str, str | None, list[str]]:
    """No choice: take the last class ``text`` names; flag what is missing."""
    if choice is None:
        choice = last_class_mention(text)
        flags.append("choice_from_text" if choice else "no_six_class_choice")
    if not description:
        flags.append("empty_description")
    return description, choice, flags


def _unparsed_fields(reply_message: Any) -> tuple[str, dict[str, Any] | None]:
    """Raw text of a schema call that did not validate, and its fields when they are a dict."""
    for call in getattr(reply_message, "tool_calls", None) or []:
        args = call.get("args") or {}
        return json.dumps(args, ensure_ascii=False), args if isinstance(args, dict) else None
    content = getattr(reply_message, "content", "")
    text = content if isinstance(content, str) else str(content)
    try:
        fields = json.loads(text)
    except (ValueError, TypeError):
        return text, None
    return text, fields if isinstance(fields, dict) else None


def _parse_unvalidated(
    raw: str, fields: dict[str, Any] | None
) -> tuple[str, str | None, list[str]]:
    """Best effort on a schema answer that failed validation (e.g. an emotion outside the six)."""
    if fields is None:
        return parse_reasoning_text(raw)
    description = str(fields.get("description") or "").strip()
    choice = class_of_word(str(fields.get("emotion") or ""))
    flags = [] if choice else ["answer_not_a_class"]
    return _checked_answer(description, choice, flags, description)


def fallback_description(clues: Sequence[Clue]) -> str:
    """A description assembled from the clue texts, used when the model wrote none."""
    parts = [f"{c.modality.value}: {c.text.strip()}" for c in clues if c.available and c.text]
    return " ".join(parts)


def _ask_structured(chat: RoleChat, clues: Sequence[Clue]) -> ReasoningResult | None:
    """The schema route; None when the server rejects this request's schema (use plain text).

    The fallback is for this call only: one odd reply says nothing about the next request, and
    a process that stopped sending schemas would silently answer worse for every later clip.
    """
    messages = reasoning_messages(clues, structured=True)
    try:
        answer = chat.invoke_structured(messages, SixClassAnswer)
    except ChatCallError as exc:
        if exc.transient:
            raise  # the server is down, slow or garbled: the clip's error, not a format problem
        return None
    reply = answer.raw
    flags: list[str] = []
    choice: str | None
    if isinstance(answer.parsed, SixClassAnswer):
        description, choice = answer.parsed.description.strip(), answer.parsed.emotion
        raw = json.dumps(answer.parsed.model_dump(), ensure_ascii=False)
        if not description:
            flags.append("empty_description")
    else:
        raw, fields = _unparsed_fields(reply.message)
        flags.append("structured_parse_failed")
        description, choice, more = _parse_unvalidated(raw, fields)
        flags.extend(more)
    return _result(reply, messages, raw, (description, choice, flags), structured=True)


def _ask_text(chat: RoleChat, clues: Sequence[Clue]) -> ReasoningResult:
    """The plain-text route for models without tool calling: parse the 'Answer:' line."""
    messages = reasoning_messages(clues, structured=False)
    reply = chat.invoke(messages)
    description, choice, flags = parse_reasoning_text(reply.text)
    description, echoed = strip_prompt_echo(description, messages[-1]["content"])
    if echoed:
        flags.append("prompt_echo")
    return _result(reply, messages, reply.text, (description, choice, flags), structured=False)


def _result(
    reply: ChatReply,
    messages: list[dict[str, str]],
    raw: str,
    answer: tuple[str, str | None, list[str]],
    *,
    structured: bool,
) -> ReasoningResult:
    """The result of one reasoning call: its parsed ``answer`` plus the call's own figures."""
    description, choice, flags = answer
    return ReasoningResult(
        description=description,
        choice=choice,
        flags=flags,
        structured=structured,
        **call_fields(reply, messages, raw),
    )


def reason(
    chat: RoleChat, clues: Sequence[Clue], *, structured: bool | None = None
) -> ReasoningResult:
    """Ask the reasoning model for a description and a six-class choice (LLMError on failure).

    ``structured`` forces (True) or forbids (False) the schema route; by default it is used
    when the model supports it.
    """
    use_schema = chat.supports_structured_output() if structured is None else structured
    result = _ask_structured(chat, clues) if use_schema else None
    if result is None:
        result = _ask_text(chat, clues)
        if use_schema:
            result.flags.append("structured_unsupported")
    if not result.description:
        result.description = fallback_description(clues)
        result.flags.append("description_from_clues")
    result.modalities = available_modalities(clues)
    return result
