"""The in-process executor: run the clip graph over a manifest with threads.

The run's lifecycle (options, lock, resume, recording each clip's outcome, counting, closing)
is ``graphs.session``'s, shared with the Ray executor; its names are re-exported here. Besides
the run folder's ``trace.sqlite`` and outputs, this executor keeps ``checkpoints.sqlite``
(LangGraph ``SqliteSaver``): a clip killed mid-graph resumes at its last finished super-step;
finished clips' threads are pruned. Outputs are regenerated from the store now and then and at
the end, each replaced atomically, so a SIGKILL at any moment leaves either the previous or the
new file, never duplicates; ``--resume`` skips answered clips and rewrites the outputs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from meragent.config import Settings
from meragent.graphs.media_cache import MediaCache
from meragent.graphs.outputs import write_outputs
from meragent.graphs.run_folder import (
    CHECKPOINT_FILE,
    LOCK_FILE,
    RunLockedError,
    batch_alive,
    check_run_name,
    clear_run,
    run_dir_for,
    run_lock,
)
from meragent.graphs.runtime import Runtime, grouper_for, runtime_for
from meragent.graphs.session import (
    BatchOptions,
    BatchSummary,
    RunInputs,
    add_progress_task,
    advance,
    close_run,
    failure_stage,
    load_clips,
    locked_run,
    prepare_store,
    progress_bar,
    record_failure,
    record_success,
)
from meragent.graphs.trace import TraceStore, open_trace
from meragent.schema import Clip, ClipFailure

__all__ = [
    "CHECKPOINT_FILE",
    "LOCK_FILE",
    "BatchOptions",
    "BatchSummary",
    "RunLockedError",
    "batch_alive",
    "check_run_name",
    "clear_run",
    "close_run",
    "failure_stage",
    "invoke_clip",
    "load_clips",
    "open_checkpointer",
    "prepare_store",
    "progress_bar",
    "record_failure",
    "record_success",
    "run_batch",
    "run_dir_for",
    "run_lock",
    "thread_id",
]


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


# --------------------------------------------------------------------------- batch


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


def run_batch(
    settings: Settings,
    source: Path | str | None,
    run_name: str,
    options: BatchOptions | None = None,
    *,
    runtime: Runtime | None = None,
) -> BatchSummary:
    """Run every clip of ``source`` through the graph into ``runs_dir/run_name``.

    ``source=None`` (with ``--resume``) continues on the source the run was started with.
    """
    with locked_run(settings, source, run_name, options or BatchOptions()) as run:
        return _run_locked(settings, run, runtime)


def _run_locked(settings: Settings, run: RunInputs, runtime: Runtime | None) -> BatchSummary:
    started = time.perf_counter()
    rt = runtime  # built lazily: nothing to load when every clip is already done
    options, track = run.options, run.options.run_track
    with open_trace(run.run_dir, secrets=[]) as store:
        done = prepare_store(store, run.run_id, options, settings, run.source, len(run.clips))
        todo = [(seq, clip) for seq, clip in enumerate(run.clips) if clip.id not in done]
        summary = BatchSummary.starting(
            run.run_id, run.run_dir, track, len(run.clips), len(todo), len(run.row_errors)
        )
        status = "interrupted"
        try:
            if todo:
                rt = rt or runtime_for(settings, track=track)
                store.add_secrets(rt.secrets)  # scrub the API key from anything stored
                _run_clips(store, run, todo, rt, summary)
            status = "finished"
        finally:
            usage = rt.tally.as_dict() if rt is not None else {}
            grouper = rt.grouper if rt is not None else grouper_for(settings)
            close_run(store, summary, status, usage, track, run.row_errors, started,
                      grouper=grouper)  # fmt: skip
    return summary


def _run_clips(
    store: TraceStore,
    run: RunInputs,
    todo: list[tuple[int, Clip]],
    rt: Runtime,
    summary: BatchSummary,
) -> None:
    from meragent.graphs.builder import build_graph

    options, run_id = run.options, run.run_id
    checkpointer = open_checkpointer(run.run_dir / CHECKPOINT_FILE) if options.checkpoint else None
    media = MediaCache(rt.decoder, max_items=4 * options.concurrency + 4)
    graph = build_graph(
        rt.tools,
        rt.chat_models,
        track=options.run_track,
        checkpointer=checkpointer,
        trace=store,
        media_cache=media,
        **rt.graph_options(),
    )

    def process(seq: int, clip: Clip) -> ClipFailure | None:
        clock = time.perf_counter()
        try:
            output = invoke_clip(graph, run_id, clip, checkpointed=checkpointer is not None)
            outcome = record_success(store, run_id, seq, clip, output, time.perf_counter() - clock)
        except Exception as exc:  # per-clip isolation: record and move on
            return record_failure(store, run_id, seq, clip, exc, time.perf_counter() - clock)
        finally:
            media.drop(clip.id)
        if checkpointer is not None:
            checkpointer.delete_thread(thread_id(run_id, clip.id))  # keep the checkpoint DB small
        return outcome

    try:
        _drain(process, store, run, todo, summary)
    finally:
        if checkpointer is not None:
            checkpointer.conn.close()


def _drain(
    process: Callable[[int, Clip], ClipFailure | None],
    store: TraceStore,
    run: RunInputs,
    todo: list[tuple[int, Clip]],
    summary: BatchSummary,
) -> None:
    """Feed clips to a thread pool, count outcomes, refresh outputs now and then."""
    options = run.options
    last_export = time.monotonic()
    with progress_bar(options.progress, len(todo), lambda: summary.clips_per_s) as progress:
        task = add_progress_task(progress, summary)
        summary.throughput.start()
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
                        advance(progress, task, summary, future.result())
                    if time.monotonic() - last_export > options.export_every_s:
                        write_outputs(
                            store, run.run_dir, run.run_id, track=options.run_track,
                            row_errors=run.row_errors, with_metrics=False,
                        )  # fmt: skip
                        last_export = time.monotonic()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
