"""Run the clip graph over a manifest: concurrency, error isolation, resume, lock, outputs.

The run folder ``settings.runs_dir/NAME`` holds ``trace.sqlite`` (the trace store, which is also
the commit log: a clip is done when its ``clip_result`` row says ``ok``), ``checkpoints.sqlite``
(LangGraph ``SqliteSaver``: a clip killed mid-graph resumes at its last finished super-step;
finished clips' threads are pruned), a ``.lock`` file held with ``flock`` while a batch runs, and
the outputs: ``discrete.csv`` (``name,discrete``), ``openset.csv`` (``name,openset``),
``results.parquet``, ``errors.csv`` and ``metrics.json`` when ground truth is present.

Outputs are regenerated from the store and replaced atomically (temp file + rename), so a
SIGKILL at any moment leaves either the previous or the new file, never duplicates; ``--resume``
skips clips already ``ok`` and rewrites the outputs.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meragent.config import Settings
from meragent.errors import ConfigError, DataError, MeragentError
from meragent.graphs.media_cache import MediaCache
from meragent.graphs.runtime import Runtime, runtime_for
from meragent.graphs.state import TRACKS
from meragent.graphs.trace import TraceStore, dumps, open_trace
from meragent.schema import Clip, ClipFailure

CHECKPOINT_FILE = "checkpoints.sqlite"
LOCK_FILE = ".lock"
OUTPUT_FILES = (
    "discrete.csv",
    "openset.csv",
    "results.parquet",
    "errors.csv",
    "metrics.json",
)
_RUN_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class RunLockedError(MeragentError):
    """Another batch with the same run name is running."""


# --------------------------------------------------------------------------- run folder & lock


def check_run_name(name: str) -> str:
    """A run name is one safe folder name (letters, digits, ``._-``)."""
    if not name or name.startswith(".") or not set(name) <= _RUN_NAME_OK:
        raise ConfigError(f"invalid run name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


def run_dir_for(settings: Settings, name: str) -> Path:
    return settings.runs_dir / check_run_name(name)


@contextmanager
def run_lock(run_dir: Path, name: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the run's lock file (the kernel drops it if we die)."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    handle = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise RunLockedError(
                f"run {name!r} is already running (pid {owner}); wait for it to finish or "
                "choose another --run name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing the descriptor releases the lock


def clear_run(run_dir: Path) -> None:
    """Remove a run's store, checkpoints and outputs (the lock file stays: we hold it)."""
    for name in (*OUTPUT_FILES, "trace.html"):
        (run_dir / name).unlink(missing_ok=True)
    for base in ("trace.sqlite", CHECKPOINT_FILE):
        for suffix in ("", "-wal", "-shm"):
            (run_dir / f"{base}{suffix}").unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp)`` and rename over ``path`` (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- one clip


def thread_id(run_id: str, clip_id: str) -> str:
    return f"{run_id}/{clip_id}"


def invoke_clip(graph: Any, run_id: str, clip: Clip, *, checkpointed: bool) -> dict[str, Any]:
    """Run the graph on one clip; with a checkpointer, continue a thread a killed run left."""
    config = {"configurable": {"thread_id": thread_id(run_id, clip.id)}}
    if checkpointed:
        snapshot = graph.get_state(config)
        values = snapshot.values or {}
        if values and values.get("clip") == clip:
            if snapshot.next:
                return dict(graph.invoke(None, config))  # resume at the unfinished super-step
            if "prediction" in values:
                return dict(values)  # finished but not recorded before the kill
        elif values:
            graph.checkpointer.delete_thread(thread_id(run_id, clip.id))  # the clip changed
    return dict(graph.invoke({"run_id": run_id, "clip": clip}, config))


def failure_stage(exc: BaseException) -> str:
    """A coarse stage name for errors.csv."""
    from meragent.errors import LLMError, MediaError

    if isinstance(exc, MediaError):
        return "media"
    if isinstance(exc, LLMError):
        return "llm"
    if isinstance(exc, DataError):
        return "data"
    return "pipeline"


def record_success(
    store: TraceStore, run_id: str, seq: int, clip: Clip, output: dict[str, Any], latency: float
) -> None:
    prediction = output.get("prediction")
    store.record_result(
        run_id,
        clip.id,
        seq=seq,
        status="ok",
        discrete=getattr(prediction, "discrete", None),
        openset=list(getattr(prediction, "openset", []) or []),
        description=getattr(prediction, "description", None),
        latency_s=latency,
        result=output,  # every output field, JSON-encoded by the store
    )


def record_failure(
    store: TraceStore, run_id: str, seq: int, clip: Clip, exc: BaseException, latency: float
) -> ClipFailure:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    failure = ClipFailure(clip_id=clip.id, stage=failure_stage(exc), reason=reason)
    store.record_result(
        run_id,
        clip.id,
        seq=seq,
        status="failed",
        stage=failure.stage,
        error=f"{type(exc).__name__}: {reason}",
        latency_s=latency,
        result={"clip": clip},
    )
    return failure


# --------------------------------------------------------------------------- outputs


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


# --------------------------------------------------------------------------- batch


@dataclass
class BatchSummary:
    """What a batch did."""

    run_name: str
    run_dir: Path
    track: str
    n_clips: int
    n_skipped: int
    n_ok: int
    n_failed: int
    n_row_errors: int
    elapsed_s: float
    outputs: OutputPaths | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    failures: list[ClipFailure] = field(default_factory=list)

    @property
    def clips_per_s(self) -> float:
        done = self.n_ok + self.n_failed
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0


def open_checkpointer(path: Path) -> Any:
    """A ``SqliteSaver`` on its own WAL connection, able to revive our state types."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from meragent.graphs.builder import checkpoint_serializer

    conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    saver = SqliteSaver(conn, serde=checkpoint_serializer())
    saver.setup()
    return saver


def _progress(enabled: bool, total: int) -> Any:
    """A rich progress bar with clips/s, ETA and a failure count (a no-op when disabled)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed or 0.0:.2f} clips/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("failed: {task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


@dataclass
class BatchOptions:
    """How to run a batch."""

    track: str = "all"
    concurrency: int = 1
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    checkpoint: bool = True
    export_every_s: float = 15.0
    limit: int | None = None


def load_clips(
    source: Path | str, settings: Settings
) -> tuple[list[Clip], list[tuple[str, str, str]]]:
    """Clips of a manifest plus its bad rows as (name, stage, reason) for errors.csv."""
    from meragent.data.manifest import load_manifest

    loaded = load_manifest(source, data_root=settings.data_root)
    errors = [
        (e.clip_id or f"row {e.row}", "manifest", f"{e.kind}: {e.reason}") for e in loaded.errors
    ]
    return list(loaded.clips), errors


def _prepare_store(
    store: TraceStore, run_id: str, options: BatchOptions, settings: Settings, source: str, n: int
) -> set[str]:
    """Check resume rules, register the run, return the clips already finished."""
    existing = store.get_run(run_id)
    if existing is not None and (existing.n_ok or existing.n_failed) and not options.resume:
        raise ConfigError(
            f"run {run_id!r} already has {existing.n_ok + existing.n_failed} clip results in "
            f"{store.path.parent}; pass --resume to continue it or choose another --run name"
        )
    if existing is not None and existing.track and existing.track != options.track:
        raise ConfigError(
            f"run {run_id!r} was started with --track {existing.track}; resume it with the "
            "same track or choose another --run name"
        )
    store.start_run(
        run_id,
        track=options.track,
        profile=settings.profile,
        source=source,
        config=settings.masked_dump(),
        n_clips=n,
    )
    return store.finished_clips(run_id) if options.resume else set()


def run_batch(
    settings: Settings,
    source: Path | str,
    run_name: str,
    options: BatchOptions | None = None,
    *,
    runtime: Runtime | None = None,
) -> BatchSummary:
    """Run every clip of ``source`` through the graph into ``runs_dir/run_name``."""
    options = options or BatchOptions()
    if options.track not in TRACKS:
        raise ConfigError(f"unknown track {options.track!r} (choose from {', '.join(TRACKS)})")
    if options.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    run_dir = run_dir_for(settings, run_name)
    with run_lock(run_dir, run_name):
        if options.overwrite:
            clear_run(run_dir)
        clips, row_errors = load_clips(source, settings)
        if options.limit is not None:
            clips = clips[: options.limit]
        return _run_locked(
            settings, str(source), run_name, run_dir, clips, row_errors, options, runtime
        )


def _run_locked(
    settings: Settings,
    source: str,
    run_id: str,
    run_dir: Path,
    clips: list[Clip],
    row_errors: list[tuple[str, str, str]],
    options: BatchOptions,
    runtime: Runtime | None,
) -> BatchSummary:
    started = time.perf_counter()
    rt = runtime  # built lazily: nothing to load when every clip is already done
    with open_trace(run_dir, secrets=[]) as store:
        done = _prepare_store(store, run_id, options, settings, source, len(clips))
        todo = [(seq, clip) for seq, clip in enumerate(clips) if clip.id not in done]
        summary = BatchSummary(
            run_name=run_id,
            run_dir=run_dir,
            track=options.track,
            n_clips=len(clips),
            n_skipped=len(clips) - len(todo),
            n_ok=0,
            n_failed=0,
            n_row_errors=len(row_errors),
            elapsed_s=0.0,
        )
        status = "interrupted"
        try:
            if todo:
                rt = rt or runtime_for(settings, track=options.track)
                store.add_secrets(rt.secrets)  # scrub the API key from anything stored
                _run_clips(store, run_dir, run_id, todo, rt, options, summary, row_errors)
            status = "finished"
        finally:
            usage = rt.tally.as_dict() if rt is not None else {}
            store.finish_run(run_id, status=status, usage=usage)
            summary.usage = usage
            summary.outputs = write_outputs(
                store, run_dir, run_id, track=options.track, row_errors=row_errors
            )
            summary.elapsed_s = time.perf_counter() - started
        summary.metrics = aggregate_metrics(store, run_id)
    return summary


def _run_clips(
    store: TraceStore,
    run_dir: Path,
    run_id: str,
    todo: list[tuple[int, Clip]],
    rt: Runtime,
    options: BatchOptions,
    summary: BatchSummary,
    row_errors: list[tuple[str, str, str]],
) -> None:
    from meragent.graphs.builder import build_graph

    checkpointer = open_checkpointer(run_dir / CHECKPOINT_FILE) if options.checkpoint else None
    media = MediaCache(rt.decoder, max_items=4 * options.concurrency + 4)
    graph = build_graph(
        rt.tools,
        rt.chat_models,
        track=options.track,
        checkpointer=checkpointer,
        trace=store,
        media_cache=media,
        fusion_model=rt.fusion_model,
        fusion_weights=rt.fusion_weights,
        llm_weight=rt.llm_weight,
        grouper=rt.grouper,
    )

    def process(seq: int, clip: Clip) -> ClipFailure | None:
        clock = time.perf_counter()
        try:
            output = invoke_clip(graph, run_id, clip, checkpointed=checkpointer is not None)
        except Exception as exc:  # per-clip isolation: record and move on
            return record_failure(store, run_id, seq, clip, exc, time.perf_counter() - clock)
        finally:
            media.drop(clip.id)
        record_success(store, run_id, seq, clip, output, time.perf_counter() - clock)
        if checkpointer is not None:
            checkpointer.delete_thread(thread_id(run_id, clip.id))  # keep the checkpoint DB small
        return None

    last_export = time.monotonic()
    with _progress(options.progress, len(todo)) as progress:
        task = progress.add_task(run_id, total=len(todo), failed=0)
        with ThreadPoolExecutor(max_workers=options.concurrency) as pool:
            pending: set[Future[ClipFailure | None]] = set()
            queue = iter(todo)
            try:
                while True:
                    # Bounded submission: memory stays flat for 100k-clip manifests.
                    for seq, clip in queue:
                        pending.add(pool.submit(process, seq, clip))
                        if len(pending) >= 2 * options.concurrency:
                            break
                    if not pending:
                        break
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        failure = future.result()
                        if failure is None:
                            summary.n_ok += 1
                        else:
                            summary.n_failed += 1
                            summary.failures.append(failure)
                        progress.update(task, advance=1, failed=summary.n_failed)
                    if time.monotonic() - last_export > options.export_every_s:
                        write_outputs(
                            store, run_dir, run_id, track=options.track,
                            row_errors=row_errors, with_metrics=False,
                        )  # fmt: skip
                        last_export = time.monotonic()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    if checkpointer is not None:
        checkpointer.conn.close()
