"""``--processes N``: the clip graph on spawned worker processes, same files as threads.

The workers build their runtime from the profile (here one naming the test doubles), exactly as a
user's workers build real models; a worker that dies fails its chunks in flight, with a reason,
and ``--resume`` finishes them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from graph_helpers import write_manifest
from meragent_fakes import fake_run_deps, write_fake_profile
from typer.testing import CliRunner

from meragent.cli import app
from meragent.config import load_settings
from meragent.errors import ConfigError
from meragent.graphs.batch import BatchOptions, run_batch
from meragent.graphs.process_executor import WORKER_DIED

N_CLIPS = 24


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _reference(tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The thread executor's run folder on the same clips."""
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "reference"))
    monkeypatch.delenv("MERAGENT_PROFILE", raising=False)
    settings = load_settings()
    options = BatchOptions(progress=False, concurrency=4)
    run_batch(settings, manifest, "r", options, runtime=fake_run_deps())
    return settings.runs_dir / "r"


def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: Path) -> None:
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MERAGENT_PROFILE", str(profile))


def test_two_worker_processes_write_what_the_thread_executor_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", N_CLIPS)
    reference = _reference(tmp_path, manifest, monkeypatch)
    _home(tmp_path, monkeypatch, write_fake_profile(tmp_path / "fake.toml"))
    settings = load_settings()
    options = BatchOptions(progress=False, concurrency=4, processes=2)
    summary = run_batch(settings, manifest, "r", options)

    assert (summary.n_ok, summary.n_failed, summary.exit_code) == (N_CLIPS, 0, 0)
    run_dir = settings.runs_dir / "r"
    for name in ("discrete.csv", "openset.csv", "errors.csv"):
        assert _lines(run_dir / name) == _lines(reference / name), name
    frame = pd.read_parquet(run_dir / "results.parquet")
    assert frame["name"].tolist() == [f"clip_{i:03d}" for i in range(N_CLIPS)]
    with sqlite3.connect(run_dir / "trace.sqlite") as conn:  # each clip's node rows came back
        clips_traced = conn.execute("SELECT COUNT(DISTINCT clip_id) FROM step").fetchone()[0]
    assert clips_traced == N_CLIPS
    with sqlite3.connect(run_dir / "checkpoints.sqlite") as conn:  # answered threads pruned
        assert conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0


def test_a_dying_worker_fails_its_chunks_in_flight_and_resume_finishes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", N_CLIPS)
    reference = _reference(tmp_path, manifest, monkeypatch)
    profile = tmp_path / "dying.toml"
    profile.write_text(
        "[roles.run_deps]\n"
        'backend = "py:meragent_fakes:dying_run_deps_factory"\n'
        f'options = {{ die_on = "clip_010", marker = "{tmp_path / "died"}" }}\n\n'
        '[roles.grouper]\nbackend = "none"\n',
        encoding="utf-8",
    )
    _home(tmp_path, monkeypatch, profile)
    settings = load_settings()
    options = BatchOptions(progress=False, concurrency=2, processes=2)  # chunks of 4 clips
    summary = run_batch(settings, manifest, "r", options)

    assert (tmp_path / "died").exists()
    assert summary.exit_code == 1
    failed = {f.clip_id for f in summary.failures}
    assert "clip_010" in failed
    assert 1 <= len(failed) <= 4 * 4  # the chunks in flight (2 per worker), not the whole run
    assert summary.n_ok == N_CLIPS - len(failed)
    assert all(WORKER_DIED in row for row in _lines(settings.runs_dir / "r" / "errors.csv")[1:])

    again = run_batch(settings, None, "r", BatchOptions(progress=False, processes=2, resume=True))
    assert (again.n_ok, again.n_failed, again.exit_code) == (len(failed), 0, 0)
    for name in ("discrete.csv", "openset.csv"):
        assert _lines(settings.runs_dir / "r" / name) == _lines(reference / name), name


def test_processes_take_their_runtime_from_the_profile_not_an_object(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "data", 2)
    with pytest.raises(ConfigError, match="--processes"):
        run_batch(
            load_settings(),
            manifest,
            "r",
            BatchOptions(progress=False, processes=2),
            runtime=fake_run_deps(),
        )


def test_processes_with_ray_is_a_usage_error(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "data", 2)
    result = CliRunner().invoke(
        app, ["batch", str(manifest), "--run", "r", "--processes", "2", "--executor", "ray"]
    )
    assert result.exit_code == 2
    assert "--processes is for --executor local" in result.output
