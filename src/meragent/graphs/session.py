"""One run's lifecycle: :class:`RunSession`, shared by every :class:`Executor`.

The run folder ``settings.runs_dir/NAME`` holds ``trace.sqlite`` (the trace store, which is also
the commit log), a lock held while a batch runs (``graphs.run_folder``), and the outputs written
by ``graphs.outputs``. A session does what every executor needs done the same way: validate the
options (:class:`BatchOptions`, once), take the lock, resolve what ``--resume`` continues (the
stored track and source; a different source is refused unless allowed), commit each
:class:`ClipResult` (its trace steps and its ``clip_result`` row in one transaction), count it
into one :class:`BatchSummary` whose clips/s is the progress bar's, export what is new now and
then, and close the run: the full outputs first, then the ``finished`` mark, so a run is never
``finished`` without its outputs. An executor only turns clips into ``ClipResult``s.

A clip whose media cannot be decoded but has a subtitle is answered from the words (the MER
protocol wants a prediction for every clip) and recorded as ``degraded``: it is in the
submission files, in ``errors.csv`` with severity ``degraded``, counted in the summary, and
``--resume`` keeps it (its media are as broken as before). Failed clips are retried.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meragent.config import Settings
from meragent.errors import ConfigError
from meragent.graphs.clip_result import ClipResult, degraded_reason, failure_stage
from meragent.graphs.outputs import LiveExport, OutputPaths, write_outputs
from meragent.graphs.progress import Throughput, progress_bar
from meragent.graphs.run_folder import clear_run, run_dir_for, run_lock
from meragent.graphs.state import Track
from meragent.graphs.trace import RunRecord, TraceStore, open_trace, read_trace, trace_path
from meragent.schema import Clip, ClipFailure

DEFAULT_TRACK: Track = "all"

__all__ = [
    "DEFAULT_TRACK",
    "BatchOptions",
    "BatchSummary",
    "ClipResult",
    "Executor",
    "RunSession",
    "Throughput",
    "Track",
    "add_usage",
    "degraded_reason",
    "failure_stage",
    "load_clips",
    "progress_bar",
]

# --------------------------------------------------------------------------- options


class BatchOptions(BaseModel):
    """How to run a batch; checked once, on construction (a bad value is a ``ConfigError``).

    ``track=None``: the track the run was started with (``all`` for a new run).
    ``allow_new_source``: let ``--resume`` continue a run on another source than the stored one.
    ``encoder_batch``: clips per encoder call in the in-process executor (None: by device).
    ``processes``: worker processes of the in-process executor (1: threads in this process).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    track: Track | None = None
    concurrency: int = Field(default=1, ge=1)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    checkpoint: bool = True
    export_every_s: float = Field(default=15.0, gt=0)
    limit: int | None = Field(default=None, ge=1)
    allow_new_source: bool = False
    encoder_batch: int | None = Field(default=None, ge=1)
    processes: int = Field(default=1, ge=1)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_option_error(exc)) from None

    @property
    def run_track(self) -> Track:
        """The resolved track (only meaningful after the session resolved the run)."""
        return self.track or DEFAULT_TRACK


def _option_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = "--" + "-".join(str(part) for part in error["loc"]).replace("_", "-")
    if name == "--track":
        return f"unknown track {error.get('input')!r} (choose from ov, semi, noise, all)"
    return f"{name}: {error['msg']} (got {error.get('input')!r})"


# --------------------------------------------------------------------------- executors


class Executor(Protocol):
    """Turns clips into :class:`ClipResult`s; everything else is the :class:`RunSession`'s."""

    def results(self, session: RunSession, todo: list[tuple[int, Clip]]) -> Iterator[ClipResult]:
        """One result per clip of ``todo`` (any order), as each is ready."""
        ...

    def usage(self) -> dict[str, Any]:
        """The run's per-role token tally (after ``results`` is exhausted)."""
        ...

    def grouper(self, session: RunSession) -> Any:
        """The open-set grouper metrics.json scores with (None: identity)."""
        ...


def add_usage(total: dict[str, dict[str, float]], more: dict[str, dict[str, float]]) -> None:
    """Add per-role token counters ``more`` into ``total`` (the run's tally across clips)."""
    for role, counters in more.items():
        entry = total.setdefault(role, {})
        for key, value in counters.items():
            entry[key] = entry.get(key, 0) + value


# --------------------------------------------------------------------------- resume rules


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
    resolved = options.model_copy(update={"track": track})
    if source is None:
        if existing is None or not existing.source:
            raise ConfigError(f"run {run_id!r} has no stored source: give the SOURCE to run")
        return resolved, existing.source
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
    return resolved, chosen


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


# --------------------------------------------------------------------------- counting


@dataclass
class BatchSummary:
    """What a batch did; ``exit_code`` is the command's (0 all ok, 1 failed/degraded/bad rows)."""

    run_name: str
    run_dir: Path
    track: str
    n_clips: int
    n_skipped: int
    n_ok: int = 0
    n_failed: int = 0
    n_row_errors: int = 0
    elapsed_s: float = 0.0
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


# --------------------------------------------------------------------------- the session


class RunSession:
    """One invocation of a run, from its lock to its close (use it as a context manager).

    On enter: validate, lock, clear (``overwrite``), resolve resume, load the clips, open the
    store, apply the resume rule and register the run. :meth:`run` drives an :class:`Executor`
    through :meth:`commit`; on exit the session writes the outputs, marks the run and unlocks.
    """

    def __init__(
        self,
        settings: Settings,
        source: Path | str | None,
        run_name: str,
        options: BatchOptions | None = None,
        *,
        secrets: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.run_id = run_name
        self.run_dir = run_dir_for(settings, run_name)
        self.options = options or BatchOptions()
        self._source = source
        self._secrets = list(secrets or [])
        self._started = time.perf_counter()
        self._lock: Any = None
        self._usage: dict[str, dict[str, float]] = {}
        self.executor: Executor | None = None
        self.status = "interrupted"

    # ------------------------------------------------------------------ enter / exit

    def __enter__(self) -> RunSession:
        self._lock = run_lock(self.run_dir, self.run_id)
        self._lock.__enter__()
        try:
            self._open()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def _open(self) -> None:
        options = self.options
        if options.overwrite:
            clear_run(self.run_dir)
        existing = stored_run(self.run_dir, self.run_id)
        self.options, self.source = resolve_run(existing, self.run_id, options, self._source)
        self.clips, self.row_errors = load_clips(self.source, self.settings, limit=options.limit)
        self.store: TraceStore = open_trace(self.run_dir, secrets=self._secrets)
        try:
            done = self._register()
        except BaseException:
            self.store.close()
            raise
        self.todo = [(seq, clip) for seq, clip in enumerate(self.clips) if clip.id not in done]
        self.summary = BatchSummary(
            run_name=self.run_id,
            run_dir=self.run_dir,
            track=self.track,
            n_clips=len(self.clips),
            n_skipped=len(self.clips) - len(self.todo),
            n_row_errors=len(self.row_errors),
        )
        self.export = LiveExport(
            self.store, self.run_dir, self.run_id, self.track, fresh=not self.options.resume
        )

    def _register(self) -> set[str]:
        """Check the resume rule, register the run, return the clips already answered."""
        existing = self.store.get_run(self.run_id)
        if existing is not None and existing.n_results and not self.options.resume:
            raise ConfigError(
                f"run {self.run_id!r} already has {existing.n_results} clip results in "
                f"{self.run_dir}; pass --resume to continue it or choose another --run name"
            )
        self.store.start_run(
            self.run_id,
            track=self.track,
            profile=self.settings.profile,
            source=self.source,
            config=self.settings.masked_dump(),
            n_clips=len(self.clips),
        )
        return self.store.finished_clips(self.run_id) if self.options.resume else set()

    def __exit__(self, kind: Any, *rest: Any) -> None:
        try:
            self._close("finished" if kind is None else "interrupted")
        finally:
            self.store.close()
            self._lock.__exit__(None, None, None)

    @property
    def track(self) -> Track:
        return self.options.run_track

    # ------------------------------------------------------------------ running

    def run(self, executor: Executor) -> BatchSummary:
        """Commit each result ``executor`` yields for the clips left to do (with a progress bar)."""
        self.executor = executor
        if not self.todo:
            return self.summary
        summary = self.summary
        with progress_bar(self.options.progress, lambda: summary.clips_per_s) as progress:
            self._task = progress.add_task(self.run_id, total=len(self.todo), failed=0, degraded=0)
            self._progress = progress
            summary.throughput.start()
            for result in executor.results(self, self.todo):
                self.commit(result)
        return summary

    def commit(self, result: ClipResult) -> None:
        """Store one clip (steps + result in one transaction), count it, export what is new."""
        self.store.commit_clip(self.run_id, result)
        add_usage(self._usage, result.usage)
        summary = self.summary
        summary.count(result.outcome)
        progress = getattr(self, "_progress", None)
        if progress is not None:
            progress.update(
                self._task, advance=1, failed=summary.n_failed, degraded=summary.n_degraded
            )
        self.export.flush_if_due(self.options.export_every_s, self.row_errors)

    def _close(self, status: str) -> None:
        """The full outputs, then how the run ended (``interrupted`` if writing them fails)."""
        summary = self.summary
        summary.throughput.stop()
        executor = self.executor
        usage = self._usage
        grouper = None
        if executor is not None:
            usage = executor.usage() or usage
            grouper = executor.grouper(self)
        summary.usage = usage
        try:
            summary.outputs = write_outputs(
                self.store, self.run_dir, self.run_id, track=self.track,
                row_errors=self.row_errors, grouper=grouper,
            )  # fmt: skip
        except BaseException:
            self.store.finish_run(self.run_id, status="interrupted", usage=usage)
            raise
        self.export.discard_parts()
        summary.metrics = summary.outputs.scores
        self.store.finish_run(self.run_id, status=status, usage=usage)
        summary.run_record = self.store.get_run(self.run_id)
        summary.elapsed_s = time.perf_counter() - self._started
