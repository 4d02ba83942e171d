"""Six-class metrics of MER-SEMI / MER-NOISE (and MER2023's valence-aware overall score).

Accuracy, weighted-average F1 (WAF, the ranking metric, with scikit-learn's
``f1_score(average="weighted")`` semantics), per-class precision/recall/F1/support, the confusion
matrix in :data:`meragent.schema.EMOTIONS` order, valence MSE and MER2023's
``WAF - 0.25 * MSE``, computed by scikit-learn (``precision_recall_fscore_support``,
``confusion_matrix``, ``mean_squared_error``). The batched torch WAF used inside fusion training
(:func:`meragent.finetune.fusion_stack.waf_acc`) is tested against these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from meragent.schema import EMOTION_TO_ID, EMOTIONS, MISSING_VALENCE, normalize_emotion

#: Class ids in :data:`EMOTIONS` order (what scikit-learn is told the labels are).
LABEL_IDS = list(range(len(EMOTIONS)))

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
    per_class, waf = _per_class_and_waf(true_ids, pred_ids)
    mse, n_valence = _valence_mse(valence_true, valence_pred, len(y_true))
    return SixClassReport(
        n_samples=len(y_true),
        n_missing_predictions=int(np.sum(pred_ids < 0)),
        accuracy=float(np.mean(true_ids == pred_ids)),
        waf=waf,
        per_class=per_class,
        confusion=_confusion(true_ids, pred_ids).tolist(),
        mse=mse,
        n_valence=n_valence,
        mer2023_score=None if mse is None else waf - MER2023_MSE_WEIGHT * mse,
    )


def _pred_id(label: str | None) -> int:
    # -1 is no class of LABEL_IDS, so a missing prediction is simply wrong (a false negative).
    return -1 if label is None else EMOTION_TO_ID[normalize_emotion(label)]


def _confusion(true_ids: np.ndarray, pred_ids: np.ndarray) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    predicted = pred_ids >= 0
    if not predicted.any():  # sklearn refuses empty input; no prediction is an all-zero matrix
        return np.zeros((len(LABEL_IDS), len(LABEL_IDS)), dtype=np.int64)
    return confusion_matrix(true_ids[predicted], pred_ids[predicted], labels=LABEL_IDS)


def _per_class_and_waf(
    true_ids: np.ndarray, pred_ids: np.ndarray
) -> tuple[dict[str, ClassScores], float]:
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        true_ids, pred_ids, labels=LABEL_IDS, zero_division=0.0
    )
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
    from sklearn.metrics import mean_squared_error

    truth, predicted = zip(*pairs, strict=True)
    return float(mean_squared_error(truth, predicted)), len(pairs)


def _has_valence(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and float(value) != MISSING_VALENCE
