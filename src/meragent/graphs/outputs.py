"""Run outputs, regenerated from the trace store and each replaced atomically.

``discrete.csv`` (``name,discrete``) and ``openset.csv`` (``name,openset``, a Python-list string)
are MER submission files; ``results.parquet`` holds every field of every clip; ``errors.csv``
lists bad manifest rows and failed clips; ``metrics.json`` scores clips with ground truth.
Each file is written to a temporary name and renamed over the old one, so a reader (or a
SIGKILL) sees either the previous or the new file, never a half-written one or duplicates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meragent.graphs.trace import TraceStore, dumps

#: Every file a run folder's outputs may consist of.
OUTPUT_FILES = (
    "discrete.csv",
    "openset.csv",
    "results.parquet",
    "errors.csv",
    "metrics.json",
)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp)`` and rename over ``path`` (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class OutputPaths:
    discrete: Path | None
    openset: Path | None
    parquet: Path
    errors: Path
    metrics: Path | None


def _results_frame(store: TraceStore, run_id: str) -> Any:
    import pandas as pd

    from meragent.schema import EMOTIONS

    rows = []
    for record in store.results(run_id):
        result = record.result or {}
        prediction = result.get("prediction") or {}
        clip = result.get("clip") or {}
        probs = prediction.get("probs") or {}
        row: dict[str, Any] = {
            "name": record.clip_id,
            "seq": record.seq,
            "status": record.status,
            "discrete": record.discrete,
            "openset": record.openset or [],
            "description": record.description,
            "valence": prediction.get("valence"),
            "source": prediction.get("source"),
            "flags": prediction.get("flags") or [],
            "llm_choice": result.get("llm_choice"),
            "transcript": result.get("transcript"),
            "stage": record.stage,
            "error": record.error,
            "latency_s": record.latency_s,
            "finished_at": record.finished_at,
            "gt_discrete": clip.get("discrete"),
            "gt_valence": clip.get("valence"),
            "gt_openset": clip.get("openset"),
            "video": clip.get("video"),
            "subtitle": clip.get("subtitle"),
            "clues_json": dumps(result.get("clues")),
            "media_json": dumps(result.get("media")),
            "fusion_json": dumps(result.get("fusion")),
            "metrics_json": dumps(result.get("metrics")),
        }
        for emotion in EMOTIONS:
            row[f"prob_{emotion}"] = probs.get(emotion)
        rows.append(row)
    return pd.DataFrame(rows)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    import csv

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)


def aggregate_metrics(store: TraceStore, run_id: str) -> dict[str, Any] | None:
    """Six-class and MER-OV scores over the finished clips that carry ground truth."""
    six_true, six_pred, val_true, val_pred = [], [], [], []
    ov_true: dict[str, list[str]] = {}
    ov_pred: dict[str, list[str]] = {}
    for record in store.results(run_id, status="ok"):
        result = record.result or {}
        clip = result.get("clip") or {}
        prediction = result.get("prediction") or {}
        if clip.get("discrete") and "fusion" in result:
            six_true.append(clip["discrete"])
            six_pred.append(record.discrete)
            val_true.append(clip.get("valence"))
            val_pred.append(prediction.get("valence"))
        if clip.get("openset") is not None and "labels" in result:
            ov_true[record.clip_id] = list(clip["openset"])
            ov_pred[record.clip_id] = list(record.openset or [])
    metrics: dict[str, Any] = {}
    if six_true:
        from meragent.eval.six import six_class_metrics

        report = six_class_metrics(six_true, six_pred, valence_true=val_true, valence_pred=val_pred)
        metrics["six_class"] = report.model_dump(mode="json")
    if ov_true:
        from meragent.eval.ov import score_ov

        metrics["ov"] = score_ov(ov_true, ov_pred).model_dump(mode="json")
    return metrics or None


def write_outputs(
    store: TraceStore,
    run_dir: Path,
    run_id: str,
    *,
    track: str,
    row_errors: Sequence[tuple[str, str, str]] = (),
    with_metrics: bool = True,
) -> OutputPaths:
    """Regenerate every output file from the store, each replaced atomically."""
    import json

    from meragent.agents.labeler import format_labels

    ok = store.results(run_id, status="ok")
    failed = store.results(run_id, status="failed")
    discrete = openset = metrics_path = None
    if track in ("semi", "noise", "all"):
        discrete = run_dir / "discrete.csv"
        rows = [(r.clip_id, r.discrete) for r in ok if r.discrete]
        _write_csv(discrete, ("name", "discrete"), rows)
    if track in ("ov", "all"):
        openset = run_dir / "openset.csv"
        _write_csv(
            openset, ("name", "openset"), [(r.clip_id, format_labels(r.openset or [])) for r in ok]
        )
    errors = run_dir / "errors.csv"
    error_rows = [*row_errors, *((r.clip_id, r.stage or "", r.error or "") for r in failed)]
    _write_csv(errors, ("name", "stage", "reason"), error_rows)
    parquet = run_dir / "results.parquet"
    frame = _results_frame(store, run_id)
    atomic_write(parquet, lambda tmp: frame.to_parquet(tmp, index=False))
    if with_metrics:
        metrics = aggregate_metrics(store, run_id)
        if metrics is not None:
            metrics_path = run_dir / "metrics.json"
            text = json.dumps(metrics, indent=2, ensure_ascii=False)

            def write_json(tmp: Path) -> None:
                tmp.write_text(text, encoding="utf-8")

            atomic_write(metrics_path, write_json)
    return OutputPaths(discrete, openset, parquet, errors, metrics_path)
