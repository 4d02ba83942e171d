"""Decoding that ends: stop criteria and repeat handling for in-process generation.

Small models fall into loops: the tuned labeler writes ``'happy', 'happy', …`` and the
reasoning LLM repeats one sentence until the token cap. Two stop rules end those loops:

* ``list`` answers stop at the closing ``]`` of the list (the end of the list line) and as soon
  as a completed item repeats an earlier one;
* ``prose`` answers stop as soon as a completed sentence repeats an earlier one, and the repeat
  is cut from the text.

Both rules only read the completion, never the prompt: a repetition penalty or
``no_repeat_ngram_size`` would also push the model away from the words of the description it
must label (both score prompt tokens too), so they are off by default and available as options.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AnswerShape = Literal["list", "prose", "free"]

_ITEM_SPLIT = re.compile(r"[,，、;；\n\[\]]")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？\n])")
_ITEM_STRIP = " \t\"'`“”‘’.:"
MIN_SENTENCE_WORDS = 4


class DecodingSettings(BaseModel):
    """How one generation call decodes; the same object serves the labeler and the reasoning LLM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(default=48, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    shape: AnswerShape = "free"
    stop_on_repeat: bool = True
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    no_repeat_ngram_size: int = Field(default=0, ge=0)

    def generate_kwargs(self) -> dict[str, Any]:
        """Sampling keyword arguments for ``model.generate`` (greedy at temperature 0)."""
        kwargs: dict[str, Any] = (
            {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": None}
            if self.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kwargs


#: The labeler's answer: one list line, no item twice.
LIST_DECODING = DecodingSettings(shape="list")
#: Descriptions and other prose: no sentence twice.
PROSE_DECODING = DecodingSettings(shape="prose", max_new_tokens=128)


def _norm(piece: str) -> str:
    return " ".join(piece.strip(_ITEM_STRIP).lower().split())


def completed_items(text: str) -> list[str]:
    """List items followed by a delimiter (the last, still growing item is left out)."""
    pieces = _ITEM_SPLIT.split(text)
    return [p for p in (_norm(piece) for piece in pieces[:-1]) if p]


def completed_sentences(text: str) -> list[str]:
    """Sentences that end with a terminator (the unfinished tail is left out).

    Pieces under ``MIN_SENTENCE_WORDS`` words are left out: a closing ``}`` or a short list
    line may legitimately come twice (JSON, bullet lists); a repeated sentence may not.
    """
    pieces = _SENTENCE_END.split(text)
    normed = (_norm(piece) for piece in pieces[:-1])
    return [p for p in normed if len(p.split()) >= MIN_SENTENCE_WORDS]


def has_repeat(pieces: list[str]) -> bool:
    """True when the newest completed piece already appeared earlier."""
    return len(pieces) > 1 and pieces[-1] in pieces[:-1]


def answer_is_done(text: str, settings: DecodingSettings) -> bool:
    """Whether a partial completion has ended by the rules of ``settings.shape``."""
    if settings.shape == "list":
        opened = text.find("[")
        if opened >= 0 and "]" in text[opened:]:
            return True
        return settings.stop_on_repeat and has_repeat(completed_items(text))
    if settings.shape == "prose":
        return settings.stop_on_repeat and has_repeat(completed_sentences(text))
    return False


def trim_repeats(text: str, settings: DecodingSettings) -> str:
    """Prose: drop everything from the first sentence that repeats an earlier one."""
    if settings.shape != "prose" or not settings.stop_on_repeat:
        return text
    pieces = _SENTENCE_END.split(text)
    seen: set[str] = set()
    kept: list[str] = []
    for piece in pieces:
        key = _norm(piece)
        long_enough = len(key.split()) >= MIN_SENTENCE_WORDS
        if long_enough and key in seen:
            break
        if long_enough:
            seen.add(key)
        kept.append(piece)
    return "".join(kept).strip()


def stopping_criteria(tokenizer: Any, prompt_width: int, settings: DecodingSettings) -> Any:
    """A transformers ``StoppingCriteriaList`` ending each row when its answer is done."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _AnswerDone(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            texts = tokenizer.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
            done = [answer_is_done(text, settings) for text in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    if settings.shape == "free":
        return StoppingCriteriaList([])
    return StoppingCriteriaList([_AnswerDone()])
