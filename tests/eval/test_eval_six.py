"""Six-class metrics: hand-computed values and agreement with scikit-learn to 1e-12."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meragent.eval.six import six_class_metrics
from meragent.schema import EMOTIONS

# Six samples; EMOTIONS order is neutral, angry, happy, sad, worried, surprise.
Y_TRUE = ["happy", "happy", "sad", "angry", "neutral", "neutral"]
Y_PRED = ["happy", "sad", "sad", "angry", "happy", "neutral"]


def test_hand_computed_accuracy_waf_and_per_class() -> None:
    report = six_class_metrics(Y_TRUE, Y_PRED)
    # 4 of 6 right.
    assert report.accuracy == pytest.approx(4 / 6, abs=1e-15)
    # neutral: tp 1, predicted 1, support 2 -> P 1, R 1/2, F1 2*1/(2+1) = 2/3
    # angry:   tp 1, predicted 1, support 1 -> 1, 1, 1
    # happy:   tp 1, predicted 2, support 2 -> 1/2, 1/2, 2/(2+2) = 1/2
    # sad:     tp 1, predicted 2, support 1 -> 1/2, 1, 2/(1+2) = 2/3
    # WAF = (2*2/3 + 1*1 + 2*1/2 + 1*2/3) / 6 = 4/6
    assert report.waf == pytest.approx(2 / 3, abs=1e-15)
    neutral, happy, sad = (report.per_class[k] for k in ("neutral", "happy", "sad"))
    assert (neutral.precision, neutral.recall, neutral.support) == (1.0, 0.5, 2)
    assert neutral.f1 == pytest.approx(2 / 3, abs=1e-15)
    assert (happy.precision, happy.recall, happy.f1) == (0.5, 0.5, 0.5)
    assert (sad.precision, sad.recall) == (0.5, 1.0)
    assert report.per_class["worried"].f1 == 0.0
    assert report.per_class["worried"].support == 0
    assert report.confusion == [
        [1, 0, 1, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    assert report.labels == list(EMOTIONS)
    assert report.mse is None and report.mer2023_score is None


def test_valence_mse_skips_missing_values_and_gives_mer2023_score() -> None:
    valence_true = [1.0, 2.0, -1.0, -10.0, None, 0.5]  # -10 = MER2023's "missing"
    valence_pred = [0.0, 2.5, -1.0, 1.0, 1.0, float("nan")]
    report = six_class_metrics(Y_TRUE, Y_PRED, valence_true=valence_true, valence_pred=valence_pred)
    # Pairs kept: (1, 0), (2, 2.5), (-1, -1) -> (1 + 0.25 + 0) / 3 = 5/12
    assert report.n_valence == 3
    assert report.mse == pytest.approx(5 / 12, abs=1e-15)
    # WAF - 0.25 * MSE = 2/3 - 5/48 = 27/48
    assert report.mer2023_score == pytest.approx(27 / 48, abs=1e-15)


def test_missing_prediction_counts_as_wrong() -> None:
    report = six_class_metrics(["happy", "sad"], ["happy", None])
    assert report.n_missing_predictions == 1
    assert report.accuracy == 0.5
    # happy F1 1 (support 1), sad F1 0 (support 1) -> WAF 0.5
    assert report.waf == 0.5
    assert report.per_class["sad"].support == 1
    assert sum(map(sum, report.confusion)) == 1


def test_aliases_are_normalised_and_unknown_labels_rejected() -> None:
    report = six_class_metrics(["Surprised", "worry"], ["surprise", "WORRIED"])
    assert report.accuracy == 1.0
    with pytest.raises(ValueError, match="unknown emotion"):
        six_class_metrics(["happy"], ["bored"])
    with pytest.raises(ValueError, match="items"):
        six_class_metrics(["happy"], [])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agrees_with_sklearn_on_random_data(seed: int) -> None:
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 2000))
    probs = rng.dirichlet(np.ones(len(EMOTIONS)))
    y_true = list(rng.choice(EMOTIONS, size=n, p=probs))
    # Seed 3 never predicts "surprise": the zero-division path must agree too.
    pred_classes = EMOTIONS[:-1] if seed == 3 else EMOTIONS
    y_pred = list(rng.choice(pred_classes, size=n))
    valence_true = rng.uniform(-5, 5, size=n)
    valence_pred = rng.uniform(-5, 5, size=n)

    report = six_class_metrics(
        y_true, y_pred, valence_true=list(valence_true), valence_pred=list(valence_pred)
    )

    assert abs(report.accuracy - accuracy_score(y_true, y_pred)) < 1e-12
    assert abs(report.waf - f1_score(y_true, y_pred, average="weighted")) < 1e-12
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=list(EMOTIONS), zero_division=0
    )
    for i, name in enumerate(EMOTIONS):
        scores = report.per_class[name]
        assert abs(scores.precision - p[i]) < 1e-12
        assert abs(scores.recall - r[i]) < 1e-12
        assert abs(scores.f1 - f[i]) < 1e-12
        assert scores.support == s[i]
    assert report.confusion == confusion_matrix(y_true, y_pred, labels=list(EMOTIONS)).tolist()
    mse = float(np.mean((valence_true - valence_pred) ** 2))
    assert report.mse is not None and math.isclose(report.mse, mse, abs_tol=1e-12)


def test_sklearn_agrees_with_missing_prediction_placeholder() -> None:
    from sklearn.metrics import f1_score

    y_true = ["happy", "sad", "sad", "angry"]
    y_pred = ["happy", None, "sad", "sad"]
    report = six_class_metrics(y_true, y_pred)
    placeholder = [p if p is not None else "<missing>" for p in y_pred]
    assert abs(report.waf - f1_score(y_true, placeholder, average="weighted")) < 1e-12


def test_no_prediction_at_all_scores_zero_with_an_empty_confusion() -> None:
    report = six_class_metrics(["happy", "sad"], [None, None])
    assert report.n_missing_predictions == 2
    assert report.accuracy == 0.0
    assert report.waf == 0.0
    assert np.array(report.confusion).shape == (6, 6)
    assert sum(map(sum, report.confusion)) == 0
