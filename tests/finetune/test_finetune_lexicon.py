"""Lexicon baseline: whole-word, longest-phrase matching of word forms mapped to family names."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_fixtures import write_toy_word_forms

from meragent.errors import DataError
from meragent.finetune.ov_lexicon import LexiconExtractor


@pytest.fixture()
def lexicon(tmp_path: Path) -> LexiconExtractor:
    return LexiconExtractor.from_csv(write_toy_word_forms(tmp_path / "forms.csv"))


def test_forms_map_to_family_names_in_order_of_first_occurrence(
    lexicon: LexiconExtractor,
) -> None:
    text = "He spoke ANGRILY, then sadly; his happiness was gone, anger again."
    assert lexicon.extract(text) == ["angry", "sad", "happy"]


def test_only_whole_words_and_phrases_match(lexicon: LexiconExtractor) -> None:
    # "sadden"/"unhappy" contain forms but are other words; "at ease" is a two-word phrase.
    assert lexicon.extract("Saddened and unhappy, he was not at ease.") == ["at ease"]
    assert lexicon.extract("at the east") == []


def test_chinese_text_finds_nothing(lexicon: LexiconExtractor) -> None:
    assert lexicon.extract("他很生气，也很伤心。") == []


def test_bad_word_forms_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        LexiconExtractor.from_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("word,forms\nhappy,happy\n", encoding="utf-8")
    with pytest.raises(DataError, match="needs columns 'name' and 'format'"):
        LexiconExtractor.from_csv(bad)
