"""The reasoning agent's prompt: clues of each modality in a fixed order, then the task.

The prompt asks what the MER2024 paper's Table 2 / EMER prompts ask (an emotion expert who
weighs the clues of each modality, uses them to read the subtitle, describes the evidence and
finally states the person's emotional state), in our own words. The clue order is always
acoustic, visual, lexical, and a modality with nothing usable gets an explicit note instead of
silence, so the model never invents it.
"""

from __future__ import annotations

from collections.abc import Sequence

from meragent.schema import EMOTIONS, Clue, Modality

#: Fixed order in which modalities are shown to the model.
MODALITY_ORDER: tuple[Modality, ...] = (Modality.ACOUSTIC, Modality.VISUAL, Modality.LEXICAL)
MODALITY_HEADINGS: dict[Modality, str] = {
    Modality.ACOUSTIC: "Acoustic (voice, tone, pace, sounds)",
    Modality.VISUAL: "Visual (face, gestures, body, surroundings)",
    Modality.LEXICAL: "Lexical (what the person says)",
}
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
    "Go through the sources one at a time and say what each one suggests about how the person "
    "feels. Use the voice and the face to decide how the words are meant when the words alone "
    "are ambiguous. Then, in two or three sentences, describe the person's emotional state and "
    "the evidence for it."
)

SIX_CLASS_LIST = ", ".join(EMOTIONS)

#: Appended for models answering in plain text (no tool calling): a parseable last line.
TEXT_ANSWER_FORMAT = (
    "End with one last line of the form 'Answer: <class>', where <class> is the single closest "
    f"of: {SIX_CLASS_LIST}."
)

#: Appended for models that fill a schema: the fields carry the format.
STRUCTURED_ANSWER_FORMAT = (
    "Put the paragraph in 'description' and the single closest class in 'emotion' "
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


def render_clue(clue: Clue) -> str:
    """One bullet for a usable clue: its source, its text (quoted when spoken), its top scores."""
    if clue.modality is Modality.LEXICAL:
        words = _shorten(spoken_text(clue))
        language = clue.data.get("language")
        source = f"{clue.source}, {language}" if language else clue.source
        text = f'"{words}"' if words.strip() else ""
    else:
        source, text = clue.source, _shorten(clue.text) if clue.text.strip() else ""
    scores = "" if clue.probs and _mentions_scores(text, clue.probs) else _scores(clue.probs)
    body = " ".join(part for part in (text, f"({scores})" if scores else "") if part)
    return f"- from {source}: {body or '(no text)'}"


def missing_note(modality: Modality, clues: Sequence[Clue]) -> str:
    """The explicit note for a modality with no usable clue (and why, when a tool said so)."""
    reasons = sorted({c.error for c in clues if c.error})
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return (
        f"- not available for this clip{why}. Do not guess what it would show; rely on the "
        "other sources."
    )


def render_clues(clues: Sequence[Clue]) -> str:
    """All clues grouped by modality, always in acoustic, visual, lexical order."""
    sections = []
    for number, modality in enumerate(MODALITY_ORDER, start=1):
        of_modality = [c for c in clues if c.modality is modality]
        usable = [c for c in of_modality if c.available and (c.text.strip() or c.probs)]
        lines = [render_clue(c) for c in usable] or [missing_note(modality, of_modality)]
        sections.append(f"{number}. {MODALITY_HEADINGS[modality]}\n" + "\n".join(lines))
    return "\n\n".join(sections)


def available_modalities(clues: Sequence[Clue]) -> list[str]:
    """Modalities with at least one usable clue, in prompt order."""
    return [
        m.value
        for m in MODALITY_ORDER
        if any(c.modality is m and c.available and (c.text.strip() or c.probs) for c in clues)
    ]


def reasoning_messages(clues: Sequence[Clue], *, structured: bool) -> list[dict[str, str]]:
    """System + user messages asking for a description and a six-class choice."""
    answer_format = STRUCTURED_ANSWER_FORMAT if structured else TEXT_ANSWER_FORMAT
    user = (
        "Observations, in the order acoustic, visual, lexical:\n\n"
        f"{render_clues(clues)}\n\n{REASONING_TASK} {answer_format}"
    )
    return [
        {"role": "system", "content": REASONING_SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]
