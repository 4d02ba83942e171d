"""Predict many clips with a trained fusion model from the feature cache; write MER submissions.

A clip missing some encoders' features is predicted from the others (those branches masked);
a clip with none is skipped and listed. The submission is MER's ``name,discrete`` CSV, with a
``valence`` column when the model predicts valence (MER2023 MULTI).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meragent.finetune.fusion_data import load_feature_table
from meragent.schema import EMOTIONS, Clip
from meragent.tools.feature_cache import FeatureCache
from meragent.tools.fusion_model import FusionPredictor

#: Clips whose features are read and predicted together.
READ_CHUNK = 8192


@dataclass
class PredictionTable:
    """Predictions of the clips that had features (``skipped``: those that had none)."""

    clip_ids: list[str]
    probs: np.ndarray
    valence: np.ndarray | None
    attention: np.ndarray
    branch_names: list[str]
    skipped: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)

    def lacking_features(self) -> list[str]:
        """Clips not predicted (no features at all), then those predicted with a branch masked."""
        masked = dict.fromkeys(c for clips in self.missing.values() for c in clips)
        return list(dict.fromkeys([*self.skipped, *masked]))

    def discrete(self) -> list[str]:
        # argmax takes the first maximum: ties go to the earlier class in EMOTIONS order.
        return [EMOTIONS[i] for i in np.argmax(self.probs, axis=1)] if len(self.probs) else []

    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1) if len(self.probs) else np.zeros(0)


def encoder_widths(predictor: FusionPredictor) -> dict[str, int]:
    """Width of every encoder the model reads (known for single-encoder or split branches)."""
    widths: dict[str, int] = {}
    for branch in predictor.config.branches:
        if branch.encoder_dims:
            widths.update(zip(branch.encoders, branch.encoder_dims, strict=True))
        elif len(branch.encoders) == 1:
            widths[branch.encoders[0]] = branch.dim
    return widths


def predict_clips(
    clip_ids: Sequence[str | Clip],
    cache: FeatureCache,
    predictor: FusionPredictor,
    *,
    chunk: int = READ_CHUNK,
) -> PredictionTable:
    """Read the clips' features from ``cache`` and predict them, ``chunk`` clips at a time
    (a 115k-clip MER pool never sits in memory as one feature matrix)."""
    if len(clip_ids) <= chunk:
        return _predict_chunk(clip_ids, cache, predictor)
    parts = [
        _predict_chunk(clip_ids[start : start + chunk], cache, predictor)
        for start in range(0, len(clip_ids), chunk)
    ]
    return _concatenate(parts)


def _concatenate(parts: Sequence[PredictionTable]) -> PredictionTable:
    first = parts[0]
    valences = [p.valence for p in parts if p.valence is not None]
    return PredictionTable(
        clip_ids=[c for p in parts for c in p.clip_ids],
        probs=np.concatenate([p.probs for p in parts]),
        valence=np.concatenate(valences) if len(valences) == len(parts) else None,
        attention=np.concatenate([p.attention for p in parts]),
        branch_names=first.branch_names,
        skipped=[c for p in parts for c in p.skipped],
        missing={
            name: [c for p in parts for c in p.missing.get(name, [])] for name in first.branch_names
        },
    )


def _predict_chunk(
    clip_ids: Sequence[str | Clip], cache: FeatureCache, predictor: FusionPredictor
) -> PredictionTable:
    branches = [tuple(b.encoders) for b in predictor.config.branches]
    names = predictor.branch_names
    if not clip_ids:
        empty = np.zeros((0, len(EMOTIONS)))
        valence = np.zeros(0) if predictor.config.with_valence else None
        return PredictionTable([], empty, valence, np.zeros((0, len(names))), names)
    table = load_feature_table(
        cache,
        list(clip_ids),
        branches,
        expected_dims=encoder_widths(predictor),
        require_every_encoder=False,
    )
    keep = table.rows_with_features()
    skipped = [table.clip_ids[i] for i in np.setdiff1d(np.arange(len(clip_ids)), keep)]
    present = table.present[keep]
    missing = {
        name: [table.clip_ids[keep[i]] for i in np.flatnonzero(~present[:, m])]
        for m, name in enumerate(names)
    }
    batch = predictor.predict_batch([f[keep] for f in table.features], present)
    return PredictionTable(
        clip_ids=[table.clip_ids[i] for i in keep],
        probs=batch.probs,
        valence=batch.valence,
        attention=batch.attention,
        branch_names=names,
        skipped=skipped,
        missing=missing,
    )


def write_submission(table: PredictionTable, path: Path) -> Path:
    """MER's submission CSV: ``name,discrete`` (+ ``valence`` when predicted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        header = ["name", "discrete"] + (["valence"] if table.valence is not None else [])
        writer.writerow(header)
        for i, (name, label) in enumerate(zip(table.clip_ids, table.discrete(), strict=True)):
            row = [name, label]
            if table.valence is not None:
                row.append(f"{float(table.valence[i]):.4f}")
            writer.writerow(row)
    return path
