"""RunSession on its own: options checked once, the lock's pid, incremental exports, executors.

A scripted :class:`Executor` yields ``ClipResult``s, so these tests exercise the lifecycle alone
(no graph); the encoder-batch test runs the in-process executor on the doubles.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from graph_helpers import write_manifest
from meragent_fakes import fake_run_deps

from meragent.config import Settings, load_settings
from meragent.errors import ConfigError
from meragent.graphs.batch import BatchOptions, batch_alive, run_batch, run_lock
from meragent.graphs.outputs import PARTS_DIR
from meragent.graphs.run_folder import PID_FILE, RunLockedError
from meragent.graphs.session import ClipResult, RunSession
from meragent.graphs.trace import TraceStore
from meragent.schema import Clip


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    return load_settings()


def _names(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [row["name"] for row in csv.DictReader(handle)]


def _answer(seq: int, clip: Clip, usage: dict[str, Any] | None = None) -> ClipResult:
    output = {"clip": clip, "prediction": {"discrete": "sad", "openset": ["sad"]}}
    return ClipResult.answered(seq, clip.id, output, 0.01, usage=usage or {})


class ScriptedExecutor:
    """Answers every clip; ``during(session, n)`` runs after the n-th commit (n from 1)."""

    def __init__(self, during: Any = None, fail: tuple[str, ...] = ()) -> None:
        self.during, self.fail = during, fail

    def results(self, session: RunSession, todo: list[tuple[int, Clip]]) -> Iterator[ClipResult]:
        for n, (seq, clip) in enumerate(todo, start=1):
            if clip.id in self.fail:
                yield ClipResult.failed(seq, clip, ConnectionError("server down"), 0.01)
            else:
                yield _answer(seq, clip, {"reasoning": {"calls": 1, "input_tokens": 10}})
            if self.during is not None:
                self.during(session, n)

    def usage(self) -> dict[str, Any]:
        return {}

    def grouper(self, session: RunSession) -> Any:
        return None


# --------------------------------------------------------------------------- options


def test_bad_options_are_config_errors_checked_on_construction() -> None:
    with pytest.raises(ConfigError, match="unknown track 'ovv'"):
        BatchOptions(track="ovv")
    with pytest.raises(ConfigError, match="--concurrency"):
        BatchOptions(concurrency=0)
    with pytest.raises(ConfigError, match="--encoder-batch"):
        BatchOptions(encoder_batch=0)
    with pytest.raises(ConfigError, match="--limit"):
        BatchOptions(limit=0)
    assert BatchOptions(track="semi").run_track == "semi"
    assert BatchOptions().run_track == "all"


# --------------------------------------------------------------------------- lock


def test_the_lock_records_its_holder_for_the_refusal_and_trace_list(settings: Settings) -> None:
    run_dir = settings.runs_dir / "held"
    with run_lock(run_dir, "held"):
        assert (run_dir / PID_FILE).read_text(encoding="utf-8") == str(os.getpid())
        assert batch_alive(run_dir)
        refused = pytest.raises(RunLockedError, match=rf"already running \(pid {os.getpid()}\)")
        with refused, run_lock(run_dir, "held"):
            pass
    assert not (run_dir / PID_FILE).exists() and not batch_alive(run_dir)
    with run_lock(run_dir, "held"):  # free again
        pass


# --------------------------------------------------------------------------- exports


def test_live_exports_add_only_what_is_new_and_the_close_writes_full_files(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", 6)
    read: list[int] = []
    real = TraceStore.results_after

    def spy(self: TraceStore, run_id: str, after: int) -> Any:
        records, last = real(self, run_id, after)
        read.append(len(records))
        return records, last

    monkeypatch.setattr(TraceStore, "results_after", spy)
    seen: list[list[str]] = []

    def during(session: RunSession, n: int) -> None:
        seen.append(_names(session.run_dir / "discrete.csv"))
        if n == 3:
            assert len(list((session.run_dir / PARTS_DIR).glob("*.parquet"))) == 3

    options = BatchOptions(progress=False, export_every_s=1e-9)  # export after every commit
    with RunSession(settings, manifest, "live", options) as session:
        summary = session.run(ScriptedExecutor(during, fail=("clip_004",)))
    assert read == [1] * 6  # every export read the one new row, never the whole run
    names = [f"clip_{i:03d}" for i in range(6)]
    answered = [n for n in names if n != "clip_004"]
    assert seen[2] == answered[:3] and seen[-1] == answered  # growing, no duplicates
    run_dir = settings.runs_dir / "live"
    assert not (run_dir / PARTS_DIR).exists()
    assert _names(run_dir / "discrete.csv") == answered
    assert _names(run_dir / "errors.csv") == ["clip_004"]
    assert pd.read_parquet(run_dir / "results.parquet")["name"].tolist() == names
    assert (summary.n_ok, summary.n_failed, summary.exit_code) == (5, 1, 1)
    assert summary.usage == {"reasoning": {"calls": 5, "input_tokens": 50}}


def test_a_resumed_run_appends_its_new_clips_to_the_files_it_left(
    tmp_path: Path, settings: Settings
) -> None:
    manifest = write_manifest(tmp_path / "data", 4)
    options = BatchOptions(progress=False, export_every_s=1e-9)
    with RunSession(settings, manifest, "again", options) as session:
        session.run(ScriptedExecutor(fail=("clip_001", "clip_002")))
    seen: list[list[str]] = []

    def during(session: RunSession, n: int) -> None:
        seen.append(_names(session.run_dir / "discrete.csv"))

    resumed = options.model_copy(update={"resume": True})
    with RunSession(settings, manifest, "again", resumed) as session:
        assert [clip.id for _, clip in session.todo] == ["clip_001", "clip_002"]
        session.run(ScriptedExecutor(during))
    assert seen == [["clip_000", "clip_003", "clip_001"], ["clip_000", "clip_003", "clip_001",
                                                           "clip_002"]]  # fmt: skip
    run_dir = settings.runs_dir / "again"
    assert _names(run_dir / "discrete.csv") == [f"clip_{i:03d}" for i in range(4)]  # reordered
    assert _names(run_dir / "errors.csv") == []


# --------------------------------------------------------------------------- encoder batching


def test_the_in_process_executor_encodes_clips_in_groups_before_their_graphs(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", 7)
    groups: list[tuple[list[str], int, bool]] = []

    def encode_clips(tools: Any, items: Any, batch_size: int) -> None:
        with TraceStore(settings.runs_dir / "enc" / "trace.sqlite") as store:
            done = store.clip_ids("enc")
        ids = [clip.id for clip, _ in items]
        groups.append((ids, batch_size, not set(ids) & set(done)))
        assert all(media is not None for _, media in items)  # decoded once, for the graph too

    monkeypatch.setattr("meragent.tools.encoding.encode_clips", encode_clips)
    options = BatchOptions(progress=False, encoder_batch=3, concurrency=2)
    summary = run_batch(settings, manifest, "enc", options, runtime=fake_run_deps())
    assert summary.n_ok == 7
    assert [ids for ids, _, _ in groups] == [
        ["clip_000", "clip_001", "clip_002"],
        ["clip_003", "clip_004", "clip_005"],
        ["clip_006"],
    ]
    assert all(size == 3 and before for _, size, before in groups)


def test_encoder_batch_1_skips_the_encoder_stage(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", 2)
    called: list[int] = []
    monkeypatch.setattr("meragent.tools.encoding.encode_clips", lambda *args: called.append(1))
    options = BatchOptions(progress=False, encoder_batch=1)
    assert run_batch(settings, manifest, "one", options, runtime=fake_run_deps()).n_ok == 2
    assert called == []
