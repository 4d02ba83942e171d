"""MER-OV set metrics (MER2024 Eq. 4-8) and the grouper registry, on hand-computed cases."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from meragent.errors import ConfigError, DataError
from meragent.eval import grouping
from meragent.eval.grouping import (
    CachedGrouper,
    available_groupers,
    get_grouper,
    register_grouper,
)
from meragent.eval.ov import score_ov


def test_identity_grouping_hand_computed_with_every_odd_input() -> None:
    gt = {"a": ["Happy", "sad"], "b": ["angry"], "c": [], "d": ["calm"]}
    pred = {"a": ["happy", "joyful"], "b": [], "x": ["sad"]}
    report = score_ov(gt, pred)
    # a: Y={happy,sad}, Y^={happy,joyful}: acc 1/2, rec 1/2
    # b: empty prediction -> 0, 0          c: empty ground truth -> skipped
    # d: no prediction row -> empty -> 0, 0 x: not in ground truth -> ignored
    assert report.accuracy == pytest.approx(1 / 6, abs=1e-15)
    assert report.recall == pytest.approx(1 / 6, abs=1e-15)
    assert report.average == pytest.approx(1 / 6, abs=1e-15)
    assert (report.n_samples, report.n_skipped) == (3, 1)
    assert (report.n_missing_predictions, report.n_extra_predictions) == (1, 1)
    assert report.n_empty_predictions == 2
    assert report.grouping == "identity"


def test_accuracy_and_recall_differ_when_set_sizes_differ() -> None:
    gt = {"s": ["happy", "sad", "angry", "calm"]}
    pred = {"s": ["happy", "sad", "bored"]}
    report = score_ov(gt, pred)
    # overlap 2: accuracy 2/3, recall 2/4, average (2/3 + 1/2) / 2 = 7/12
    assert report.accuracy == pytest.approx(2 / 3, abs=1e-15)
    assert report.recall == pytest.approx(1 / 2, abs=1e-15)
    assert report.average == pytest.approx(7 / 12, abs=1e-15)


def test_synonyms_collapse_to_one_group_id() -> None:
    grouper = CachedGrouper(groups={"s": [["joy", "happy", "glad"], ["sad"]]})
    report = score_ov({"s": ["joy"]}, {"s": ["happy", "Glad"]}, grouper)
    # Y = {joy}, Y^ = {joy} (both predictions map to the first member) -> 1, 1
    assert (report.accuracy, report.recall) == (1.0, 1.0)
    assert report.grouping == "cached"


def test_label_in_two_groups_follows_the_last_group_like_the_official_scorer() -> None:
    groups = [["joy", "happy"], ["content", "happy"]]
    grouper = CachedGrouper(groups={"s1": groups, "s2": groups})
    assert grouper.group_ids("s1", ["happy", "joy", "content"]) == ["content", "joy", "content"]
    report = score_ov(
        {"s1": ["joy"], "s2": ["content"]}, {"s1": ["happy"], "s2": ["happy", "Joy"]}, grouper
    )
    # s1: Y={joy}, Y^={content}: 0, 0.   s2: Y={content}, Y^={content, joy}: acc 1/2, rec 1
    assert report.accuracy == pytest.approx(0.25, abs=1e-15)
    assert report.recall == pytest.approx(0.5, abs=1e-15)
    assert report.average == pytest.approx(0.375, abs=1e-15)


def test_cached_grouper_falls_back_to_identity_for_unknown_samples() -> None:
    grouper = CachedGrouper(groups={"s": [["joy", "happy"]]})
    assert grouper.group_ids("other", ["Happy"]) == ["happy"]
    assert grouper.missing_samples == {"other"}
    assert grouper.group_ids("s", ["unlisted"]) == ["unlisted"]


def test_cached_grouper_reads_json_and_rejects_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "groups.json"
    good.write_text(json.dumps({"s": [["Joy", "happy"]]}), encoding="utf-8")
    assert get_grouper("cached", path=good).group_ids("s", ["HAPPY"]) == ["joy"]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        CachedGrouper(bad_json)
    bad_shape = tmp_path / "shape.json"
    bad_shape.write_text(json.dumps({"s": ["joy", "happy"]}), encoding="utf-8")
    with pytest.raises(DataError, match="list of lists"):
        CachedGrouper(bad_shape)
    with pytest.raises(DataError, match="not found"):
        CachedGrouper(tmp_path / "absent.json")


class _SpyGrouper:
    name = "spy"

    def __init__(self) -> None:
        self.fitted: list[list[str]] = []
        self.calls: list[tuple[str, list[str]]] = []

    def fit(self, labels: Iterable[str]) -> None:
        self.fitted.append(list(labels))

    def group_ids(self, sample: str, labels: Sequence[str]) -> list[str]:
        self.calls.append((sample, list(labels)))
        return list(labels)


def test_score_ov_fits_once_on_every_label_of_scored_names() -> None:
    spy = _SpyGrouper()
    score_ov({"a": ["Happy", "sad"], "b": ["sad"]}, {"a": ["joy"], "zz": ["extra"]}, spy)
    # Lower-cased, distinct, in order; labels of prediction-only names are left out.
    assert spy.fitted == [["happy", "sad", "joy"]]
    # One call per sample with ground truth and prediction together.
    assert spy.calls == [("a", ["happy", "sad", "joy"]), ("b", ["sad"])]


def test_grouper_returning_wrong_length_is_an_error() -> None:
    class Broken:
        def group_ids(self, sample: str, labels: Sequence[str]) -> list[str]:
            return []

    with pytest.raises(ValueError, match="returned 0 ids"):
        score_ov({"a": ["x"]}, {"a": ["y"]}, Broken())


def test_nothing_to_score_gives_zeros_not_nan() -> None:
    report = score_ov({"a": []}, {})
    assert (report.accuracy, report.recall, report.average) == (0.0, 0.0, 0.0)
    assert (report.n_samples, report.n_skipped) == (0, 1)


def test_registry_names_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"identity", "cached", "embedding", "llm", "wheel"} <= set(available_groupers())
    with pytest.raises(ConfigError, match="unknown grouper"):
        get_grouper("nope")
    with pytest.raises(ConfigError, match="bad options"):
        get_grouper("identity", tau=0.5)
    monkeypatch.setattr(grouping, "_REGISTRY", dict(grouping._REGISTRY))

    @register_grouper("upper")
    class Upper:
        def group_ids(self, sample: str, labels: Sequence[str]) -> list[str]:
            return [label.upper() for label in labels]

    assert isinstance(get_grouper("upper"), Upper)
    assert "upper" in available_groupers()
    with pytest.raises(ValueError, match="already registered"):
        register_grouper("upper")(_SpyGrouper)
