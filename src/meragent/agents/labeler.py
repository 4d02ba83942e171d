"""The labeler's prompt and its parser: one source of truth for the graph and for LoRA tuning.

The prompt asks for what the MER2024 paper's section 2.3 asks (only clearly identifiable
emotional states, comma-separated, as a list, an empty list when none), in our own words.
The parser accepts the many list-ish shapes small LLMs produce.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from meragent.eval.parsing import literal_string_list

LABELER_SYSTEM_PROMPT = (
    "You are a specialist in reading human emotion. You will get a description of a person in a "
    "video, gathered from their face, voice and words. Name the emotional states of the main "
    "person that the description clearly supports. Answer with a single list of short emotion "
    "words, separated by commas, for example ['happy', 'relieved']. Leave out anything that is "
    "only a guess. If no emotional state is clearly supported, answer []."
)

#: Few-shot pairs (description, answer); written for this project, not taken from any dataset.
LABELER_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "She smiles broadly and her voice rises as she says she finally passed the exam.",
        "['happy', 'excited', 'relieved']",
    ),
    (
        "He frowns, speaks sharply and slams the table while saying this is unacceptable.",
        "['angry', 'dissatisfied']",
    ),
    ("The man reads a train timetable aloud in an even tone.", "[]"),
)

# Max words in one label: longer items are sentences the model wrote, not labels.
MAX_LABEL_WORDS = 4
_SPLIT = re.compile(r"[,，、;；\n]|\band\b")
_STRIP_CHARS = " \t\"'`“”‘’「」[]()（）{}.。:：*-•"
_ENUM_PREFIX = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")


def labeler_user_message(description: str) -> str:
    """The user turn: the description to extract labels from."""
    return f"Description:\n{description.strip()}\n\nEmotion list:"


def labeler_messages(description: str, *, few_shot: bool = True) -> list[dict[str, str]]:
    """Chat messages (system, optional examples, user) for one description."""
    messages = [{"role": "system", "content": LABELER_SYSTEM_PROMPT}]
    if few_shot:
        for example, answer in LABELER_EXAMPLES:
            messages.append({"role": "user", "content": labeler_user_message(example)})
            messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": labeler_user_message(description)})
    return messages


def format_labels(labels: list[str]) -> str:
    """Write labels as the Python-list string the parser (and MER CSVs) expect."""
    return repr([label.strip().lower() for label in labels if label.strip()])


class LabelParse(BaseModel):
    """Labels recovered from raw LLM text, with flags saying what was odd about it."""

    labels: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    raw: str = ""


def _clean(item: str) -> str:
    item = _ENUM_PREFIX.sub("", item)
    return " ".join(item.strip(_STRIP_CHARS).lower().split())


def parse_labels(raw: str | None) -> LabelParse:
    """Recover a de-duplicated, lower-case label list from whatever the model wrote."""
    text = (raw or "").strip()
    flags: list[str] = []
    if not text:
        return LabelParse(labels=[], flags=["empty_output"], raw=raw or "")
    bracket = re.search(r"\[[^\[\]]*\]", text)
    if bracket:
        if text[: bracket.start()].strip() or text[bracket.end() :].strip():
            flags.append("extra_text")
        body = bracket.group(0)
        items = literal_string_list(body)
        if items is None:
            items = _SPLIT.split(body[1:-1])
    else:
        flags.append("no_brackets")
        items = _SPLIT.split(text)
    labels: dict[str, None] = {}
    dropped = False
    for item in items:
        label = _clean(item)
        if not label:
            continue
        if len(label.split()) > MAX_LABEL_WORDS or not re.search(r"[a-z\u4e00-\u9fff]", label):
            dropped = True
            continue
        labels.setdefault(label, None)
    if dropped:
        flags.append("dropped_items")
    if not labels and text not in ("[]", "['']"):
        flags.append("no_labels_found")
    return LabelParse(labels=list(labels), flags=flags, raw=raw or "")
