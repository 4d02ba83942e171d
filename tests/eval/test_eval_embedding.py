"""Embedding grouper: thresholds, per-sample vs global scope, word forms, fit-once, MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meragent.eval.embedding_grouper import DEFAULT_TAU, EmbeddingGrouper, read_word_forms
from meragent.eval.grouping import get_grouper
from meragent.eval.ov import score_ov

# Unit vectors with hand-picked cosines:
#   happy.joyful = 0.8, joyful.glad = 0.96, happy.glad = 0.6, angry.furious = 0.8,
#   glad.furious = 0.48, joyful.furious = 0.36, everything else 0.
VECTORS = {
    "happy": [1.0, 0.0, 0.0],
    "joyful": [0.8, 0.6, 0.0],
    "glad": [0.6, 0.8, 0.0],
    "angry": [0.0, 0.0, 1.0],
    "furious": [0.0, 0.6, 0.8],
}


class FakeEncoder:
    """Looks vectors up in a table and records every call."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([self.table[t] for t in texts], dtype=np.float32)


LABELS = ["happy", "joyful", "glad", "angry", "furious"]


def test_high_threshold_links_only_the_closest_pair() -> None:
    grouper = EmbeddingGrouper(FakeEncoder(VECTORS), tau=0.9)
    # joyful-glad (0.96) merge; the id is the shortest member: "glad".
    assert grouper.group_ids("s", LABELS) == ["happy", "glad", "glad", "angry", "furious"]


def test_lower_threshold_links_chains_within_a_sample() -> None:
    grouper = EmbeddingGrouper(FakeEncoder(VECTORS), tau=0.75)
    # happy-joyful 0.8 and joyful-glad 0.96 -> {happy, joyful, glad}; angry-furious 0.8.
    assert grouper.group_ids("s", LABELS) == ["glad", "glad", "glad", "angry", "angry"]


def test_per_sample_scope_does_not_chain_through_other_samples() -> None:
    sample_scope = EmbeddingGrouper(FakeEncoder(VECTORS), tau=0.75)
    global_scope = EmbeddingGrouper(FakeEncoder(VECTORS), tau=0.75, scope="global")
    for grouper in (sample_scope, global_scope):
        grouper.fit(LABELS)
    # happy.glad = 0.6 < 0.75: apart within the sample, but joined through joyful globally.
    assert sample_scope.group_ids("s", ["happy", "glad"]) == ["happy", "glad"]
    assert global_scope.group_ids("s", ["happy", "glad"]) == ["glad", "glad"]
    assert global_scope.groups() == [["angry", "furious"], ["glad", "happy", "joyful"]]


@pytest.mark.parametrize("scope", ["sample", "global"])
def test_cosine_equal_to_tau_is_merged(scope: str) -> None:
    # 0.5 is exact in float32: [1,0,0,0] . [.5,.5,.5,.5] (both unit norm).
    table = {"a": [1.0, 0.0, 0.0, 0.0], "b": [0.5, 0.5, 0.5, 0.5], "c": [0.0, 0.0, 0.0, 1.0]}
    grouper = EmbeddingGrouper(FakeEncoder(table), tau=0.5, scope=scope)  # type: ignore[arg-type]
    # b.c is 0.5 too, so all three join.
    assert grouper.group_ids("s", ["a", "b", "c"]) == ["a", "a", "a"]
    above = EmbeddingGrouper(FakeEncoder(table), tau=0.5001, scope=scope)  # type: ignore[arg-type]
    assert above.group_ids("s", ["a", "b", "c"]) == ["a", "b", "c"]


def test_word_forms_merge_without_any_encoder(tmp_path: Path) -> None:
    csv_path = tmp_path / "forms.csv"
    csv_path.write_text(
        'name,format\nworry,"worried,worrying,worries"\nhappy,"happiness,happily"\nsad,\n',
        encoding="utf-8",
    )
    assert read_word_forms(csv_path) == [
        ["worry", "worried", "worrying", "worries"],
        ["happy", "happiness", "happily"],
    ]
    grouper = get_grouper("embedding", word_forms=csv_path)
    ids = grouper.group_ids("s", ["Worried", "worrying", "happiness", "sad", "happy"])
    # worried/worrying share the "worry" family (id: the shorter "worried").
    assert ids == ["worried", "worried", "happy", "sad", "happy"]


def test_word_forms_given_as_lists_link_labels_globally() -> None:
    grouper = EmbeddingGrouper(word_forms=[["worry", "worried"]], scope="global")
    grouper.fit(["worried", "calm"])
    assert grouper.group_ids("s", ["worry", "worried", "calm"]) == ["worry", "worry", "calm"]


def test_score_ov_embeds_every_label_once() -> None:
    encoder = FakeEncoder(VECTORS)
    grouper = EmbeddingGrouper(encoder, tau=0.75)
    gt = {"s1": ["Happy"], "s2": ["angry", "glad"]}
    pred = {"s1": ["joyful"], "s2": ["furious"]}
    report = score_ov(gt, pred, grouper)
    assert encoder.calls == [["happy", "joyful", "angry", "glad", "furious"]]
    # s1: happy~joyful -> 1, 1.  s2: Y={angry, glad}, Y^={angry} -> acc 1, rec 1/2
    assert report.accuracy == 1.0
    assert report.recall == pytest.approx(0.75, abs=1e-15)


def test_unseen_labels_are_embedded_on_the_fly() -> None:
    encoder = FakeEncoder(VECTORS)
    grouper = EmbeddingGrouper(encoder, tau=0.75)
    grouper.fit(["happy"])
    assert grouper.group_ids("s", ["happy", "joyful"]) == ["happy", "happy"]
    assert encoder.calls == [["happy"], ["joyful"]]


def test_bad_encoder_output_and_bad_options() -> None:
    class Flat:
        def encode(self, texts: list[str]) -> np.ndarray:
            return np.zeros(len(texts), dtype=np.float32)

    with pytest.raises(ValueError, match="shape"):
        EmbeddingGrouper(Flat()).fit(["a"])
    with pytest.raises(ValueError, match="tau"):
        EmbeddingGrouper(tau=1.5)
    with pytest.raises(ValueError, match="scope"):
        EmbeddingGrouper(scope="corpus")  # type: ignore[arg-type]


@pytest.mark.slow
def test_minilm_grouping_at_default_threshold(wheel_dir: Path) -> None:
    from meragent.tools.sentence_encoder import load_sentence_encoder

    encoder = load_sentence_encoder("bundled:minilm")
    vectors = encoder.encode(["joyful", "happy", "angry"])
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
    grouper = EmbeddingGrouper(encoder, tau=DEFAULT_TAU, word_forms=wheel_dir / "word_forms.csv")
    # MiniLM cosines: joyful.happy 0.68; angry and sad below 0.42 with both and each other.
    ids = grouper.group_ids("s", ["joyful", "happy", "angry", "sad"])
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3
