"""Run the clip graph over a manifest: concurrency, error isolation, resume, lock, outputs.

The run folder ``settings.runs_dir/NAME`` holds ``trace.sqlite`` (the trace store, which is also
the commit log: a clip is done when its ``clip_result`` row says ``ok``), ``checkpoints.sqlite``
(LangGraph ``SqliteSaver``: a clip killed mid-graph resumes at its last finished super-step;
finished clips' threads are pruned), a ``.lock`` file held with ``flock`` while a batch runs, and
the outputs written by ``graphs.outputs`` (submission CSVs, ``results.parquet``, ``errors.csv``,
``metrics.json``), regenerated from the store and replaced atomically, so a SIGKILL at any
moment leaves either the previous or the new file, never duplicates; ``--resume`` skips clips
already ``ok`` and rewrites the outputs.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meragent.config import Settings
from meragent.errors import ConfigError, DataError, MeragentError
from meragent.graphs.media_cache import MediaCache
from meragent.graphs.outputs import OUTPUT_FILES, OutputPaths, aggregate_metrics, write_outputs
from meragent.graphs.runtime import Runtime, runtime_for
from meragent.graphs.state import TRACKS
from meragent.graphs.trace import TraceStore, open_trace
from meragent.schema import Clip, ClipFailure

CHECKPOINT_FILE = "checkpoints.sqlite"
LOCK_FILE = ".lock"
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
    """The folder of run ``name``: ``settings.runs_dir/name``."""
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


def batch_alive(run_dir: Path) -> bool:
    """Whether the process named in the run's lock file is still alive (for ``trace list``)."""
    try:
        pid = int((run_dir / LOCK_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clear_run(run_dir: Path) -> None:
    """Remove a run's store, checkpoints and outputs (the lock file stays: we hold it)."""
    for name in (*OUTPUT_FILES, "trace.html"):
        (run_dir / name).unlink(missing_ok=True)
    for base in ("trace.sqlite", CHECKPOINT_FILE):
        for suffix in ("", "-wal", "-shm"):
            (run_dir / f"{base}{suffix}").unlink(missing_ok=True)


# --------------------------------------------------------------------------- one clip


def thread_id(run_id: str, clip_id: str) -> str:
    """The checkpointer thread of one clip in one run."""
    return f"{run_id}/{clip_id}"


def invoke_clip(graph: Any, run_id: str, clip: Clip, *, checkpointed: bool) -> dict[str, Any]:
    """Run the graph on one clip; with a checkpointer, continue a thread a killed run left."""
    config = {"configurable": {"thread_id": thread_id(run_id, clip.id)}}
    if checkpointed:
        snapshot = graph.get_state(config)
        values = snapshot.values or {}
        same_clip = bool(values) and values.get("clip") == clip
        # ``tasks``, not ``next``: a kill after every task of a super-step saved its writes but
        # before the next checkpoint leaves ``next`` empty while the step is still to be applied.
        if same_clip and snapshot.tasks:
            return dict(graph.invoke(None, config))  # resume at the unfinished super-step
        if same_clip and "prediction" in values:
            return dict(values)  # finished but not recorded before the kill
        if values:
            # A fresh input on an old thread would append its clues to the stale ones.
            graph.checkpointer.delete_thread(thread_id(run_id, clip.id))
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
    """Commit a finished clip (its ``ok`` row is what resume trusts)."""
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
    """Record a clip that raised, with a coarse stage and a one-line reason."""
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

    @classmethod
    def starting(
        cls, run_id: str, run_dir: Path, track: str, n_clips: int, n_todo: int, n_row_errors: int
    ) -> BatchSummary:
        """The summary of a run before any clip was processed (shared by every executor)."""
        return cls(
            run_name=run_id,
            run_dir=run_dir,
            track=track,
            n_clips=n_clips,
            n_skipped=n_clips - n_todo,
            n_ok=0,
            n_failed=0,
            n_row_errors=n_row_errors,
            elapsed_s=0.0,
        )


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


def progress_bar(enabled: bool, total: int) -> Any:
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
        """Clips per second since the start (rich's own speed needs many updates)."""

        def render(self, task: Any) -> Text:
            elapsed = task.elapsed or 0.0
            rate = task.completed / elapsed if elapsed > 0 else 0.0
            return Text(f"{rate:.2f} clips/s")

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


def prepare_store(
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
        done = prepare_store(store, run_id, options, settings, source, len(clips))
        todo = [(seq, clip) for seq, clip in enumerate(clips) if clip.id not in done]
        summary = BatchSummary.starting(
            run_id, run_dir, options.track, len(clips), len(todo), len(row_errors)
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
            close_run(store, summary, status, usage, options.track, row_errors, started)
        summary.metrics = aggregate_metrics(store, run_id)
    return summary


def close_run(
    store: TraceStore,
    summary: BatchSummary,
    status: str,
    usage: dict[str, Any],
    track: str,
    row_errors: list[tuple[str, str, str]],
    started: float,
) -> None:
    """Record how the run ended and regenerate its outputs (every executor ends this way)."""
    store.finish_run(summary.run_name, status=status, usage=usage)
    summary.usage = usage
    summary.outputs = write_outputs(
        store, summary.run_dir, summary.run_name, track=track, row_errors=row_errors
    )
    summary.elapsed_s = time.perf_counter() - started


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
        **rt.graph_options(),
    )

    def process(seq: int, clip: Clip) -> ClipFailure | None:
        clock = time.perf_counter()
        try:
            output = invoke_clip(graph, run_id, clip, checkpointed=checkpointer is not None)
            record_success(store, run_id, seq, clip, output, time.perf_counter() - clock)
        except Exception as exc:  # per-clip isolation: record and move on
            return record_failure(store, run_id, seq, clip, exc, time.perf_counter() - clock)
        finally:
            media.drop(clip.id)
        if checkpointer is not None:
            checkpointer.delete_thread(thread_id(run_id, clip.id))  # keep the checkpoint DB small
        return None

    try:
        _drain(process, store, run_dir, run_id, todo, options, summary, row_errors)
    finally:
        if checkpointer is not None:
            checkpointer.conn.close()


def _drain(
    process: Callable[[int, Clip], ClipFailure | None],
    store: TraceStore,
    run_dir: Path,
    run_id: str,
    todo: list[tuple[int, Clip]],
    options: BatchOptions,
    summary: BatchSummary,
    row_errors: list[tuple[str, str, str]],
) -> None:
    """Feed clips to a thread pool, count outcomes, refresh outputs now and then."""
    last_export = time.monotonic()
    with progress_bar(options.progress, len(todo)) as progress:
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
