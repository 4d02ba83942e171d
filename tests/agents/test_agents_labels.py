"""The labeler agent: best-effort parsing, non-emotion words dropped, nothing valid lost."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest
from langchain_core.language_models import GenericFakeChatModel

from meragent.agents.chat import RoleChat
from meragent.agents.label_agent import extract_labels, split_non_emotion
from meragent.agents.labeler import labeler_messages

OV_LABELS = Path(__file__).resolve().parents[3] / "shared" / "data" / "ov332" / "openset_labels.csv"


def _chat(reply: str) -> RoleChat:
    return RoleChat("labeler", GenericFakeChatModel(messages=iter([reply])))


def test_clean_list_is_parsed() -> None:
    result = extract_labels(_chat("['Happy', 'relieved', 'happy']"), "She smiles.")
    assert result.labels == ["happy", "relieved"]
    assert result.flags == []
    assert result.prompt == labeler_messages("She smiles.")
    assert result.raw == "['Happy', 'relieved', 'happy']"


def test_non_emotion_words_are_dropped_and_flagged() -> None:
    result = extract_labels(_chat("[the person, video, 42, happy，tense]"), "x")
    assert result.labels == ["happy", "tense"]
    assert result.dropped == ["the person", "video"]
    assert result.flags == ["dropped_items", "dropped_non_emotion"]  # "42" went in parsing


def test_garbage_is_kept_raw_and_flagged() -> None:
    result = extract_labels(_chat("I cannot answer that because the description is vague."), "x")
    assert result.labels == []
    assert result.raw.startswith("I cannot answer")
    assert "no_brackets" in result.flags
    assert "no_labels_found" in result.flags


def test_empty_output_gives_no_labels_and_a_flag() -> None:
    result = extract_labels(_chat(""), "She smiles.")
    assert result.labels == []
    assert result.flags == ["empty_output"]


def test_empty_description_costs_no_call() -> None:
    model = GenericFakeChatModel(messages=iter([]))
    result = extract_labels(RoleChat("labeler", model), "   ")
    assert (result.labels, result.flags, result.raw) == ([], ["empty_description"], "")


@pytest.mark.skipif(not OV_LABELS.is_file(), reason="shared OV annotations not present")
def test_every_ground_truth_label_of_ov332_survives_the_filter() -> None:
    labels = set()
    with OV_LABELS.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            labels.update(label.strip().lower() for label in ast.literal_eval(row["openset"]))
    kept, dropped = split_non_emotion(sorted(labels))
    assert dropped == []
    assert len(kept) == len(labels) == 248
