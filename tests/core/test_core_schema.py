"""Schema: six classes in MERTools order, aliases, valence sentinel, openset cleaning."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from meragent.schema import EMOTIONS, Clip, Clue, Modality, normalize_emotion


def test_classes_are_in_mertools_order() -> None:
    assert EMOTIONS == ("neutral", "angry", "happy", "sad", "worried", "surprise")


@pytest.mark.parametrize(
    ("given", "expected"),
    [("Surprised", "surprise"), (" happy ", "happy"), ("WORRIED", "worried"), ("worry", "worried")],
)
def test_normalize_emotion_accepts_aliases_and_case(given: str, expected: str) -> None:
    assert normalize_emotion(given) == expected


def test_unknown_label_is_rejected_with_its_name() -> None:
    with pytest.raises(ValueError, match="'bored'"):
        normalize_emotion("bored")
    with pytest.raises(ValidationError):
        Clip(id="a", discrete="bored")


def test_missing_valence_sentinel_becomes_none() -> None:
    assert Clip(id="a", valence=-10).valence is None
    assert Clip(id="a", valence=float("nan")).valence is None
    assert Clip(id="a", valence=-2.5).valence == -2.5


def test_openset_is_lowercased_stripped_and_deduplicated() -> None:
    clip = Clip(id="a", openset=[" Happy", "happy", "", "Relieved "])
    assert clip.openset == ["happy", "relieved"]
    assert clip.has_ground_truth


def test_clip_without_labels_has_no_ground_truth() -> None:
    assert not Clip(id="a").has_ground_truth


def test_unavailable_clue_records_reason() -> None:
    clue = Clue.unavailable(Modality.ACOUSTIC, "prosody", "no audio stream")
    assert not clue.available
    assert clue.error == "no audio stream"
    assert clue.modality == "acoustic"
