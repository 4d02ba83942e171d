"""SQLite trace store: tables ``run``, ``clip_result`` and ``step`` (one row per node execution).

The store is also the batch runner's commit log: a clip counts as done once its
``clip_result`` row says ``ok`` or ``degraded`` (answered from the modalities that remained), which
is written in one transaction, so a killed process never
leaves a clip half-recorded. WAL mode and a busy timeout let ``meragent trace`` read while a
batch writes. Secrets never enter it: the run's config is stored masked and every string is
scrubbed of the configured secret values before it is written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic_core import to_json

from meragent.errors import DataError
from meragent.schema import TraceStep
from meragent.secrets import scrub_optional

TRACE_FILE = "trace.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    run_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    status TEXT NOT NULL,
    track TEXT,
    profile TEXT,
    source TEXT,
    config_json TEXT,
    usage_json TEXT,
    n_clips INTEGER DEFAULT 0
);
CREATE TABLE IF NOT EXISTS clip_result (
    run_id TEXT NOT NULL,
    clip_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    discrete TEXT,
    openset_json TEXT,
    description TEXT,
    stage TEXT,
    error TEXT,
    latency_s REAL,
    result_json TEXT,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (run_id, clip_id)
);
CREATE TABLE IF NOT EXISTS step (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    clip_id TEXT NOT NULL,
    node TEXT NOT NULL,
    model_id TEXT,
    inputs_json TEXT,
    prompt_json TEXT,
    raw_output TEXT,
    parsed_json TEXT,
    latency_s REAL,
    error TEXT,
    retries INTEGER DEFAULT 0,
    started_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS step_by_clip ON step (run_id, clip_id, id);
"""
_INSERT_STEP = (
    "INSERT INTO step (run_id, clip_id, node, model_id, inputs_json, prompt_json,"
    " raw_output, parsed_json, latency_s, error, retries, started_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_RESULT = (
    "INSERT OR REPLACE INTO clip_result (run_id, clip_id, seq, status, discrete,"
    " openset_json, description, stage, error, latency_s, result_json, finished_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Clip statuses that carry an answer: written to the submission files, skipped by ``--resume``.
ANSWERED = ("ok", "degraded")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def dumps(value: Any) -> str | None:
    """JSON text for a column (None stays NULL); unknown objects become their str().

    One pass of pydantic-core's encoder over models, dicts and lists alike (a hand-written walk
    plus ``json.dumps`` cost a third of a clip's commit).
    """
    if value is None:
        return None
    return to_json(value, fallback=str).decode("utf-8")


_Model = TypeVar("_Model", bound=BaseModel)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class StoredStep(TraceStep):
    """A step row read back, with its row id and the node's (summarised) inputs."""

    id: int
    inputs: Any = None


class ClipRecord(BaseModel):
    """A ``clip_result`` row read back."""

    run_id: str
    clip_id: str
    seq: int
    status: str
    discrete: str | None = None
    openset: list[str] | None = None
    description: str | None = None
    stage: str | None = None
    error: str | None = None
    latency_s: float | None = None
    result: dict[str, Any] | None = None
    finished_at: str


class RunRecord(BaseModel):
    """A ``run`` row read back, with clip counts."""

    run_id: str
    created_at: str
    updated_at: str
    status: str
    track: str | None = None
    profile: str | None = None
    source: str | None = None
    config: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    n_clips: int = 0
    n_ok: int = 0
    n_degraded: int = 0
    n_failed: int = 0

    @property
    def n_results(self) -> int:
        """Clips with a recorded outcome, whatever it was."""
        return self.n_ok + self.n_degraded + self.n_failed


class TraceStore:
    """Thread-safe access to one run folder's ``trace.sqlite``."""

    def __init__(self, path: Path, *, secrets: Iterable[str] = (), readonly: bool = False):
        self.path = Path(path)
        self._secrets = [s for s in secrets if s]
        self._lock = threading.RLock()
        if readonly:
            if not self.path.is_file():
                raise DataError(f"no trace store at {self.path}")
            uri = f"file:{self.path}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.row_factory = sqlite3.Row

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._conn:
            yield self._conn

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Also redact these values from everything written from now on."""
        self._secrets.extend(s for s in secrets if s)

    def scrub(self, text: str) -> str:
        """``text`` with every configured secret redacted (for lines shown to the user)."""
        return self._scrub(text) or ""

    def _scrub(self, text: str | None) -> str | None:
        # The one scrubber the terminal and logs use too, plus this store's own values.
        return scrub_optional(text, self._secrets)

    def _json(self, value: Any) -> str | None:
        return self._scrub(dumps(value))

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        run_id: str,
        *,
        track: str,
        profile: str | None = None,
        source: str | None = None,
        config: dict[str, Any] | None = None,
        n_clips: int = 0,
    ) -> None:
        """Create the run row, or mark an existing one running again (resume)."""
        now = _now()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO run (run_id, created_at, updated_at, status, track, profile, source,"
                " config_json, n_clips) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)"
                " ON CONFLICT(run_id) DO UPDATE SET updated_at=excluded.updated_at,"
                " status='running', track=excluded.track, profile=excluded.profile,"
                " source=excluded.source,"
                " config_json=excluded.config_json, n_clips=excluded.n_clips",
                (run_id, now, now, track, profile, source, self._json(config), n_clips),
            )

    def finish_run(self, run_id: str, *, status: str, usage: dict[str, Any] | None) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE run SET status=?, updated_at=?, usage_json=? WHERE run_id=?",
                (status, _now(), self._json(usage), run_id),
            )

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM run WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                return None
            counts = dict(
                self._conn.execute(
                    "SELECT status, COUNT(*) FROM clip_result WHERE run_id=? GROUP BY status",
                    (run_id,),
                ).fetchall()
            )
        return _from_row(
            RunRecord,
            row,
            n_clips=row["n_clips"] or 0,
            n_ok=counts.get("ok", 0),
            n_degraded=counts.get("degraded", 0),
            n_failed=counts.get("failed", 0),
        )

    def runs(self) -> list[RunRecord]:
        with self._lock:
            ids = [r[0] for r in self._conn.execute("SELECT run_id FROM run ORDER BY created_at")]
        return [run for run in (self.get_run(i) for i in ids) if run is not None]

    # ------------------------------------------------------------------ steps

    def add_step(self, step: TraceStep, *, inputs: Any = None) -> None:
        """Append one node execution."""
        with self._tx() as conn:
            conn.execute(_INSERT_STEP, self._step_row(step, inputs))

    def _step_row(self, step: TraceStep, inputs: Any) -> tuple[Any, ...]:
        return (
            step.run_id,
            step.clip_id,
            step.node,
            step.model_id,
            self._json(inputs),
            self._json(step.prompt),
            self._scrub(step.raw_output),
            self._json(step.parsed_output),
            step.latency_s,
            self._scrub(step.error),
            step.retries,
            step.started_at.isoformat(timespec="milliseconds"),
        )

    def steps(self, run_id: str, clip_id: str) -> list[StoredStep]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM step WHERE run_id=? AND clip_id=? ORDER BY id", (run_id, clip_id)
            ).fetchall()
        return [
            _from_row(
                StoredStep,
                row,
                parsed_output=loads(row["parsed_json"]),
                latency_s=row["latency_s"] or 0.0,
                retries=row["retries"] or 0,
                started_at=datetime.fromisoformat(row["started_at"]),
            )
            for row in rows
        ]

    def step_count(self, run_id: str) -> int:
        """How many node executions the run recorded."""
        query = "SELECT COUNT(*) FROM step WHERE run_id=?"
        with self._lock:
            return int(self._conn.execute(query, (run_id,)).fetchone()[0])

    # ------------------------------------------------------------------ clip results

    def record_result(
        self,
        run_id: str,
        clip_id: str,
        *,
        seq: int,
        status: str,
        discrete: str | None = None,
        openset: list[str] | None = None,
        description: str | None = None,
        stage: str | None = None,
        error: str | None = None,
        latency_s: float | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Insert or replace the clip's outcome in one transaction (the clip's commit point)."""
        row = self._result_row(
            run_id, clip_id, seq=seq, status=status, discrete=discrete, openset=openset,
            description=description, stage=stage, error=error, latency_s=latency_s, result=result,
        )  # fmt: skip
        with self._tx() as conn:
            conn.execute(_INSERT_RESULT, row)

    def _result_row(
        self,
        run_id: str,
        clip_id: str,
        *,
        seq: int,
        status: str,
        discrete: str | None,
        openset: list[str] | None,
        description: str | None,
        stage: str | None,
        error: str | None,
        latency_s: float | None,
        result: dict[str, Any] | None,
    ) -> tuple[Any, ...]:
        return (
            run_id,
            clip_id,
            seq,
            status,
            discrete,
            self._json(openset),
            self._scrub(description),
            stage,
            self._scrub(error),
            latency_s,
            self._json(result),
            _now(),
        )

    def commit_clip(self, run_id: str, result: Any) -> None:
        """Store a ``session.ClipResult``: its trace steps and its outcome in one transaction."""
        steps = [self._step_row(step, inputs) for step, inputs in result.steps]
        row = self._result_row(
            run_id,
            result.clip_id,
            seq=result.seq,
            status=result.status,
            discrete=result.discrete,
            openset=result.openset,
            description=result.description,
            stage=result.stage,
            error=result.error,
            latency_s=result.latency_s,
            result=result.result,
        )
        with self._tx() as conn:
            conn.executemany(_INSERT_STEP, steps)
            conn.execute(_INSERT_RESULT, row)

    def finished_clips(self, run_id: str) -> set[str]:
        """Clips with an answer (``ok`` or ``degraded``); failed ones are retried on resume.

        A degraded clip is not retried: its media are as broken as before and it has its answer.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT clip_id FROM clip_result WHERE run_id=? AND status IN (?, ?)",
                (run_id, *ANSWERED),
            ).fetchall()
        return {row[0] for row in rows}

    def results(
        self, run_id: str, *, status: str | tuple[str, ...] | None = None
    ) -> list[ClipRecord]:
        """The run's clip results in manifest order, optionally of one status (or several)."""
        query = "SELECT * FROM clip_result WHERE run_id=?"
        params: tuple[Any, ...] = (run_id,)
        if status is not None:
            wanted = (status,) if isinstance(status, str) else tuple(status)
            query += f" AND status IN ({', '.join('?' * len(wanted))})"
            params += wanted
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY seq, clip_id", params).fetchall()
        return [_record(row) for row in rows]

    def last_result_row(self, run_id: str) -> int:
        """The row id of the run's latest committed result (0 when none)."""
        query = "SELECT MAX(rowid) FROM clip_result WHERE run_id=?"
        with self._lock:
            return int(self._conn.execute(query, (run_id,)).fetchone()[0] or 0)

    def results_after(self, run_id: str, after: int) -> tuple[list[ClipRecord], int]:
        """Results written (or rewritten) since row ``after``, in commit order, and the last row.

        ``INSERT OR REPLACE`` gives a rewritten clip a new row id, so this is exactly what is new.
        """
        query = "SELECT rowid, * FROM clip_result WHERE run_id=? AND rowid>? ORDER BY rowid"
        with self._lock:
            rows = self._conn.execute(query, (run_id, after)).fetchall()
        last = rows[-1]["rowid"] if rows else after
        return [_record(row) for row in rows], int(last)

    def clip_ids(self, run_id: str) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT clip_id FROM clip_result WHERE run_id=? ORDER BY seq, clip_id", (run_id,)
            ).fetchall()
        return [row[0] for row in rows]


def _record(row: sqlite3.Row) -> ClipRecord:
    return _from_row(ClipRecord, row)


def _from_row(model: type[_Model], row: sqlite3.Row, **values: Any) -> _Model:
    """``model`` from a row: each field not in ``values`` from its column (``<field>_json``
    decoded)."""
    columns = row.keys()
    for name in model.model_fields:
        if name in values:
            continue
        if name in columns:
            values[name] = row[name]
        elif f"{name}_json" in columns:
            values[name] = loads(row[f"{name}_json"])
    return model(**values)


class StepBuffer:
    """Holds each clip's trace steps until the clip is committed (``TraceStore.add_step``'s shape).

    The in-process executor hands it to the graph instead of the store, so a clip's node rows
    and its result reach SQLite in one transaction.
    """

    def __init__(self) -> None:
        self._steps: dict[str, list[tuple[TraceStep, Any]]] = {}
        self._lock = threading.Lock()

    def add_step(self, step: TraceStep, *, inputs: Any = None) -> None:
        with self._lock:
            self._steps.setdefault(step.clip_id, []).append((step, inputs))

    def pop(self, clip_id: str) -> tuple[tuple[TraceStep, Any], ...]:
        with self._lock:
            return tuple(self._steps.pop(clip_id, ()))


def trace_path(run_dir: Path) -> Path:
    """Where a run folder keeps its trace store."""
    return Path(run_dir) / TRACE_FILE


def open_trace(run_dir: Path, *, secrets: Iterable[str] = ()) -> TraceStore:
    """Open (creating) the trace store of a run folder for writing."""
    return TraceStore(trace_path(run_dir), secrets=secrets)


def read_trace(run_dir: Path) -> TraceStore:
    """Open an existing run's trace store read-only (DataError when there is none)."""
    return TraceStore(trace_path(run_dir), readonly=True)
