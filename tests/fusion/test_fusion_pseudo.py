"""MER-SEMI pseudo-labelling: η-quantile selection, counts per round, no labelled/test leaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fusion_fixtures import planted_clips, write_planted_features

from meragent.finetune.fusion_train import FusionTrainConfig
from meragent.finetune.pseudo_label import (
    PseudoLabelConfig,
    PseudoLabelLeakError,
    _check_no_leak,
    pseudo_label_training,
    select_confident,
)
from meragent.schema import EMOTIONS, Clip

BRANCHES = [("audio",), ("text",), ("video",)]
QUICK = FusionTrainConfig(folds=3, search=1, epochs=10, threads=1, hidden=[16], lr=[1e-2])


def _probs(rows: list[tuple[int, float]]) -> np.ndarray:
    """One row per (class, top probability); the rest spread evenly."""
    out = np.zeros((len(rows), 6))
    for i, (cls, top) in enumerate(rows):
        out[i] = (1 - top) / 5
        out[i, cls] = top
    return out


def test_eta_quantile_per_class_by_hand() -> None:
    probs = _probs([(0, 0.5), (0, 0.6), (0, 0.7), (0, 0.9), (2, 0.4), (2, 0.8)])
    ids = [f"u{i}" for i in range(6)]
    chosen, used = select_confident(ids, probs, eta=0.5)
    # neutral: median of 0.5, 0.6, 0.7, 0.9 = 0.65 -> u2, u3; happy: median of 0.4, 0.8 = 0.6 -> u5
    assert used == {"neutral": pytest.approx(0.65), "happy": pytest.approx(0.6)}
    assert set(chosen) == {"u2", "u3", "u5"}
    assert chosen["u5"] == ("happy", pytest.approx(0.8))
    fixed, used = select_confident(ids, probs, eta=0.5, thresholds={"neutral": 0.55})
    assert set(fixed) == {"u1", "u2", "u3", "u5"} and used["neutral"] == 0.55


def test_leak_check_raises() -> None:
    with pytest.raises(PseudoLabelLeakError, match="selected 1 labelled/test clips: a"):
        _check_no_leak({"a": 1, "b": 2}, {"a", "z"})


def test_threshold_names_are_normalised_and_checked() -> None:
    config = PseudoLabelConfig(thresholds={"Surprised": 0.9})
    assert config.thresholds == {"surprise": 0.9}
    with pytest.raises(ValueError):
        PseudoLabelConfig(thresholds={"happy": 1.5})


def test_rounds_never_select_labelled_or_test_clips(tmp_path: Path) -> None:
    labelled = planted_clips(60)
    pool = [Clip(id=f"pool_{i:03d}") for i in range(60)]
    test_clips = [Clip(id=f"test_{i:03d}") for i in range(12)]
    truth = {c.id: EMOTIONS[i % 6] for i, c in enumerate(pool + test_clips)}
    everything = labelled + pool + test_clips
    cache = write_planted_features(tmp_path, everything, labels=truth)
    # The pool given to the routine also contains labelled and test clips: they must be ignored.
    messy_pool = pool + test_clips + labelled[:10]
    config = PseudoLabelConfig(rounds=2, eta=0.5, train=QUICK)
    result = pseudo_label_training(
        labelled,
        messy_pool,
        cache,
        BRANCHES,
        config,
        test_ids=[c.id for c in test_clips],
    )
    forbidden = {c.id for c in labelled} | {c.id for c in test_clips}
    assert result.excluded_from_pool == 22
    assert result.labels and not set(result.labels) & forbidden
    assert [r.round for r in result.rounds] == [1, 2]
    for report in result.rounds:
        assert set(report.added) == set(EMOTIONS)
    assert sum(sum(r.added.values()) for r in result.rounds) == len(result.labels)
    assert result.rounds[1].pool_left == 60 - len(result.labels)
    correct = sum(truth[c] == label.label for c, label in result.labels.items())
    assert correct / len(result.labels) > 0.8
    assert result.final.report.n_pseudo == len(result.labels)
