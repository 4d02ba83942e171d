"""MER-OV set-level metrics (MER2024 paper, Eq. 4-8).

Every label of a sample's ground truth Y and prediction Y-hat goes through a grouping G, then
Accuracy_s = |Y n Y-hat| / |Y-hat| and Recall_s = |Y n Y-hat| / |Y| per sample (both 0 for an
empty prediction), averaged over samples, and the ranking score is their mean. This follows the
organisers' ``calculate_openset_overlap_rate_mer2024`` (zeroQiaoba/MERTools, ``MER2024/main-ov.py``)
plus the bookkeeping the issue asks for: a ground-truth sample without a prediction is scored as
empty and counted, prediction-only names are ignored and counted, and a sample whose ground truth
is empty is skipped and counted (the original would divide by zero).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from meragent.eval.grouping import Grouper, IdentityGrouper, normalise_label
from meragent.schema import OVScores


class OVReport(OVScores):
    """:class:`meragent.schema.OVScores` plus the counts of odd inputs and the grouping used."""

    n_extra_predictions: int = 0
    n_empty_predictions: int = 0
    grouping: str = "identity"


def set_precision_recall(truth: set[str], predicted: set[str]) -> tuple[float, float]:
    """One sample's share of predicted groups that are true, and of true groups predicted.

    An empty prediction scores (0, 0); ``truth`` must not be empty (such samples are skipped).
    """
    if not predicted:
        return 0.0, 0.0
    overlap = len(truth & predicted)
    return overlap / len(predicted), overlap / len(truth)


def score_ov(
    gt: Mapping[str, Sequence[str]],
    pred: Mapping[str, Sequence[str]],
    grouper: Grouper | None = None,
) -> OVReport:
    """Score open-set predictions against ground truth under ``grouper`` (identity when None).

    ``n_samples`` counts the scored samples; ``n_missing_predictions`` the scored samples with no
    entry in ``pred`` (scored 0/0); ``n_skipped`` the samples with an empty ground-truth set.
    """
    grouper = grouper if grouper is not None else IdentityGrouper()
    _fit_if_needed(grouper, _labels_to_fit(gt, pred))
    accuracy: list[float] = []
    recall: list[float] = []
    skipped = missing = empty = 0
    for name, truth in gt.items():
        predicted = pred.get(name)
        truth_ids, pred_ids = _grouped_sets(grouper, name, truth, predicted or ())
        if not truth_ids:
            skipped += 1
            continue
        missing += predicted is None
        empty += not pred_ids
        sample_accuracy, sample_recall = set_precision_recall(truth_ids, pred_ids)
        accuracy.append(sample_accuracy)
        recall.append(sample_recall)
    # np.mean, as the organisers' scorer, so numbers match theirs to the last bit.
    mean_accuracy = float(np.mean(accuracy)) if accuracy else 0.0
    mean_recall = float(np.mean(recall)) if recall else 0.0
    return OVReport(
        accuracy=mean_accuracy,
        recall=mean_recall,
        average=float(np.mean([mean_accuracy, mean_recall])),
        n_samples=len(accuracy),
        n_skipped=skipped,
        n_missing_predictions=missing,
        n_extra_predictions=sum(1 for name in pred if name not in gt),
        n_empty_predictions=empty,
        grouping=str(getattr(grouper, "name", type(grouper).__name__)),
    )


def _labels_to_fit(gt: Mapping[str, Sequence[str]], pred: Mapping[str, Sequence[str]]) -> list[str]:
    # Prediction-only names are ignored by the metric, so their labels do not shape the grouping.
    every = (label for name, truth in gt.items() for label in (*truth, *pred.get(name, ())))
    return list(dict.fromkeys(normalise_label(label) for label in every))


def _fit_if_needed(grouper: Grouper, labels: Iterable[str]) -> None:
    fit = getattr(grouper, "fit", None)
    if callable(fit):
        fit(labels)


def _grouped_sets(
    grouper: Grouper, sample: str, truth: Sequence[str], predicted: Sequence[str]
) -> tuple[set[str], set[str]]:
    # One call per sample with both sides: an LLM grouper must see them together, as in the paper.
    labels = [label.lower() for label in (*truth, *predicted)]  # normalise_label, inlined
    ids = grouper.group_ids(sample, labels) if labels else []
    if len(ids) != len(labels):
        raise ValueError(
            f"grouper {type(grouper).__name__} returned {len(ids)} ids for {len(labels)} labels"
        )
    return set(ids[: len(truth)]), set(ids[len(truth) :])
