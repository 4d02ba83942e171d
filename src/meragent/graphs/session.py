"""One run's lifecycle, shared by both executors (``graphs.batch``, ``graphs.ray_executor``).

The run folder ``settings.runs_dir/NAME`` holds ``trace.sqlite`` (the trace store, which is also
the commit log), a ``.lock`` file held with ``flock`` while a batch runs, and the outputs written
by ``graphs.outputs``. This module owns what every executor does the same way: validate the
options, take the lock, resolve what ``--resume`` continues (the stored track and source; a
different source is refused unless allowed), record each clip's outcome (``ok``, ``degraded`` or
``failed``), count it into one :class:`BatchSummary` whose clips/s is the progress bar's, and
close the run: outputs first, then the ``finished`` mark, so a run is never ``finished`` without
its outputs.

A clip whose media cannot be decoded but has a subtitle is answered from the words (the MER
protocol wants a prediction for every clip) and recorded as ``degraded``: it is in the
submission files, in ``errors.csv`` with severity ``degraded``, counted in the summary, and
``--resume`` keeps it (its media are as broken as before). Failed clips are retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meragent.config import Settings
from meragent.errors import ConfigError, DataError
from meragent.graphs.outputs import OutputPaths, write_outputs
from meragent.graphs.run_folder import clear_run, run_dir_for, run_lock
from meragent.graphs.state import TRACKS
from meragent.graphs.trace import RunRecord, TraceStore, read_trace, trace_path
from meragent.schema import Clip, ClipFailure

DEFAULT_TRACK = "all"

# --------------------------------------------------------------------------- options & resume


@dataclass
class BatchOptions:
    """How to run a batch.

    ``track=None``: the track the run was started with (``all`` for a new run).
    ``allow_new_source``: let ``--resume`` continue a run on another source than the stored one.
    """

    track: str | None = None
    concurrency: int = 1
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    checkpoint: bool = True
    export_every_s: float = 15.0
    limit: int | None = None
    allow_new_source: bool = False

    @property
    def run_track(self) -> str:
        """The resolved track (only valid after :func:`resolve_run`)."""
        return self.track or DEFAULT_TRACK


def check_options(options: BatchOptions) -> None:
    """Usage errors that need no run folder."""
    if options.track is not None and options.track not in TRACKS:
        raise ConfigError(f"unknown track {options.track!r} (choose from {', '.join(TRACKS)})")
    if options.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")


def stored_run(run_dir: Path, run_id: str) -> RunRecord | None:
    """The run's record in its trace store, or None for a run that never started."""
    if not trace_path(run_dir).is_file():
        return None
    with read_trace(run_dir) as store:
        return store.get_run(run_id)


def same_source(stored: str, given: str) -> bool:
    """Whether two source arguments name the same file or folder."""
    return Path(stored).expanduser().resolve() == Path(given).expanduser().resolve()


def resolve_run(
    existing: RunRecord | None, run_id: str, options: BatchOptions, source: Path | str | None
) -> tuple[BatchOptions, str]:
    """The track and source a (resumed) run uses: given ones, else the stored ones.

    A resume on another source would mix two datasets in one run's outputs: refused unless
    ``options.allow_new_source``.
    """
    if existing is not None and existing.track and options.track not in (None, existing.track):
        raise ConfigError(
            f"run {run_id!r} was started with --track {existing.track}; resume it with the "
            "same track (or none) or choose another --run name"
        )
    track = options.track or (existing.track if existing is not None else None) or DEFAULT_TRACK
    if source is None:
        if existing is None or not existing.source:
            raise ConfigError(f"run {run_id!r} has no stored source: give the SOURCE to run")
        return replace(options, track=track), existing.source
    chosen = str(Path(source).expanduser().resolve())
    if (
        options.resume
        and existing is not None
        and existing.n_results
        and existing.source
        and not same_source(existing.source, chosen)
        and not options.allow_new_source
    ):
        raise ConfigError(
            f"run {run_id!r} was started on {existing.source}, not {chosen}: resuming it on "
            "another source would mix two datasets in one run; resume with the same SOURCE (or "
            "none), choose another --run name, or pass --allow-new-source if it holds the same "
            "clips"
        )
    return replace(options, track=track), chosen


def load_clips(
    source: Path | str, settings: Settings, *, limit: int | None = None
) -> tuple[list[Clip], list[tuple[str, str, str]]]:
    """Clips of a manifest (the first ``limit``) plus its bad rows as (name, stage, reason)."""
    from meragent.data.manifest import load_manifest

    loaded = load_manifest(source, data_root=settings.data_root)
    errors = [
        (e.clip_id or f"row {e.row}", "manifest", f"{e.kind}: {e.reason}") for e in loaded.errors
    ]
    clips = list(loaded.clips)
    return (clips if limit is None else clips[:limit]), errors


@dataclass
class RunInputs:
    """What a locked run works on: resolved options and source, the clips, the bad rows."""

    run_id: str
    run_dir: Path
    options: BatchOptions
    source: str
    clips: list[Clip]
    row_errors: list[tuple[str, str, str]]


@contextmanager
def locked_run(
    settings: Settings, source: Path | str | None, run_name: str, options: BatchOptions
) -> Iterator[RunInputs]:
    """Validate, take the run's lock, resolve resume, load the clips (every executor's start)."""
    check_options(options)
    run_dir = run_dir_for(settings, run_name)
    with run_lock(run_dir, run_name):
        if options.overwrite:
            clear_run(run_dir)
        resolved, chosen = resolve_run(stored_run(run_dir, run_name), run_name, options, source)
        clips, row_errors = load_clips(chosen, settings, limit=resolved.limit)
        yield RunInputs(run_name, run_dir, resolved, chosen, clips, row_errors)


def prepare_store(
    store: TraceStore, run_id: str, options: BatchOptions, settings: Settings, source: str, n: int
) -> set[str]:
    """Check the resume rule, register the run, return the clips already answered."""
    existing = store.get_run(run_id)
    if existing is not None and existing.n_results and not options.resume:
        raise ConfigError(
            f"run {run_id!r} already has {existing.n_results} clip results in "
            f"{store.path.parent}; pass --resume to continue it or choose another --run name"
        )
    store.start_run(
        run_id,
        track=options.run_track,
        profile=settings.profile,
        source=source,
        config=settings.masked_dump(),
        n_clips=n,
    )
    return store.finished_clips(run_id) if options.resume else set()


# --------------------------------------------------------------------------- one clip's outcome


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


def degraded_reason(output: Mapping[str, Any]) -> str | None:
    """Why an answered clip is only a partial success (its media could not be decoded), or None."""
    media = output.get("media") or {}
    error = media.get("error") if isinstance(media, Mapping) else None
    if not error:
        return None
    first = str(error).strip().splitlines()[0] if str(error).strip() else "decode failed"
    return f"media not decoded, answered from the subtitle: {first}"


def record_answer(
    store: TraceStore,
    run_id: str,
    seq: int,
    clip_id: str,
    output: dict[str, Any],
    prediction: Mapping[str, Any],
    latency: float,
) -> ClipFailure | None:
    """Commit an answered clip as ``ok`` or ``degraded`` (the row resume trusts).

    Returns the degraded outcome (severity ``degraded``, stage ``media``) or None for ``ok``.
    """
    reason = degraded_reason(output)
    store.record_result(
        run_id,
        clip_id,
        seq=seq,
        status="ok" if reason is None else "degraded",
        discrete=prediction.get("discrete"),
        openset=list(prediction.get("openset") or []),
        description=prediction.get("description"),
        stage=None if reason is None else "media",
        error=reason,
        latency_s=latency,
        result=output,  # every output field, JSON-encoded by the store
    )
    if reason is None:
        return None
    return ClipFailure(clip_id=clip_id, stage="media", reason=reason, severity="degraded")


def record_success(
    store: TraceStore, run_id: str, seq: int, clip: Clip, output: dict[str, Any], latency: float
) -> ClipFailure | None:
    """Commit a clip the graph answered (in-process): ``ok``, or ``degraded`` with its reason."""
    prediction = output.get("prediction")
    fields = {
        "discrete": getattr(prediction, "discrete", None),
        "openset": getattr(prediction, "openset", None),
        "description": getattr(prediction, "description", None),
    }
    return record_answer(store, run_id, seq, clip.id, output, fields, latency)


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


# --------------------------------------------------------------------------- counting & closing


@dataclass
class Throughput:
    """Clips per second of clip processing: the one figure the progress bar and summary show.

    The clock starts when the first clip is handed to the executor and stops when the last one
    is counted; the numerator is every clip counted in between (ok, degraded or failed).
    """

    done: int = 0
    started: float | None = None
    stopped: float | None = None

    def start(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def stop(self) -> None:
        if self.started is not None and self.stopped is None:
            self.stopped = time.perf_counter()

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.stopped or time.perf_counter()) - self.started

    @property
    def rate(self) -> float:
        seconds = self.seconds
        return self.done / seconds if seconds > 0 else 0.0


@dataclass
class BatchSummary:
    """What a batch did; ``exit_code`` is the command's (0 all ok, 1 failed/degraded/bad rows)."""

    run_name: str
    run_dir: Path
    track: str
    n_clips: int
    n_skipped: int
    n_ok: int
    n_failed: int
    n_row_errors: int
    elapsed_s: float
    n_degraded: int = 0
    outputs: OutputPaths | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    failures: list[ClipFailure] = field(default_factory=list)
    throughput: Throughput = field(default_factory=Throughput)
    run_record: RunRecord | None = None  # the run as stored after closing (all invocations)

    @property
    def clips_per_s(self) -> float:
        return self.throughput.rate

    @property
    def n_done(self) -> int:
        """Clips this invocation processed, whatever their outcome."""
        return self.n_ok + self.n_degraded + self.n_failed

    def count(self, outcome: ClipFailure | None) -> None:
        """Count one processed clip (None = ok); stops the clock with the last one."""
        if outcome is None:
            self.n_ok += 1
        elif outcome.severity == "degraded":
            self.n_degraded += 1
            self.failures.append(outcome)
        else:
            self.n_failed += 1
            self.failures.append(outcome)
        self.throughput.done = self.n_done
        if self.n_done >= self.n_clips - self.n_skipped:
            self.throughput.stop()

    @property
    def exit_code(self) -> int:
        """1 when the run's outputs hold failed or degraded clips or the source had bad rows.

        Counted over the run as stored (a resume that leaves earlier degraded clips exits 1).
        """
        stored = self.run_record
        failed = stored.n_failed if stored is not None else self.n_failed
        degraded = stored.n_degraded if stored is not None else self.n_degraded
        return 1 if failed or degraded or self.n_row_errors else 0

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


def close_run(
    store: TraceStore,
    summary: BatchSummary,
    status: str,
    usage: dict[str, Any],
    track: str,
    row_errors: list[tuple[str, str, str]],
    started: float,
    *,
    grouper: Any = None,
) -> None:
    """Write the run's outputs, then record how it ended (every executor ends this way).

    Outputs first: a run is marked ``finished`` only once its files are there; if writing them
    fails, the run is marked ``interrupted`` and ``--resume`` writes them again.
    """
    summary.throughput.stop()
    summary.usage = usage
    try:
        summary.outputs = write_outputs(
            store, summary.run_dir, summary.run_name, track=track, row_errors=row_errors,
            grouper=grouper,
        )  # fmt: skip
    except BaseException:
        store.finish_run(summary.run_name, status="interrupted", usage=usage)
        raise
    summary.metrics = summary.outputs.scores
    store.finish_run(summary.run_name, status=status, usage=usage)
    summary.run_record = store.get_run(summary.run_name)
    summary.elapsed_s = time.perf_counter() - started


def progress_bar(enabled: bool, total: int, rate: Callable[[], float] | None = None) -> Any:
    """A rich progress bar with clips/s, ETA and failure counts (a no-op when disabled).

    ``rate``: the clips/s to show (pass ``summary.throughput``'s, so the bar and the summary
    print the same figure); default: completed clips over the bar's own elapsed time.
    """
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
        """Clips per second since the first clip (rich's own speed needs many updates)."""

        def render(self, task: Any) -> Text:
            if rate is not None:
                return Text(f"{rate():.2f} clips/s")
            elapsed = task.elapsed or 0.0
            return Text(f"{task.completed / elapsed if elapsed > 0 else 0.0:.2f} clips/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("failed: {task.fields[failed]} degraded: {task.fields[degraded]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def add_progress_task(progress: Any, summary: BatchSummary) -> Any:
    """The run's task on a :func:`progress_bar` (its fields are what :func:`advance` updates)."""
    todo = summary.n_clips - summary.n_skipped
    return progress.add_task(summary.run_name, total=todo, failed=0, degraded=0)


def advance(progress: Any, task: Any, summary: BatchSummary, outcome: ClipFailure | None) -> None:
    """Count one clip into the summary and move the bar by it (same numbers in both)."""
    summary.count(outcome)
    progress.update(task, advance=1, failed=summary.n_failed, degraded=summary.n_degraded)
