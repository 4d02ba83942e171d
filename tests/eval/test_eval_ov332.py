"""The cached GPT grouping on the real 332-sample ground truth, against a hand computation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meragent.cli import app
from meragent.eval.files import read_openset_csv, score_ov_files
from meragent.eval.grouping import CachedGrouper

# Hand computation. Only four samples (plus one unknown name) have a prediction; the other 328
# ground-truth samples have none and score 0/0.
#
# sample_00000000  GT: pleasurable, self-deprecating, relaxed, complaining, relieved, humorous,
#                      joyful, happy
#   groups: [joyful, happy, relaxed, relieved] [complaining, confused, helpless]
#           [self-deprecating, humorous] [pleasurable]
#   Y = {joyful, complaining, self-deprecating, pleasurable}                    |Y| = 4
#   pred: happy, confused, bored -> Y^ = {joyful, complaining, bored}          |Y^| = 3
#   overlap 2 -> accuracy 2/3, recall 2/4
# sample_00000007  GT: excited, joyful, happy; groups: [joyful, satisfied, happy, excited]
#   Y = {joyful}; pred: Satisfied -> {joyful} -> accuracy 1, recall 1
# sample_00000021  GT: suspect, question, doubt; groups [suspect, doubt, question] [positive,
#   satisfied] -> Y = {suspect}; pred: positive, satisfied, doubt -> {positive, suspect}
#   -> accuracy 1/2, recall 1/1
# sample_00000033  GT: pessimism, worry; pred [] (an explicit empty list) -> 0, 0
#
# accuracy = (2/3 + 1 + 1/2 + 0) / 332 = (13/6) / 332
# recall   = (1/2 + 1 + 1   + 0) / 332 = (5/2) / 332
PREDICTIONS = [
    ("sample_00000000", "['happy', 'confused', 'bored']"),
    ("sample_00000007", "['Satisfied']"),
    ("sample_00000021", "['positive', 'satisfied', 'doubt']"),
    ("sample_00000033", "[]"),
    ("not_a_sample", "['happy']"),
]
EXPECTED_ACCURACY = (13 / 6) / 332
EXPECTED_RECALL = (5 / 2) / 332


@pytest.fixture
def pred_csv(write_csv: Callable[..., Path]) -> Path:
    return write_csv("pred.csv", ["name", "openset"], PREDICTIONS)


def test_ground_truth_file_shape(ov332: Path) -> None:
    gt = read_openset_csv(ov332 / "openset_labels.csv")
    assert len(gt) == 332
    assert gt["sample_00000033"] == ["pessimism", "worry"]


def test_cached_grouping_matches_hand_computation(ov332: Path, pred_csv: Path) -> None:
    grouper = CachedGrouper(ov332 / "gpt_synonym_groups.json")
    report = score_ov_files(ov332 / "openset_labels.csv", pred_csv, grouper)
    assert report.n_samples == 332
    assert report.accuracy == pytest.approx(EXPECTED_ACCURACY, abs=1e-15)
    assert report.recall == pytest.approx(EXPECTED_RECALL, abs=1e-15)
    assert report.average == pytest.approx((EXPECTED_ACCURACY + EXPECTED_RECALL) / 2, abs=1e-15)
    assert report.n_missing_predictions == 328
    assert report.n_empty_predictions == 329
    assert report.n_extra_predictions == 1
    assert grouper.missing_samples == set()


def test_cli_cached_grouping_json(ov332: Path, pred_csv: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "eval", "ov",
            "--gt", str(ov332 / "openset_labels.csv"),
            "--pred", str(pred_csv),
            "--grouping", "cached",
            "--groups", str(ov332 / "gpt_synonym_groups.json"),
            "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # scored, but 328 clips have no prediction
    data = json.loads(result.stdout)
    assert data["accuracy"] == pytest.approx(EXPECTED_ACCURACY, abs=1e-15)
    assert data["recall"] == pytest.approx(EXPECTED_RECALL, abs=1e-15)
    assert data["n_missing_predictions"] == 328


def test_ground_truth_against_itself_scores_one(ov332: Path) -> None:
    grouper = CachedGrouper(ov332 / "gpt_synonym_groups.json")
    gt = ov332 / "openset_labels.csv"
    report = score_ov_files(gt, gt, grouper, parse="mertools")
    assert (report.accuracy, report.recall, report.n_samples) == (1.0, 1.0, 332)
