"""Pooled k-fold predictions: every sample predicted once, by the fold model that did not see it.

``pool_predictions`` reads each fold's ``predictions.jsonl`` and refuses a sample predicted by
two folds (or by a fold that trained on it); ``pooled_scores`` scores all of them at once, and
``write_openset_csv`` writes one system's labels as a MER ``name,openset`` CSV.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from meragent.errors import DataError
from meragent.finetune.ov_data import OVSample
from meragent.finetune.ov_eval import SystemPrediction

PREDICTIONS_FILE = "predictions.jsonl"


def pool_predictions(
    out_dir: Path, folds: Sequence[Mapping[str, Any]]
) -> tuple[list[OVSample], dict[str, list[SystemPrediction]]]:
    """Samples and aligned predictions of every system over the given fold records.

    Raises ``DataError`` when a sample comes from two folds or from a fold that does not list it
    as held out: a pooled score would then count a sample twice or score a seen one.
    """
    samples: list[OVSample] = []
    systems: dict[str, list[SystemPrediction]] = {}
    owner: dict[str, int] = {}
    for record in folds:
        fold = int(record["fold"])
        held_out = set(record["test_names"])
        path = out_dir / f"fold{fold}" / PREDICTIONS_FILE
        for row in _rows(path):
            name = row["name"]
            if name not in held_out:
                raise DataError(f"{path}: {name} is not held out in fold {fold}")
            if name in owner:
                raise DataError(f"{name} is predicted by folds {owner[name]} and {fold}")
            owner[name] = fold
            samples.append(
                OVSample(
                    name=name,
                    language=row["language"],
                    description="",
                    labels=row["ground_truth"],
                )
            )
            for system in row.keys() - {"name", "language", "ground_truth"}:
                systems.setdefault(system, []).append(SystemPrediction(**row[system]))
    lengths = {system: len(preds) for system, preds in systems.items()}
    if any(n != len(samples) for n in lengths.values()):
        raise DataError(f"systems cover different samples: {lengths} of {len(samples)}")
    return samples, systems


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def pooled_scores(
    out_dir: Path,
    folds: Sequence[Mapping[str, Any]],
    grouper_factory: Callable[[], Any],
    wheel_dir: Path | None,
) -> dict[str, Any]:
    """Scores of every system over all held-out samples of ``folds`` at once."""
    from meragent.finetune.lora_fold import score_systems

    samples, systems = pool_predictions(out_dir, folds)
    return {
        "n_samples": len(samples),
        "scores": score_systems(samples, systems, grouper_factory, wheel_dir),
    }


def write_openset_csv(
    path: Path, samples: Sequence[OVSample], predictions: Sequence[SystemPrediction]
) -> Path:
    """``name,openset`` rows (Python-list strings, as MER CSVs write them), sorted by name."""
    from meragent.agents.labeler import format_labels

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(
        (s.name, format_labels(p.labels)) for s, p in zip(samples, predictions, strict=True)
    )
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "openset"])
        writer.writerows(rows)
    return path
