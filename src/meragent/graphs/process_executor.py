"""The in-process executor on several worker processes (``--processes N``).

The clip graph is Python: LangGraph's super-steps, checkpoint serialization, our nodes. With the
GIL a process runs it on one core, so a batch whose clips cost little else (cached features,
the six-class tracks over MERTools features, a fast LLM server) is bound by one core however
many clips are in flight. Here ``N`` spawned workers each run the same :class:`_ClipRunner` as
the thread executor, ``ceil(concurrency / N)`` clips at a time, on the same ``checkpoints.sqlite``
(SQLite serializes their group commits); this process keeps the run session (the trace store,
counts, exports) and prunes the threads of committed clips.

Work goes out in chunks of clips (a worker's concurrency × ``CHUNK_ROUNDS`` each, at most two chunks
per worker in flight) and comes back as the chunk's ``ClipResult``s. A worker that dies (killed,
out of memory) breaks the pool: the clips of the chunks in flight fail, with the reason, a fresh
pool runs the rest, and ``--resume`` retries the failed ones. Each worker builds its own runtime
from the settings and profile (models included: N processes hold N copies) and exits when this
process does.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from meragent.config import Settings
from meragent.errors import MeragentError
from meragent.graphs.run_folder import CHECKPOINT_FILE
from meragent.graphs.session import BatchOptions, ClipResult, RunSession
from meragent.schema import Clip

#: Rounds of a worker's concurrency per chunk: bigger chunks cost fewer round trips, smaller
#: ones lose less to a chunk's slowest clip and to a dying worker.
CHUNK_ROUNDS = 4
WORKER_DIED = "WorkerDied"
#: Pools in a row that may break before finishing a chunk (a clip that kills its worker fails
#: one pool; a worker that cannot start fails them all) before the run stops with an error.
MAX_BARREN_POOLS = 3


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process builds its runner from (pickled once, at the worker's start)."""

    settings: Settings
    run_id: str
    run_dir: str
    options: BatchOptions
    concurrency: int
    encoder_batch: int | None


class _Worker:
    """A worker process's runtime, checkpointer and clip runner (built once, by the pool)."""

    def __init__(self, spec: WorkerSpec) -> None:
        from pathlib import Path

        from meragent.graphs.batch import _ClipRunner, default_encoder_batch
        from meragent.graphs.checkpoints import open_checkpointer
        from meragent.graphs.runtime import load_run_deps

        self.options = spec.options.model_copy(update={"concurrency": spec.concurrency})
        self.deps = load_run_deps(spec.settings, track=self.options.run_track)
        self.checkpointer = (
            open_checkpointer(Path(spec.run_dir) / CHECKPOINT_FILE)
            if self.options.checkpoint
            else None
        )
        self.runner = _ClipRunner(self.deps, spec.run_id, self.options, self.checkpointer)
        self.encoder_batch = spec.encoder_batch or default_encoder_batch(
            spec.settings, self.deps.tools
        )

    def run(self, chunk: list[tuple[int, Clip]]) -> list[ClipResult]:
        from meragent.graphs.batch import _as_completed

        runner = self.runner
        size = self.encoder_batch
        queue = runner.encoded_first(chunk, size) if size > 1 else iter(chunk)
        return list(_as_completed(runner.run, queue, self.options.concurrency))

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()  # commit what is still queued


_WORKER: _Worker | None = None


def _start_worker(spec: WorkerSpec, parent: int) -> None:
    """Pool initializer: build the worker, and make it exit when the parent is gone."""
    global _WORKER
    from multiprocessing import util

    _WORKER = _Worker(spec)
    util.Finalize(_WORKER, _WORKER.close, exitpriority=10)
    # An orphan would go on writing checkpoints under a resumed run: it exits instead.
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()


def _exit_without(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _run_chunk(chunk: list[tuple[int, Clip]]) -> list[ClipResult]:
    assert _WORKER is not None, "the pool's initializer builds the worker"
    return _WORKER.run(chunk)


class ProcessExecutor:
    """Clips on ``options.processes`` worker processes; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._grouper: Any = None

    def usage(self) -> dict[str, Any]:
        return {}  # every result carries its own usage; the session adds them up

    def grouper(self, session: RunSession) -> Any:
        if self._grouper is None:
            return self._driver_runtime(session).grouper
        return self._grouper

    def _driver_runtime(self, session: RunSession) -> Any:
        """The runtime the workers will build, built here once (models load on first use): a
        bad profile fails now, as one line, not as every worker dying at its start."""
        from meragent.graphs.runtime import load_run_deps

        return load_run_deps(self.settings, track=session.track)

    def results(self, session: RunSession, todo: list[tuple[int, Clip]]) -> Iterator[ClipResult]:
        from meragent.graphs.batch import checkpointed_results

        runtime = self._driver_runtime(session)
        self._grouper = runtime.grouper
        session.store.add_secrets(runtime.secrets)  # scrub the API key from anything stored
        options = session.options
        spec = WorkerSpec(
            settings=self.settings,
            run_id=session.run_id,
            run_dir=str(session.run_dir),
            options=options,
            # Every worker has a clip in flight, whatever --concurrency says.
            concurrency=math.ceil(options.concurrency / options.processes),
            encoder_batch=options.encoder_batch,
        )
        # The driver's checkpointer only prunes the threads of committed clips.
        return checkpointed_results(session, lambda _: _pooled(spec, options.processes, todo))


def chunks(todo: list[tuple[int, Clip]], size: int) -> Iterator[list[tuple[int, Clip]]]:
    """``todo`` in consecutive pieces of ``size`` clips."""
    for start in range(0, len(todo), size):
        yield todo[start : start + size]


def _pooled(spec: WorkerSpec, processes: int, todo: list[tuple[int, Clip]]) -> Iterator[ClipResult]:
    """Each clip's result; a pool that breaks fails its chunks in flight and is replaced."""
    queue = chunks(todo, spec.concurrency * CHUNK_ROUNDS)
    barren = 0  # pools in a row that broke before finishing any chunk
    while True:
        pool = _pool(spec, processes)
        outcome = _Outcome()
        try:
            yield from _drain(pool, queue, 2 * processes, outcome)
        finally:
            pool.shutdown(wait=not outcome.broken, cancel_futures=True)
        if not outcome.broken:
            return
        barren = 0 if outcome.chunks_done else barren + 1
        if barren >= MAX_BARREN_POOLS:
            raise MeragentError(
                f"the worker processes died {barren} times before finishing any clip (see the "
                "lines above); fix the cause, then run again with --resume"
            )


@dataclass
class _Outcome:
    broken: bool = False
    chunks_done: int = 0


def _drain(
    pool: ProcessPoolExecutor,
    queue: Iterator[list[tuple[int, Clip]]],
    limit: int,
    outcome: _Outcome,
) -> Iterator[ClipResult]:
    """Results of ``queue``'s chunks on ``pool``, until it is empty or the pool breaks."""
    pending: dict[Future[list[ClipResult]], list[tuple[int, Clip]]] = {}
    yield from _refill(pending, pool, queue, limit, outcome)
    while pending:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            chunk = pending.pop(future)
            try:
                results = future.result()
            except BrokenProcessPool:
                outcome.broken = True
                results = list(_died(chunk))
            else:
                outcome.chunks_done += 1
            yield from results
        if outcome.broken:
            for chunk in pending.values():
                yield from _died(chunk)
            return
        yield from _refill(pending, pool, queue, limit, outcome)


def _refill(
    pending: dict[Future[list[ClipResult]], list[tuple[int, Clip]]],
    pool: ProcessPoolExecutor,
    queue: Iterator[list[tuple[int, Clip]]],
    limit: int,
    outcome: _Outcome,
) -> Iterator[ClipResult]:
    """Submit chunks until ``limit`` are in flight (a broken pool fails the chunk it refused)."""
    while len(pending) < limit and not outcome.broken:
        chunk = next(queue, None)
        if chunk is None:
            return
        try:
            pending[pool.submit(_run_chunk, chunk)] = chunk
        except BrokenProcessPool:
            outcome.broken = True
            yield from _died(chunk)


def _died(chunk: list[tuple[int, Clip]]) -> Iterator[ClipResult]:
    reason = "its worker process died (killed or out of memory); --resume runs it again"
    for seq, clip in chunk:
        yield ClipResult.failure(seq, clip.id, clip, "pipeline", reason, WORKER_DIED, 0.0)


def _pool(spec: WorkerSpec, processes: int) -> ProcessPoolExecutor:
    # spawn, not fork: this process has threads (and maybe torch's), which fork does not copy.
    return ProcessPoolExecutor(
        max_workers=processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(spec, os.getpid()),
    )
