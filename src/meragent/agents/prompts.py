"""The reasoning agent's prompt: clues of each modality in a fixed order, then the task.

The prompt asks what the MER2024 paper's Table 2 / EMER prompts ask (an emotion expert who
weighs the clues of each modality, uses them to read the subtitle, describes the evidence and
finally states the person's emotional state), in our own words. The clue order is always
acoustic, visual, lexical, and a modality with nothing usable gets an explicit note instead of
silence, so the model never invents it. Clues are one compact line each ("Voice: ...") because
small local models copy numbered headings back instead of answering.
"""

from __future__ import annotations

from collections.abc import Sequence

from meragent.schema import EMOTIONS, Clue, Modality

#: Fixed order in which modalities are shown to the model.
MODALITY_ORDER: tuple[Modality, ...] = (Modality.ACOUSTIC, Modality.VISUAL, Modality.LEXICAL)
#: Line label of each modality's clues.
MODALITY_LABELS: dict[Modality, str] = {
    Modality.ACOUSTIC: "Voice",
    Modality.VISUAL: "Face and body",
    Modality.LEXICAL: "Words",
}
CLUES_INTRO = (
    "Clues about the person, in this order: voice and sounds (acoustic), face, gestures and "
    "surroundings (visual), spoken words (lexical)."
)
#: Clue texts are cut to this many characters so one noisy tool cannot flood the prompt.
MAX_CLUE_CHARS = 600
#: How many of a tool's class scores to show next to its clue.
TOP_SCORES = 3

REASONING_SYSTEM_PROMPT = (
    "You are an experienced analyst of human emotion. You receive observations about the main "
    "person in a short video clip, collected by automatic tools from three sources: their voice, "
    "their face and body, and their words. Tools can be wrong, and a source may be missing."
)

REASONING_TASK = (
    "Say what each clue suggests about how the person feels, using the voice and the face to "
    "tell how the words are meant. Then describe the person's emotional state and the evidence "
    "for it in two or three sentences."
)

SIX_CLASS_LIST = ", ".join(EMOTIONS)

#: Appended for models answering in plain text (no tool calling): a parseable last line.
TEXT_ANSWER_FORMAT = (
    f"End with one line 'Answer: <class>', where <class> is the closest of: {SIX_CLASS_LIST}."
)

#: Appended for models that fill a schema: the fields carry the format.
STRUCTURED_ANSWER_FORMAT = (
    "Put the description in 'description' and the single closest class in 'emotion' "
    f"(one of: {SIX_CLASS_LIST})."
)


def _shorten(text: str, limit: int = MAX_CLUE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _scores(probs: dict[str, float] | None) -> str:
    if not probs:
        return ""
    best = sorted(probs.items(), key=lambda item: item[1], reverse=True)[:TOP_SCORES]
    return "tool scores: " + ", ".join(f"{name} {value:.2f}" for name, value in best)


def spoken_text(clue: Clue) -> str:
    """The words of a lexical clue: the tool's raw subtitle/transcript when it kept one."""
    words = clue.data.get("subtitle") or clue.data.get("transcript")
    return words if isinstance(words, str) and words.strip() else clue.text


def _mentions_scores(text: str, probs: dict[str, float]) -> bool:
    """Whether a tool already wrote its top score into its text (then it is not repeated)."""
    name, value = max(probs.items(), key=lambda item: item[1])
    return name in text and f"{value:.2f}" in text


def _clue_body(clue: Clue) -> str:
    """A clue's text (quoted when spoken) and its top scores unless the text already has them."""
    if clue.modality is Modality.LEXICAL:
        words = _shorten(spoken_text(clue))
        text = f'"{words}"' if words.strip() else ""
    else:
        text = _shorten(clue.text) if clue.text.strip() else ""
    scores = "" if clue.probs and _mentions_scores(text, clue.probs) else _scores(clue.probs)
    return " ".join(part for part in (text, f"({scores})" if scores else "") if part) or "-"


def _clue_label(clue: Clue, *, with_source: bool) -> str:
    label = MODALITY_LABELS[clue.modality]
    details = [clue.source] if with_source else []
    language = clue.data.get("language") if clue.modality is Modality.LEXICAL else None
    if isinstance(language, str) and language:
        details.append(language)
    return f"{label} ({', '.join(details)})" if details else label


def render_clue(clue: Clue, *, with_source: bool = False) -> str:
    """One line for a usable clue, e.g. ``Words (en): "I passed!"``."""
    return f"{_clue_label(clue, with_source=with_source)}: {_clue_body(clue)}"


def missing_note(modality: Modality, clues: Sequence[Clue]) -> str:
    """The explicit line for a modality with no usable clue (and why, when a tool said so)."""
    reasons = sorted({c.error for c in clues if c.error})
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return (
        f"{MODALITY_LABELS[modality]}: not available for this clip{why}; do not guess it, "
        "rely on the other clues."
    )


def _usable(clue: Clue) -> bool:
    return clue.available and bool(clue.text.strip() or clue.probs)


def render_clues(clues: Sequence[Clue]) -> str:
    """Every clue on its own line, always acoustic, then visual, then lexical."""
    lines = [CLUES_INTRO]
    for modality in MODALITY_ORDER:
        of_modality = [c for c in clues if c.modality is modality]
        usable = [c for c in of_modality if _usable(c)]
        if not usable:
            lines.append(missing_note(modality, of_modality))
        # Several clues of one modality (a tool and an audio/video LLM) are told apart by source.
        lines.extend(render_clue(c, with_source=len(usable) > 1) for c in usable)
    return "\n".join(lines)


def available_modalities(clues: Sequence[Clue]) -> list[str]:
    """Modalities with at least one usable clue, in prompt order."""
    return [m.value for m in MODALITY_ORDER if any(c.modality is m and _usable(c) for c in clues)]


def reasoning_messages(clues: Sequence[Clue], *, structured: bool) -> list[dict[str, str]]:
    """System + user messages asking for a description and a six-class choice."""
    answer_format = STRUCTURED_ANSWER_FORMAT if structured else TEXT_ANSWER_FORMAT
    user = f"{render_clues(clues)}\n\n{REASONING_TASK} {answer_format}"
    return [
        {"role": "system", "content": REASONING_SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]
