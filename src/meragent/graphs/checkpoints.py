"""The batch checkpointer: LangGraph's ``SqliteSaver`` with its writes group-committed.

``SqliteSaver`` commits every ``put`` and ``put_writes`` on its own, under one lock: about 16
transactions per clip, taken by the per-invoke pool threads of every clip in flight, which then
queue on that lock. :class:`GroupCommitSaver` keeps ``SqliteSaver``'s own row building and
serialization (it subclasses it and only changes where the statements go): the statements of
each write are queued in call order and one writer thread commits everything queued, many writes
per transaction, every ``max_delay_s`` at most.

What a kill leaves on disk is therefore a prefix of the writes, in order: exactly what a plain
``SqliteSaver`` killed up to ``max_delay_s`` earlier would have left, so a resumed clip restarts
at a super-step it had finished (at worst one it finishes again). Reads stay exact in the
process: a read of a thread with queued writes waits until they are committed.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple
from langgraph.checkpoint.sqlite import SqliteSaver

#: One queued statement: (sql, parameters, executemany?).
Statement = tuple[str, Any, bool]

#: Writes queued past this many statements make the writers wait (memory stays bounded when the
#: disk is slower than the clips).
MAX_QUEUED = 4096


class CheckpointWriteError(RuntimeError):
    """The writer thread could not commit checkpoints (disk full, database locked for long)."""


class _Recorder:
    """Stands in for a cursor while ``SqliteSaver`` writes: keeps its statements for the writer."""

    def __init__(self) -> None:
        self.statements: list[Statement] = []

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> None:
        self.statements.append((sql, tuple(parameters), False))

    def executemany(self, sql: str, rows: Any) -> None:
        self.statements.append((sql, list(rows), True))


def _threads_of(statement: Statement) -> list[str]:
    """The checkpoint threads a statement writes (every write's first parameter is the thread)."""
    _, parameters, many = statement
    if many:
        return [str(row[0]) for row in parameters]
    return [str(parameters[0])] if parameters else []


class GroupCommitSaver(SqliteSaver):
    """A ``SqliteSaver`` whose writes one background thread commits in groups."""

    def __init__(self, conn: sqlite3.Connection, *, serde: Any, max_delay_s: float = 0.02) -> None:
        super().__init__(conn, serde=serde)
        self.max_delay_s = max_delay_s
        self._queue: list[Statement] = []
        self._pending: Counter[str] = Counter()  # thread -> statements queued, not committed
        self._changed = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._waiting = 0  # flush() calls waiting: the writer commits without its delay
        self._writer = threading.Thread(target=self._write_loop, name="checkpoint-writer")
        self._writer.daemon = True  # close() drains it; a crash leaves a prefix on disk
        self._writer.start()

    # ------------------------------------------------------------------ writes

    @contextmanager
    def cursor(self, transaction: bool = True) -> Iterator[Any]:
        """Reads get a real cursor; writes a recorder whose statements are queued on exit."""
        if not transaction:
            with super().cursor(transaction=False) as cur:
                yield cur
            return
        recorder = _Recorder()
        yield recorder
        self._enqueue(recorder.statements)

    def _enqueue(self, statements: list[Statement]) -> None:
        with self._changed:
            self._raise_if_failed()
            while len(self._queue) >= MAX_QUEUED and self._error is None:
                self._changed.wait()
            self._raise_if_failed()
            idle = not self._queue
            self._queue.extend(statements)
            for statement in statements:
                self._pending.update(_threads_of(statement))
            if idle:  # only an idle writer waits for writes; waking it for each costs a switch
                self._changed.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if not self._queue:
                    return  # closed and drained
                # Let more writes join this group, unless a reader or close() waits for it.
                self._changed.wait_for(lambda: self._closed or self._waiting, self.max_delay_s)
                batch, self._queue = self._queue, []
                self._changed.notify_all()  # room in the queue again
            error = self._commit(batch)
            with self._changed:
                for statement in batch:
                    self._pending.subtract(_threads_of(statement))
                self._pending += Counter()  # drop the zero counts
                if error is not None and self._error is None:
                    self._error = error
                self._changed.notify_all()

    def _commit(self, batch: list[Statement]) -> BaseException | None:
        """Run ``batch`` in one transaction; the error, if it could not be committed."""
        try:
            with self.lock:
                self.setup()
                cur = self.conn.cursor()
                try:
                    for sql, parameters, many in batch:
                        (cur.executemany if many else cur.execute)(sql, parameters)
                    self.conn.commit()
                except BaseException:
                    self.conn.rollback()
                    raise
                finally:
                    cur.close()
        except BaseException as exc:  # handed to the clips: they fail loudly, not silently
            return exc
        return None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise CheckpointWriteError(f"checkpoints could not be saved: {self._error}")

    # ------------------------------------------------------------------ reads and closing

    def flush(self, thread_id: str | None = None) -> None:
        """Wait until what is queued (for ``thread_id``, or everything) is committed."""
        with self._changed:
            self._waiting += 1
            self._changed.notify_all()
            try:
                while self._error is None and self._queued(thread_id):
                    self._changed.wait()
            finally:
                self._waiting -= 1
            self._raise_if_failed()

    def _queued(self, thread_id: str | None) -> bool:
        if thread_id is not None:
            return self._pending[thread_id] > 0
        return bool(self._queue) or any(self._pending.values())

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        self.flush(str(config["configurable"]["thread_id"]))
        return super().get_tuple(config)

    def list(self, config: RunnableConfig | None, **kwargs: Any) -> Iterator[CheckpointTuple]:
        thread = (config or {}).get("configurable", {}).get("thread_id")
        self.flush(str(thread) if thread is not None else None)
        return super().list(config, **kwargs)

    def get_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]) -> Any:
        self.flush(str(config["configurable"]["thread_id"]))
        return super().get_delta_channel_history(config=config, channels=channels)

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the connection."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._writer.join()
        try:
            self._raise_if_failed()
        finally:
            self.conn.close()


def open_checkpointer(path: Path, *, max_delay_s: float = 0.02) -> GroupCommitSaver:
    """The batch checkpointer on its own WAL connection, able to revive our state types."""
    from meragent.graphs.builder import checkpoint_serializer

    conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    saver = GroupCommitSaver(conn, serde=checkpoint_serializer(), max_delay_s=max_delay_s)
    saver.setup()
    return saver
