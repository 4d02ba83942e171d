"""Decoding that ends: list/prose stop rules, the cut tail of a capped list, self-consistency."""

from __future__ import annotations

from pathlib import Path

import pytest

from meragent.errors import ConfigError
from meragent.finetune.ov_eval import SystemPrediction, parse_generation, vote
from meragent.tools.causal_lm import generate_chat_batch, load_causal_lm_uncached
from meragent.tools.causal_lm_decoding import (
    LIST_DECODING,
    PROSE_DECODING,
    DecodingSettings,
    answer_is_done,
    stopping_criteria,
    trim_repeats,
)


@pytest.mark.parametrize(
    ("text", "done"),
    [
        ("['happy', 'sad']", True),  # the list line ended
        ("['happy', 'sad',", False),
        ("['happy', 'sad', 'happy',", True),  # a completed item repeats: the loop has begun
        ("['happy', 'sad', 'hap", False),  # a still-growing item is not a repeat yet
        ("happy, calm, happy,", True),  # no brackets: items still end at commas
    ],
)
def test_list_answers_end_at_the_bracket_or_a_repeated_item(text: str, done: bool) -> None:
    assert answer_is_done(text, LIST_DECODING) is done


def test_prose_ends_at_a_repeated_sentence_and_the_repeat_is_cut() -> None:
    a, b = "He smiles at the camera.", "His voice is calm and low."
    looping = f"{a} {b} {a} {b} He"
    assert answer_is_done(looping, PROSE_DECODING)
    assert not answer_is_done(f"{a} {b} He", PROSE_DECODING)
    assert trim_repeats(looping, PROSE_DECODING) == f"{a} {b}"
    # Short pieces (a closing brace, a one-word line) may come twice without ending the answer.
    nested = '{"a": {"b": 1}\n}\n}\n'
    assert not answer_is_done(nested, PROSE_DECODING)
    assert trim_repeats(nested, PROSE_DECODING) == nested.strip()
    # Free-form decoding keeps today's behaviour: nothing stops or is cut.
    free = DecodingSettings()
    assert not answer_is_done(looping, free) and trim_repeats(looping, free) == looping


def test_a_capped_list_loses_its_cut_item_and_repeats_collapse() -> None:
    capped = parse_generation("['happy', 'sad', 'happy', 'frust", hit_cap=True)
    assert capped.labels == ["happy", "sad"]
    assert "hit_token_cap" in capped.flags
    # An answer that ended on its own keeps every item (deduplicated).
    ended = parse_generation("['happy', 'sad', 'happy']")
    assert ended.labels == ["happy", "sad"] and "hit_token_cap" not in ended.flags


def test_vote_keeps_labels_most_samples_name() -> None:
    sets = [["happy", "calm"], ["happy"], ["happy", "sad", "calm"]]
    voted = vote([SystemPrediction(labels=labels) for labels in sets])
    assert voted.labels == ["happy", "calm"]
    assert "voted" in voted.flags


def test_vote_counts_spellings_as_one_and_keeps_half() -> None:
    sets = [["Worried", "sad"], ["worried"], ["angry"], ["sad", "tense"]]
    voted = vote([SystemPrediction(labels=labels) for labels in sets])
    # worried 2/4 and sad 2/4 reach half; angry and tense (1/4) do not.
    assert voted.labels == ["Worried", "sad"]
    assert "vote_fallback" not in voted.flags


def test_vote_without_a_half_keeps_the_best_supported_answer_whole() -> None:
    sets = [["happy"], ["sad", "tense"], ["tense", "angry"], ["calm"], ["relief"]]
    voted = vote([SystemPrediction(labels=labels) for labels in sets])
    # Nothing reaches 3 of 5; "tense" is named twice, so an answer holding it wins; mean
    # support: [sad, tense] 1.5 = [tense, angry] 1.5 > the others' 1.0; the first of equals.
    assert voted.labels == ["sad", "tense"]
    assert "vote_fallback" in voted.flags
    assert vote([SystemPrediction(labels=[]), SystemPrediction(labels=[])]).labels == []


def test_stopping_criteria_marks_each_row(tiny_llama: Path) -> None:
    import torch

    lm = load_causal_lm_uncached(str(tiny_llama))
    tok = lm.tokenizer
    prompt = tok("hi", add_special_tokens=False)["input_ids"]
    rows = ["['happy', 'sad']", "['happy', 'sa"]
    ids = [prompt + tok(r, add_special_tokens=False)["input_ids"] for r in rows]
    width = max(len(row) for row in ids)
    batch = torch.tensor([row + [tok.pad_token_id] * (width - len(row)) for row in ids])
    criteria = stopping_criteria(tok, len(prompt), LIST_DECODING)
    assert criteria[0](batch, None).tolist() == [True, False]


def test_generation_reports_the_cap_and_self_consistency_needs_a_temperature(
    tiny_llama: Path,
) -> None:
    from meragent.finetune.ov_data import OVSample
    from meragent.finetune.ov_eval import predict_with_lm

    lm = load_causal_lm_uncached(str(tiny_llama))
    messages = [{"role": "user", "content": "hello"}]
    # A random tiny model never closes a list within 3 tokens unless it emits EOS.
    result = generate_chat_batch(lm, [messages], max_new_tokens=3)[0]
    assert result.hit_cap == (result.completion_tokens == 3 and not result.text.endswith("]"))
    sample = OVSample(name="a", language="english", description="calm", labels=["calm"])
    greedy = LIST_DECODING.model_copy(update={"max_new_tokens": 4})
    with pytest.raises(ConfigError, match="temperature"):
        predict_with_lm(lm, [sample], max_prompt_tokens=400, decoding=greedy, votes=3)
    sampled = greedy.model_copy(update={"temperature": 0.7})
    voted = predict_with_lm(
        lm, [sample], max_prompt_tokens=400, decoding=sampled, votes=3, progress=False
    )
    assert "voted" in voted[0].flags and voted[0].raw.count(" || ") == 2
