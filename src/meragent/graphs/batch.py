"""The in-process executor: the clip graph over a run's clips, on a pool of threads.

:class:`ThreadExecutor` only turns clips into ``ClipResult``s; the run's lifecycle (options, lock,
resume, commit, counting, exports, close) is :class:`graphs.session.RunSession`'s, shared with
the Ray executor. Besides the run folder's ``trace.sqlite`` and outputs, this executor keeps
``checkpoints.sqlite`` (LangGraph ``SqliteSaver``): a clip killed mid-graph resumes at its last
finished super-step; answered clips' threads are pruned (in batches) once the session committed
them. At most
``2 × concurrency`` clips are in flight, so memory stays flat for 100k-clip manifests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from meragent.config import Settings
from meragent.errors import ConfigError
from meragent.graphs.checkpoints import open_checkpointer
from meragent.graphs.context import GraphContext
from meragent.graphs.media_cache import MediaCache
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
from meragent.graphs.runtime import RunDeps, load_run_deps, profile_grouper
from meragent.graphs.session import (
    BatchOptions,
    BatchSummary,
    ClipResult,
    RunSession,
    failure_stage,
    load_clips,
)
from meragent.graphs.trace import StepBuffer
from meragent.schema import Clip

__all__ = [
    "CHECKPOINT_FILE",
    "LOCK_FILE",
    "BatchOptions",
    "BatchSummary",
    "RunLockedError",
    "ThreadExecutor",
    "batch_alive",
    "check_run_name",
    "clear_run",
    "failure_stage",
    "invoke_clip",
    "load_clips",
    "open_checkpointer",
    "run_batch",
    "run_dir_for",
    "run_lock",
    "thread_id",
]


# --------------------------------------------------------------------------- one clip


def thread_id(run_id: str, clip_id: str) -> str:
    """The checkpointer thread of one clip in one run."""
    return f"{run_id}/{clip_id}"


#: LangGraph makes a thread pool per ``invoke`` (for parallel tasks and checkpoint writes), one
#: thread per submit while none is idle: unbounded, ~4.5 threads started and joined per clip,
#: a third of a batch's CPU at concurrency 8. Two workers (plus the calling thread) still run the
#: three tool nodes of a super-step at once; the batch's parallelism is across clips.
CLIP_MAX_CONCURRENCY = 2
#: Each super-step's checkpoint is written before the next one starts (LangGraph's ``sync``):
#: what a kill leaves is never older than with ``async``, and the writes need no extra thread.
CLIP_DURABILITY = "sync"


def clip_config(run_id: str, clip_id: str) -> dict[str, Any]:
    """The LangGraph config of one clip's invocation (its thread, the per-invoke pool bound)."""
    return {
        "configurable": {"thread_id": thread_id(run_id, clip_id)},
        "max_concurrency": CLIP_MAX_CONCURRENCY,
    }


def invoke_clip(
    graph: Any, run_id: str, clip: Clip, *, checkpointed: bool, context: GraphContext
) -> dict[str, Any]:
    """Run the graph on one clip; with a checkpointer, continue a thread a killed run left."""
    config = clip_config(run_id, clip.id)
    # Without a checkpointer LangGraph warns that a durability has no effect.
    durability = CLIP_DURABILITY if graph.checkpointer is not None else None
    if checkpointed:
        snapshot = graph.get_state(config)
        values = snapshot.values or {}
        same_clip = bool(values) and values.get("clip") == clip
        # ``tasks``, not ``next``: a kill after every task of a super-step saved its writes but
        # before the next checkpoint leaves ``next`` empty while the step is still to be applied.
        if same_clip and snapshot.tasks:  # resume at the unfinished super-step
            return dict(graph.invoke(None, config, context=context, durability=durability))
        if same_clip and "prediction" in values:
            return dict(values)  # finished but not recorded before the kill
        if values:
            # A fresh input on an old thread would append its clues to the stale ones.
            graph.checkpointer.delete_thread(thread_id(run_id, clip.id))
    state = {"run_id": run_id, "clip": clip}
    return dict(graph.invoke(state, config, context=context, durability=durability))


# --------------------------------------------------------------------------- the executor


class ThreadExecutor:
    """Clips through one compiled graph on ``concurrency`` threads, isolated per clip.

    ``runtime``: the tools and chat models (default: built from the settings for the run's track,
    only when a clip is left to run).
    """

    def __init__(self, settings: Settings, runtime: RunDeps | None = None) -> None:
        self.settings = settings
        self.runtime = runtime

    def usage(self) -> dict[str, Any]:
        return self.runtime.tally.as_dict() if self.runtime is not None else {}

    def grouper(self, session: RunSession) -> Any:
        return self.runtime.grouper if self.runtime is not None else profile_grouper(self.settings)

    def results(self, session: RunSession, todo: list[tuple[int, Clip]]) -> Iterator[ClipResult]:
        rt = self.runtime = self.runtime or load_run_deps(self.settings, track=session.track)
        session.store.add_secrets(rt.secrets)  # scrub the API key from anything stored
        options = session.options

        def run(checkpointer: Any) -> Iterator[ClipResult]:
            clips = _ClipRunner(rt, session.run_id, options, checkpointer)
            size = options.encoder_batch or default_encoder_batch(self.settings, rt.tools)
            queue = clips.encoded_first(todo, size) if size > 1 else iter(todo)
            return _as_completed(clips.run, queue, options.concurrency)

        return checkpointed_results(session, run)


def checkpointed_results(
    session: RunSession, run: Callable[[Any], Iterator[ClipResult]]
) -> Iterator[ClipResult]:
    """``run(checkpointer)``'s results, on the run's checkpointer (None without ``checkpoint``).

    Each answered clip's thread is pruned once the session committed it (the ``yield`` returns
    after the commit); a failed clip's thread stays, where ``--resume`` starts. The checkpointer
    is closed at the end, which commits what it still has queued.
    """
    options = session.options
    checkpointer = (
        open_checkpointer(session.run_dir / CHECKPOINT_FILE) if options.checkpoint else None
    )
    pruned = _Pruner(checkpointer)
    try:
        for result in run(checkpointer):
            yield result
            if result.status != "failed":
                pruned.add(thread_id(session.run_id, result.clip_id))
    finally:
        pruned.flush()
        if checkpointer is not None:
            checkpointer.close()


class _Pruner:
    """Deletes committed clips' checkpoint threads, many per transaction (keeps the DB small).

    A kill before a flush leaves at most ``every`` threads of answered clips behind; ``--resume``
    skips those clips, so their threads are never read.
    """

    def __init__(self, checkpointer: Any, every: int = 64) -> None:
        self.checkpointer, self.every = checkpointer, every
        self.pending: list[tuple[str]] = []

    def add(self, thread: str) -> None:
        if self.checkpointer is None:
            return
        self.pending.append((thread,))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.checkpointer is None or not self.pending:
            return
        with self.checkpointer.cursor() as cursor:  # SqliteSaver.delete_thread, for many
            cursor.executemany("DELETE FROM checkpoints WHERE thread_id = ?", self.pending)
            cursor.executemany("DELETE FROM writes WHERE thread_id = ?", self.pending)
        self.pending = []


class _ClipRunner:
    """One compiled graph and what it needs per clip (decoded media, buffered trace rows)."""

    def __init__(self, rt: RunDeps, run_id: str, options: BatchOptions, checkpointer: Any) -> None:
        from meragent.graphs.builder import build_graph

        self.run_id, self.checkpointer, self.tools = run_id, checkpointer, rt.tools
        self.concurrency = options.concurrency
        self.resumable = checkpointer is not None and _has_threads(checkpointer)
        # Room for the clips in flight plus one encoder group decoded ahead of them.
        ahead = options.encoder_batch or 0
        self.media = MediaCache(rt.decoder, max_items=4 * options.concurrency + 2 * ahead + 4)
        self.steps = StepBuffer()  # a clip's node rows are committed with its result
        self.graph = build_graph(options.run_track, checkpointer=checkpointer)
        self.context = rt.context(trace=self.steps, media=self.media)

    def encoded_first(self, todo: list[tuple[int, Clip]], size: int) -> Iterator[tuple[int, Clip]]:
        """``todo`` in groups of ``size``, each group's encoders run batched before its graphs.

        The vectors land in the feature cache, where the graph's tool nodes find them; what the
        batch could not encode (a clip that fails to decode, an encoder error) the tool node does
        at batch 1 and reports as it always did.
        """
        from meragent.tools.encoding import encode_clips

        for start in range(0, len(todo), size):
            group = todo[start : start + size]
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                pairs = list(pool.map(self._decoded, [clip for _, clip in group]))
            encode_clips(self.tools, pairs, size)
            yield from group

    def _decoded(self, clip: Clip) -> tuple[Clip, Any]:
        try:
            return clip, self.media.get(clip)
        except Exception:  # the graph's load_media decodes again and records the error
            return clip, None

    def run(self, seq: int, clip: Clip) -> ClipResult:
        clock = time.perf_counter()
        checkpointed = self.resumable  # else no thread can exist: skip looking one up
        try:
            output = invoke_clip(
                self.graph, self.run_id, clip, checkpointed=checkpointed, context=self.context
            )
        except Exception as exc:  # per-clip isolation: record and move on
            latency = time.perf_counter() - clock
            return ClipResult.failed(seq, clip, exc, latency, steps=self.steps.pop(clip.id))
        finally:
            self.media.drop(clip.id)
        latency = time.perf_counter() - clock
        return ClipResult.answered(seq, clip.id, output, latency, steps=self.steps.pop(clip.id))


def _has_threads(checkpointer: Any) -> bool:
    """Whether a killed run left any checkpoint (we hold the run's lock: none appear later)."""
    row = checkpointer.conn.execute("SELECT 1 FROM checkpoints LIMIT 1").fetchone()
    return row is not None


def default_encoder_batch(settings: Settings, tools: Any) -> int:
    """Clips per encoder call when ``--encoder-batch`` is not given: 8 on a GPU, 1 on CPU.

    A toolset with no batchable encoder (prosody, FER, test doubles) gets 1 without asking the
    device (which imports torch).
    """
    from meragent.tools.encoding import batchable_tools

    if not batchable_tools(tools):
        return 1
    return 8 if settings.resolved_device().startswith("cuda") else 1


def _as_completed(
    run: Any, todo: Iterable[tuple[int, Clip]], concurrency: int
) -> Iterator[ClipResult]:
    """``run(seq, clip)`` on a thread pool, at most ``2 × concurrency`` clips in flight."""
    pool = ThreadPoolExecutor(max_workers=concurrency)
    pending: set[Future[ClipResult]] = set()
    queue = iter(todo)
    try:
        while True:
            for seq, clip in queue:
                pending.add(pool.submit(run, seq, clip))
                if len(pending) >= 2 * concurrency:
                    break
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def run_batch(
    settings: Settings,
    source: Path | str | None,
    run_name: str,
    options: BatchOptions | None = None,
    *,
    runtime: RunDeps | None = None,
) -> BatchSummary:
    """Run every clip of ``source`` through the graph into ``runs_dir/run_name``.

    ``source=None`` (with ``--resume``) continues on the source the run was started with.
    """
    options = options or BatchOptions()
    if options.processes > 1 and runtime is not None:
        raise ConfigError("--processes builds each worker's runtime from the profile: no runtime")
    with RunSession(settings, source, run_name, options) as session:
        if session.options.processes > 1:
            from meragent.graphs.process_executor import ProcessExecutor

            return session.run(ProcessExecutor(settings))
        return session.run(ThreadExecutor(settings, runtime))
