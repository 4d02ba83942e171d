"""Fit the embedding grouper's cosine threshold to the organisers' GPT grouping.

For every candidate tau the embedding grouper is fitted once over all labels of the samples
(as :func:`meragent.eval.ov.score_ov` does), then compared with the cached GPT groups pair by
pair: inside each sample, each unordered pair of distinct labels is "together" or "apart" in
either grouping; precision/recall/F1 of "together" are pooled over all samples. The tau with the
best F1 wins (ties: the smaller OV-score difference). The OV average under both groupings is
reported too, for a prediction set: the one given, or, by default, the labels the GPT groups
list beyond the ground truth (the part of the organisers' submission the group file reveals).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from meragent.eval.embedding_grouper import EmbeddingGrouper, Scope, TextEncoder
from meragent.eval.grouping import CachedGrouper, normalise_label
from meragent.eval.ov import OVReport, score_ov

DEFAULT_TAUS: tuple[float, ...] = tuple(round(0.30 + 0.01 * i, 2) for i in range(61))


class TauRow(BaseModel):
    """Agreement and OV score of the embedding grouping at one threshold."""

    tau: float
    precision: float
    recall: float
    f1: float
    n_groups: int
    ov_average: float
    ov_difference: float


class CalibrationReport(BaseModel):
    """The table over thresholds, the chosen one and the OV comparison at it."""

    encoder: str
    scope: str
    word_forms: str | None
    prediction_source: str
    n_samples: int
    n_labels: int
    n_pairs: int
    n_together_pairs: int
    best_tau: float
    best: TauRow
    cached_ov: OVReport
    embedding_ov: OVReport
    ov_difference: float
    table: list[TauRow]


class _MemoEncoder:
    """Embeds each text once, however many thresholds are tried."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self._vectors: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if todo:
            fresh = np.asarray(self.encoder.encode(todo), dtype=np.float32)
            self._vectors.update(zip(todo, fresh, strict=True))
        return np.stack([self._vectors[t] for t in texts])


def derived_predictions(
    gt: Mapping[str, Sequence[str]], groups: Mapping[str, Sequence[Sequence[str]]]
) -> dict[str, list[str]]:
    """Per sample, the grouped labels that are not ground truth (in group order)."""
    derived: dict[str, list[str]] = {}
    for name, truth in gt.items():
        known = {normalise_label(label) for label in truth}
        members = (normalise_label(m) for group in groups.get(name, ()) for m in group)
        derived[name] = [m for m in dict.fromkeys(members) if m not in known]
    return derived


def calibrate_embedding_grouping(
    gt: Mapping[str, Sequence[str]],
    groups: Mapping[str, Sequence[Sequence[str]]],
    encoder: TextEncoder,
    *,
    pred: Mapping[str, Sequence[str]] | None = None,
    word_forms: str | Path | None = None,
    taus: Iterable[float] = DEFAULT_TAUS,
    scope: Scope = "sample",
    encoder_id: str = "",
) -> CalibrationReport:
    """Sweep ``taus`` and pick the one whose grouping agrees best with ``groups``."""
    names = [name for name in gt if name in groups]
    sample_labels = {name: _sample_labels(gt[name], groups[name]) for name in names}
    predictions = dict(pred) if pred is not None else derived_predictions(gt, groups)
    source = "given" if pred is not None else "grouped labels beyond the ground truth"
    gt_scored = {name: gt[name] for name in names}
    cached = CachedGrouper(groups={name: groups[name] for name in names})
    reference = {name: cached.groups_of(name) for name in names}
    cached_ov = score_ov(gt_scored, predictions, cached)
    memo = _MemoEncoder(encoder)
    all_labels = list(dict.fromkeys(label for ls in sample_labels.values() for label in ls))
    table: list[TauRow] = []
    ov_at: dict[float, OVReport] = {}
    for tau in taus:
        grouper = EmbeddingGrouper(memo, tau=tau, word_forms=word_forms, scope=scope)
        grouper.fit(all_labels)
        counts = _pair_counts(sample_labels, reference, grouper)
        ov = score_ov(gt_scored, predictions, grouper)
        ov_at[tau] = ov
        table.append(_row(tau, counts, grouper, ov, cached_ov))
    best = max(table, key=lambda row: (row.f1, -abs(row.ov_difference)))
    n_pairs = sum(len(ls) * (len(ls) - 1) // 2 for ls in sample_labels.values())
    return CalibrationReport(
        encoder=encoder_id or type(encoder).__name__,
        scope=scope,
        word_forms=None if word_forms is None else str(word_forms),
        prediction_source=source,
        n_samples=len(names),
        n_labels=len(all_labels),
        n_pairs=n_pairs,
        n_together_pairs=_together_pairs(sample_labels, reference),
        best_tau=best.tau,
        best=best,
        cached_ov=cached_ov,
        embedding_ov=ov_at[best.tau],
        ov_difference=best.ov_difference,
        table=table,
    )


def _sample_labels(truth: Sequence[str], groups: Sequence[Sequence[str]]) -> list[str]:
    members = [m for group in groups for m in group]
    return list(dict.fromkeys(normalise_label(label) for label in (*truth, *members)))


def _together_pairs(
    sample_labels: Mapping[str, list[str]], reference: Mapping[str, dict[str, str]]
) -> int:
    total = 0
    for name, labels in sample_labels.items():
        ref = reference[name]
        total += sum(ref.get(a, a) == ref.get(b, b) for a, b in combinations(labels, 2))
    return total


def _pair_counts(
    sample_labels: Mapping[str, list[str]],
    reference: Mapping[str, dict[str, str]],
    grouper: EmbeddingGrouper,
) -> tuple[int, int, int]:
    true_pos = false_pos = false_neg = 0
    for name, labels in sample_labels.items():
        ref = reference[name]
        ids = dict(zip(labels, grouper.group_ids(name, labels), strict=True))
        for a, b in combinations(labels, 2):
            together_ref = ref.get(a, a) == ref.get(b, b)
            together_emb = ids[a] == ids[b]
            true_pos += together_ref and together_emb
            false_pos += together_emb and not together_ref
            false_neg += together_ref and not together_emb
    return true_pos, false_pos, false_neg


def _row(
    tau: float,
    counts: tuple[int, int, int],
    grouper: EmbeddingGrouper,
    ov: OVReport,
    cached_ov: OVReport,
) -> TauRow:
    true_pos, false_pos, false_neg = counts
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    f1 = 2 * true_pos / (2 * true_pos + false_pos + false_neg) if true_pos else 0.0
    # Groups over the whole vocabulary (for the per-sample scope, if it were one sample).
    n_groups = len(set(grouper.group_ids("", grouper.labels)))
    return TauRow(
        tau=tau,
        precision=precision,
        recall=recall,
        f1=f1,
        n_groups=n_groups,
        ov_average=ov.average,
        ov_difference=ov.average - cached_ov.average,
    )
