"""Run outputs, regenerated from the trace store and each replaced atomically.

``discrete.csv`` (``name,discrete``) and ``openset.csv`` (``name,openset``, a Python-list string)
are MER submission files with every answered clip (``ok`` and ``degraded``); ``results.parquet``
holds every field of every clip; ``errors.csv`` (``name,stage,severity,reason``) lists bad
manifest rows and failed clips (severity ``failed``) and clips answered from what remained
(severity ``degraded``); ``metrics.json`` scores every clip with ground truth the way
``meragent eval`` scores the submission files: a failed clip counts as a missing prediction, and
open-set labels go through the run's grouper, which it names (with its tau).
At the close of a run each file is written to a temporary name and renamed over the old one,
so a reader (or a SIGKILL) sees either the previous or the new file, never a half-written one.
While a run goes on, :class:`LiveExport` only adds what was committed since its last export
(lines appended to the CSVs, one ``results.parts/part-N.parquet`` of the new rows), so an
export costs what is new, not the whole run; the close replaces them all with the full files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meragent.graphs.trace import ANSWERED, ClipRecord, TraceStore, dumps

#: Every file a run folder's outputs may consist of.
OUTPUT_FILES = (
    "discrete.csv",
    "openset.csv",
    "results.parquet",
    "errors.csv",
    "metrics.json",
)
#: Where a running batch puts the new rows of ``results.parquet`` (removed by the close).
PARTS_DIR = "results.parts"
#: Columns of ``errors.csv``.
ERRORS_HEADER = ("name", "stage", "severity", "reason")
#: Tracks that answer the six classes / the open set.
SIX_CLASS_TRACKS = ("semi", "noise", "all")
OPEN_SET_TRACKS = ("ov", "all")


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
    scores: dict[str, Any] | None = None  # what metrics.json holds


def _results_frame(records: Sequence[ClipRecord]) -> Any:
    import pandas as pd

    return pd.DataFrame([_result_row(record) for record in records])


def _result_row(record: ClipRecord) -> dict[str, Any]:
    """One ``results.parquet`` row: every field of one clip."""
    from meragent.schema import EMOTIONS

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
    return row


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    import csv

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)


def aggregate_metrics(
    store: TraceStore | None,
    run_id: str,
    *,
    track: str | None = None,
    grouper: Any = None,
    records: Sequence[ClipRecord] | None = None,
) -> dict[str, Any] | None:
    """Six-class and MER-OV scores over the run's clips that carry ground truth.

    Answered clips are scored on their prediction; with ``track`` given, a failed clip of a track
    that answers that task counts as a missing prediction (as ``meragent eval`` counts a name
    absent from the submission file). Open-set labels are grouped by ``grouper`` (identity
    when None), which ``metrics["ov"]["grouper"]`` describes. ``records``: the run's results
    when the caller already read them (else they are read from ``store``).
    """
    if records is None:
        assert store is not None, "aggregate_metrics needs the store or the records"
        records = store.results(run_id)
    six_true, six_pred, val_true, val_pred = [], [], [], []
    ov_true: dict[str, list[str]] = {}
    ov_pred: dict[str, list[str]] = {}
    for record in records:
        result = record.result or {}
        clip = result.get("clip") or {}
        prediction = result.get("prediction") or {}
        answered = record.status in ANSWERED
        if clip.get("discrete") and _scored(answered, "fusion" in result, track, SIX_CLASS_TRACKS):
            six_true.append(clip["discrete"])
            six_pred.append(record.discrete if answered else None)
            val_true.append(clip.get("valence"))
            val_pred.append(prediction.get("valence") if answered else None)
        labelled = "labels" in result
        if clip.get("openset") is not None and _scored(answered, labelled, track, OPEN_SET_TRACKS):
            ov_true[record.clip_id] = list(clip["openset"])
            if answered:
                ov_pred[record.clip_id] = list(record.openset or [])
    metrics: dict[str, Any] = {}
    if six_true:
        from meragent.eval.six import six_class_metrics

        report = six_class_metrics(six_true, six_pred, valence_true=val_true, valence_pred=val_pred)
        metrics["six_class"] = report.model_dump(mode="json")
    if ov_true:
        from meragent.eval.grouping import IdentityGrouper
        from meragent.eval.ov import score_ov
        from meragent.graphs.runtime import describe_grouper

        grouper = grouper if grouper is not None else IdentityGrouper()
        fresh = getattr(grouper, "fresh", None)  # unfitted: every label fitted at once, as eval
        grouper = fresh() if callable(fresh) else grouper
        metrics["ov"] = {
            **score_ov(ov_true, ov_pred, grouper).model_dump(mode="json"),
            "grouper": describe_grouper(grouper),
        }
    return metrics or None


def _scored(answered: bool, computed: bool, track: str | None, tracks: tuple[str, ...]) -> bool:
    """Whether a clip enters a task's score: answered with that task, or failed on its track."""
    if answered:
        return computed
    return track is not None and track in tracks


def write_outputs(
    store: TraceStore,
    run_dir: Path,
    run_id: str,
    *,
    track: str,
    row_errors: Sequence[tuple[str, str, str]] = (),
    with_metrics: bool = True,
    grouper: Any = None,
) -> OutputPaths:
    """Regenerate every output file from the store (read once), each replaced atomically."""
    import json

    records = store.results(run_id)
    discrete = openset = metrics_path = scores = None
    if track in SIX_CLASS_TRACKS:
        discrete = run_dir / "discrete.csv"
        _write_csv(discrete, ("name", "discrete"), _discrete_rows(records))
    if track in OPEN_SET_TRACKS:
        openset = run_dir / "openset.csv"
        _write_csv(openset, ("name", "openset"), _openset_rows(records))
    errors = run_dir / "errors.csv"
    _write_csv(errors, ERRORS_HEADER, error_rows(records, row_errors))
    parquet = run_dir / "results.parquet"
    frame = _results_frame(records)
    atomic_write(parquet, lambda tmp: frame.to_parquet(tmp, index=False))
    if with_metrics:
        scores = aggregate_metrics(None, run_id, track=track, grouper=grouper, records=records)
        if scores is not None:
            metrics_path = run_dir / "metrics.json"
            text = json.dumps(scores, indent=2, ensure_ascii=False)

            def write_json(tmp: Path) -> None:
                tmp.write_text(text, encoding="utf-8")

            atomic_write(metrics_path, write_json)
    return OutputPaths(discrete, openset, parquet, errors, metrics_path, scores)


def _discrete_rows(records: Sequence[ClipRecord]) -> list[tuple[str, str]]:
    return [(r.clip_id, r.discrete) for r in records if r.status in ANSWERED and r.discrete]


def _openset_rows(records: Sequence[ClipRecord]) -> list[tuple[str, str]]:
    from meragent.agents.labeler import format_labels

    return [(r.clip_id, format_labels(r.openset or [])) for r in records if r.status in ANSWERED]


def error_rows(
    records: Sequence[ClipRecord], row_errors: Sequence[tuple[str, str, str]] = ()
) -> list[tuple[str, str, str, str]]:
    """``errors.csv`` rows: bad manifest rows, then failed and degraded clips in ``records``."""
    rows = [(name, stage, "failed", reason) for name, stage, reason in row_errors]
    for record in records:
        if record.status in ("failed", "degraded"):
            rows.append((record.clip_id, record.stage or "", record.status, record.error or ""))
    return rows


class LiveExport:
    """The outputs of a running batch, brought up to date with only what is new.

    Each :meth:`flush` reads the results committed since the previous one (``rowid`` order),
    appends their lines to the CSVs (a header first when a file is new, or ``fresh``: a new run)
    and writes them as one more part of ``results.parts/``. The close of the run then writes the
    full, manifest-ordered files once (:func:`write_outputs`) and :meth:`discard_parts`.
    """

    def __init__(self, store: TraceStore, run_dir: Path, run_id: str, track: str, *,
                 fresh: bool) -> None:  # fmt: skip
        self.store, self.run_dir, self.run_id, self.track = store, run_dir, run_id, track
        self.fresh = fresh
        self.last_row = store.last_result_row(run_id)  # what earlier invocations exported
        self.last_flush = time.monotonic()
        self.parts = run_dir / PARTS_DIR

    def flush_if_due(self, every_s: float, row_errors: Sequence[tuple[str, str, str]]) -> bool:
        """Flush when ``every_s`` seconds passed since the last flush; True when it did."""
        if time.monotonic() - self.last_flush <= every_s:
            return False
        self.flush(row_errors)
        return True

    def flush(self, row_errors: Sequence[tuple[str, str, str]] = ()) -> None:
        """Append what was committed since the last flush."""
        records, self.last_row = self.store.results_after(self.run_id, self.last_row)
        self.last_flush = time.monotonic()
        if not records and not self.fresh:
            return
        if self.track in SIX_CLASS_TRACKS:
            self._append("discrete.csv", ("name", "discrete"), _discrete_rows(records))
        if self.track in OPEN_SET_TRACKS:
            self._append("openset.csv", ("name", "openset"), _openset_rows(records))
        errors = error_rows(records, row_errors if self._starts("errors.csv") else ())
        self._append("errors.csv", ERRORS_HEADER, errors)
        self.fresh = False
        if records:
            self._write_part(records)

    def _starts(self, name: str) -> bool:
        return self.fresh or not (self.run_dir / name).is_file()

    def _append(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        import csv
        import io

        if self._starts(name):
            _write_csv(self.run_dir / name, header, rows)
            return
        if not rows:
            return
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        with (self.run_dir / name).open("a", encoding="utf-8", newline="") as handle:
            handle.write(text.getvalue())  # one write: whole lines or nothing, in practice

    def _write_part(self, records: Sequence[ClipRecord]) -> None:
        self.parts.mkdir(exist_ok=True)
        frame = _results_frame(records)
        path = self.parts / f"part-{self.last_row:09d}.parquet"
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))

    def discard_parts(self) -> None:
        """Remove the parts once the full ``results.parquet`` holds them."""
        import shutil

        shutil.rmtree(self.parts, ignore_errors=True)
