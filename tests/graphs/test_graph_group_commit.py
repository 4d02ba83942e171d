"""The batch checkpointer: SqliteSaver's rows, committed in groups, in call order, loudly."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from meragent.graphs.checkpoints import CheckpointWriteError, GroupCommitSaver, open_checkpointer


def _config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}


def _put(saver: GroupCommitSaver, thread: str) -> dict[str, Any]:
    return dict(saver.put(_config(thread), empty_checkpoint(), {"step": 1}, {}))


def _rows(path: Path, table: str = "checkpoints") -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_a_write_is_read_back_at_once_and_is_on_disk_after_close(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    saver = open_checkpointer(path, max_delay_s=10.0)  # nothing would commit on its own
    saved = _put(saver, "t1")
    found = saver.get_tuple(_config("t1"))  # a read of a thread with queued writes waits
    assert found is not None
    assert found.config["configurable"]["checkpoint_id"] == saved["configurable"]["checkpoint_id"]
    saver.close()
    again = open_checkpointer(path)
    assert again.get_tuple(_config("t1")) is not None
    again.close()


def test_many_writes_share_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    saver = open_checkpointer(path, max_delay_s=0.5)
    commits: list[str] = []
    saver.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    for i in range(50):
        _put(saver, f"t{i}")
        saver.put_writes(_config(f"t{i}") | {"configurable": {
            "thread_id": f"t{i}", "checkpoint_ns": "", "checkpoint_id": "x"}},
            [("labels", ["happy"])], task_id="task")  # fmt: skip
    saver.flush()
    assert _rows(path) == 50
    assert _rows(path, "writes") == 50
    assert 1 <= len(commits) <= 3  # SqliteSaver alone: 100
    saver.close()


def test_writes_commit_in_the_order_they_were_made(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    saver = open_checkpointer(path, max_delay_s=10.0)
    _put(saver, "gone")
    saver.delete_thread("gone")
    saver.delete_thread("kept")
    _put(saver, "kept")
    saver.flush()
    with sqlite3.connect(path) as conn:
        threads = [row[0] for row in conn.execute("SELECT thread_id FROM checkpoints")]
    assert threads == ["kept"]
    saver.close()


def test_a_write_that_cannot_be_committed_fails_the_clips_loudly(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    saver = open_checkpointer(path, max_delay_s=0.0)
    with sqlite3.connect(path) as other:
        other.execute("DROP TABLE checkpoints")
    _put(saver, "t1")
    with pytest.raises(CheckpointWriteError, match="checkpoints could not be saved"):
        saver.flush()
    with pytest.raises(CheckpointWriteError):
        _put(saver, "t2")  # no later write is accepted as if it were saved
    with pytest.raises(CheckpointWriteError):
        saver.close()
