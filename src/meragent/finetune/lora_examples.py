"""Chat examples -> token ids with the loss on the answer only, and padded training batches.

The prompt is rendered with the model's chat template (or the plain fallback that
``meragent.tools.causal_lm`` installs), then the answer is the rest of the fully rendered
conversation (answer text + end-of-turn tokens). Prompt positions get label -100 so only the
answer tokens carry loss. Descriptions too long for the budget are shortened in the middle:
EMER descriptions open with facial cues and close with the overall inference, both useful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meragent.errors import ConfigError
from meragent.finetune.ov_data import OVSample, prompt_messages, training_messages
from meragent.tools.causal_lm import render_chat

IGNORE_INDEX = -100
_ELLIPSIS = " … "
# Tokens kept free below the budget when re-tokenising a shortened text shifts boundaries.
_SAFETY_TOKENS = 4


@dataclass
class TokenizedExample:
    """One training sequence: ids, labels (-100 on the prompt) and whether text was cut."""

    name: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _ids(tokenizer: Any, text: str) -> list[int]:
    # Templates write their own BOS/role tokens, so the tokenizer must not add more.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _shorten_middle(tokenizer: Any, text: str, keep_tokens: int) -> str:
    ids = _ids(tokenizer, text)
    if keep_tokens >= len(ids):
        return text
    head = keep_tokens // 2
    tail = keep_tokens - head
    start = tokenizer.decode(ids[:head], skip_special_tokens=True)
    end = tokenizer.decode(ids[len(ids) - tail :], skip_special_tokens=True) if tail else ""
    return f"{start.rstrip()}{_ELLIPSIS}{end.lstrip()}"


def fit_description(tokenizer: Any, description: str, max_prompt_tokens: int) -> tuple[str, bool]:
    """The description, shortened in the middle so the rendered prompt fits the budget."""
    prompt = render_chat(tokenizer, prompt_messages(description), generation_prompt=True)
    excess = len(_ids(tokenizer, prompt)) - max_prompt_tokens
    if excess <= 0:
        return description, False
    keep = len(_ids(tokenizer, description))
    for _ in range(4):  # decoding and re-encoding can shift a few tokens; re-check
        keep -= excess + _SAFETY_TOKENS
        if keep <= 0:
            raise ConfigError(
                f"max prompt budget {max_prompt_tokens} tokens is too small for the labeler prompt"
            )
        shortened = _shorten_middle(tokenizer, description, keep)
        prompt = render_chat(tokenizer, prompt_messages(shortened), generation_prompt=True)
        excess = len(_ids(tokenizer, prompt)) - max_prompt_tokens
        if excess <= 0:
            return shortened, True
    raise ConfigError(f"could not fit a description into {max_prompt_tokens} prompt tokens")


def encode_example(tokenizer: Any, sample: OVSample, *, max_prompt_tokens: int) -> TokenizedExample:
    """Tokenise prompt + answer; labels copy the answer ids and mask the prompt with -100."""
    description, truncated = fit_description(tokenizer, sample.description, max_prompt_tokens)
    prompt = render_chat(tokenizer, prompt_messages(description), generation_prompt=True)
    full = render_chat(
        tokenizer, training_messages(description, sample.labels), generation_prompt=False
    )
    if not full.startswith(prompt):
        raise ConfigError(
            "the chat template renders the prompt differently with and without an answer; "
            "cannot separate answer tokens"
        )
    # Tokenising the two parts separately keeps the boundary exact (no merge across it).
    prompt_ids = _ids(tokenizer, prompt)
    answer_ids = _ids(tokenizer, full[len(prompt) :])
    return TokenizedExample(
        name=sample.name,
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        truncated=truncated,
    )


def encode_examples(
    tokenizer: Any, samples: list[OVSample], *, max_prompt_tokens: int
) -> list[TokenizedExample]:
    """Encode every sample (see ``encode_example``)."""
    return [encode_example(tokenizer, s, max_prompt_tokens=max_prompt_tokens) for s in samples]


def collate(examples: list[TokenizedExample], pad_token_id: int) -> dict[str, Any]:
    """Right-pad a batch into tensors: pads are masked out of attention and of the loss."""
    import torch

    width = max(len(example.input_ids) for example in examples)
    input_ids, labels, attention = [], [], []
    for example in examples:
        pad = width - len(example.input_ids)
        input_ids.append(example.input_ids + [pad_token_id] * pad)
        labels.append(example.labels + [IGNORE_INDEX] * pad)
        attention.append([1] * len(example.input_ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(attention, dtype=torch.long),
    }
