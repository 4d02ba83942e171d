"""Fold scoring: per-system OV scores with exact values, mean ± std over folds, lexicon rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from meragent.finetune.lora_fold import score_systems
from meragent.finetune.ov_data import OVSample
from meragent.finetune.ov_eval import (
    SystemPrediction,
    embedding_grouper_factory,
    mean_std,
    predict_with_lexicon,
    summarise,
)
from meragent.finetune.ov_lexicon import LexiconExtractor


def _sample(name: str, labels: list[str], language: str = "english") -> OVSample:
    return OVSample(name=name, language=language, description="", labels=labels)


def test_score_systems_gives_hand_computed_set_metrics() -> None:
    test = [_sample("a", ["happy", "sad"]), _sample("b", ["angry"])]
    systems = {
        "lora": [
            SystemPrediction(labels=["happy", "angry", "calm"]),  # acc 1/3, recall 1/2
            SystemPrediction(labels=["angry"]),  # acc 1, recall 1
        ],
        "zero_shot": [SystemPrediction(labels=[]), SystemPrediction(labels=["sad"])],
    }
    scores = score_systems(test, systems, embedding_grouper_factory("none"))
    lora = scores["english"]["lora"]
    assert lora["accuracy"] == pytest.approx((1 / 3 + 1) / 2)
    assert lora["recall"] == pytest.approx((1 / 2 + 1) / 2)
    assert lora["average"] == pytest.approx(((1 / 3 + 1) / 2 + 0.75) / 2)
    zero = scores["english"]["zero_shot"]
    assert (zero["accuracy"], zero["recall"], zero["n_empty_predictions"]) == (0.0, 0.0, 1)


def test_languages_are_scored_separately() -> None:
    test = [_sample("a", ["happy"]), _sample("a", ["happy"], language="chinese")]
    systems = {"lora": [SystemPrediction(labels=["happy"]), SystemPrediction(labels=["sad"])]}
    scores = score_systems(test, systems, embedding_grouper_factory("none"))
    assert scores["english"]["lora"]["average"] == 1.0
    assert scores["chinese"]["lora"]["average"] == 0.0


def test_word_forms_group_inflections(tmp_path: Path) -> None:
    forms = tmp_path / "forms.csv"
    forms.write_text('name,format\nhappy,"happy,happiness"\n', encoding="utf-8")
    test = [_sample("a", ["happy"])]
    systems = {"lora": [SystemPrediction(labels=["happiness"])]}
    scores = score_systems(test, systems, embedding_grouper_factory("none", word_forms=forms))
    assert scores["english"]["lora"]["average"] == 1.0


def test_summary_is_mean_and_population_std_over_folds() -> None:
    fold = [
        {"english": {"lora": {"accuracy": 0.2, "recall": 0.4, "average": 0.3}}},
        {"english": {"lora": {"accuracy": 0.4, "recall": 0.6, "average": 0.5}}},
    ]
    summary = summarise(fold)
    average = summary["english"]["lora"]["average"]
    assert average.mean == pytest.approx(0.4) and average.std == pytest.approx(0.1)
    assert average.n == 2
    assert mean_std([0.7]).std == 0.0


def test_lexicon_predictions_keep_sample_order() -> None:
    lexicon = LexiconExtractor([["happy", "happiness"], ["sad", "sadly"]])
    test = [
        OVSample(name="a", language="english", description="Sadly, no.", labels=[]),
        OVSample(name="b", language="english", description="Pure happiness", labels=[]),
    ]
    predictions = predict_with_lexicon(lexicon, test)
    assert [p.labels for p in predictions] == [["sad"], ["happy"]]
    assert predictions[0].raw == "['sad']"


def test_llm_grouper_scores_with_the_chat_models_groups(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from meragent.agents import chat
    from meragent.finetune.ov_eval import llm_grouper_factory

    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path))
    fake = FakeListChatModel(responses=["[['happy', 'joyful']]"])
    monkeypatch.setattr(chat, "make_chat_model", lambda *args, **kwargs: fake)
    test = [_sample("a", ["happy"])]
    systems = {"lora": [SystemPrediction(labels=["joyful"])]}
    scores = score_systems(test, systems, llm_grouper_factory())
    assert scores["english"]["lora"]["average"] == 1.0
    assert list((tmp_path / "cache" / "llm_groups").iterdir())  # the grouping was cached
