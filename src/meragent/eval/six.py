"""Six-class metrics of MER-SEMI / MER-NOISE (and MER2023's valence-aware overall score).

Accuracy, weighted-average F1 (WAF, the ranking metric, with scikit-learn's
``f1_score(average="weighted")`` semantics), per-class precision/recall/F1/support, the confusion
matrix in :data:`meragent.schema.EMOTIONS` order, valence MSE and MER2023's
``WAF - 0.25 * MSE``. Pure numpy: scikit-learn is only the reference in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from meragent.schema import EMOTION_TO_ID, EMOTIONS, MISSING_VALENCE, normalize_emotion

#: MER2023's overall score weighs the valence MSE by this factor.
MER2023_MSE_WEIGHT = 0.25


class ClassScores(BaseModel):
    """Precision, recall, F1 and support (number of true samples) of one class."""

    precision: float
    recall: float
    f1: float
    support: int


class SixClassReport(BaseModel):
    """Everything ``meragent eval six`` prints; ``confusion[i][j]`` = true i predicted j."""

    n_samples: int
    n_missing_predictions: int = 0
    n_extra_predictions: int = 0
    accuracy: float
    waf: float
    per_class: dict[str, ClassScores]
    labels: list[str] = Field(default_factory=lambda: list(EMOTIONS))
    confusion: list[list[int]]
    mse: float | None = None
    n_valence: int = 0
    mer2023_score: float | None = None


def six_class_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str | None],
    *,
    valence_true: Sequence[float | None] | None = None,
    valence_pred: Sequence[float | None] | None = None,
) -> SixClassReport:
    """Score six-class predictions; a ``None`` prediction counts as wrong (and as missing).

    Labels are normalised with :func:`meragent.schema.normalize_emotion` (``ValueError`` for an
    unknown one). Valence pairs where either side is missing (None, NaN or MER2023's -10) are left
    out of the MSE; ``mse``/``mer2023_score`` stay None when no pair is left.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("no samples to score")
    true_ids = np.array([EMOTION_TO_ID[normalize_emotion(label)] for label in y_true])
    pred_ids = np.array([_pred_id(label) for label in y_pred])
    confusion = _confusion(true_ids, pred_ids)
    support = np.bincount(true_ids, minlength=len(EMOTIONS)).astype(np.float64)
    per_class, waf = _per_class_and_waf(confusion, support)
    accuracy = float(np.mean(true_ids == pred_ids))
    mse, n_valence = _valence_mse(valence_true, valence_pred, len(y_true))
    return SixClassReport(
        n_samples=len(y_true),
        n_missing_predictions=int(np.sum(pred_ids < 0)),
        accuracy=accuracy,
        waf=waf,
        per_class=per_class,
        confusion=confusion.tolist(),
        mse=mse,
        n_valence=n_valence,
        mer2023_score=None if mse is None else waf - MER2023_MSE_WEIGHT * mse,
    )


def _pred_id(label: str | None) -> int:
    # -1 never equals a true id, so a missing prediction is simply wrong.
    return -1 if label is None else EMOTION_TO_ID[normalize_emotion(label)]


def _confusion(true_ids: np.ndarray, pred_ids: np.ndarray) -> np.ndarray:
    matrix = np.zeros((len(EMOTIONS), len(EMOTIONS)), dtype=np.int64)
    predicted = pred_ids >= 0
    np.add.at(matrix, (true_ids[predicted], pred_ids[predicted]), 1)
    return matrix


def _per_class_and_waf(
    confusion: np.ndarray, support: np.ndarray
) -> tuple[dict[str, ClassScores], float]:
    # Support comes from the true labels: confusion rows miss samples with no prediction.
    true_positive = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0).astype(np.float64)
    return _scores_from_counts(true_positive, predicted_count, support)


def _scores_from_counts(
    true_positive: np.ndarray, predicted_count: np.ndarray, support: np.ndarray
) -> tuple[dict[str, ClassScores], float]:
    # scikit-learn's formulas: p = tp/pred, r = tp/true, f1 = 2tp/(true+pred), 0 where 0/0.
    precision = _safe_divide(true_positive, predicted_count)
    recall = _safe_divide(true_positive, support)
    f1 = _safe_divide(2.0 * true_positive, support + predicted_count)
    total = support.sum()
    waf = float(np.average(f1, weights=support)) if total > 0 else 0.0
    per_class = {
        name: ClassScores(
            precision=float(precision[i]),
            recall=float(recall[i]),
            f1=float(f1[i]),
            support=int(support[i]),
        )
        for i, name in enumerate(EMOTIONS)
    }
    return per_class, waf


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _valence_mse(
    valence_true: Sequence[float | None] | None,
    valence_pred: Sequence[float | None] | None,
    n: int,
) -> tuple[float | None, int]:
    if valence_true is None or valence_pred is None:
        return None, 0
    if len(valence_true) != n or len(valence_pred) != n:
        raise ValueError("valence_true and valence_pred must have one value per sample")
    pairs = [
        (float(t), float(p))
        for t, p in zip(valence_true, valence_pred, strict=True)
        if t is not None and p is not None and _has_valence(t) and _has_valence(p)
    ]
    if not pairs:
        return None, 0
    diffs = np.array([t - p for t, p in pairs], dtype=np.float64)
    return float(np.mean(diffs**2)), len(pairs)


def _has_valence(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and float(value) != MISSING_VALENCE
