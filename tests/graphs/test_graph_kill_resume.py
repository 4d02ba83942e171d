"""SIGKILL a batch at a random point, resume it, and get every clip exactly once.

The batch runs in a subprocess on the fake runtime (``MERAGENT_FAKE_RUNTIME=1``) with a small
per-call delay so the kill lands mid-run; the resumed outputs must equal an uninterrupted run's.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from graph_helpers import write_manifest

from meragent.config import load_settings
from meragent.graphs.batch import BatchOptions, run_batch
from meragent.graphs.runtime import FAKE_DELAY_ENV, FAKE_RUNTIME_ENV, fake_runtime

N_CLIPS = 40
CLI = "from meragent.cli import main; main()"


def _batch(manifest: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-c",
        CLI,
        "batch",
        str(manifest),
        "--run",
        "k",
        "--concurrency",
        "4",
    ]
    return subprocess.Popen(
        [*command, *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _done(trace: Path) -> int:
    if not trace.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{trace}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM clip_result").fetchone()[0])
    except sqlite3.Error:
        return 0


def _kill_when(process: subprocess.Popen[bytes], trace: Path, target: int) -> int:
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if _done(trace) >= target:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=30)
    return _done(trace)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_sigkill_then_resume_gives_every_clip_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", N_CLIPS)
    home = tmp_path / "home"
    env = {**os.environ, "MERAGENT_HOME": str(home), FAKE_RUNTIME_ENV: "1", FAKE_DELAY_ENV: "0.01"}
    target = random.randint(1, N_CLIPS - 10)
    process = _batch(manifest, env)
    done_at_kill = _kill_when(process, home / "runs" / "k" / "trace.sqlite", target)
    context = f"(killed at {done_at_kill} clips, target {target}, rc {process.returncode})"
    assert process.returncode == -signal.SIGKILL, context

    resumed = _batch(manifest, env, "--resume")
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr.decode() + context

    run_dir = home / "runs" / "k"
    discrete, openset = _lines(run_dir / "discrete.csv"), _lines(run_dir / "openset.csv")
    names = [f"clip_{i:03d}" for i in range(N_CLIPS)]
    assert [line.split(",")[0] for line in discrete[1:]] == names, context
    assert [line.split(",")[0] for line in openset[1:]] == names, context
    frame = pd.read_parquet(run_dir / "results.parquet")
    assert frame["name"].tolist() == names and set(frame["status"]) == {"ok"}, context
    assert _lines(run_dir / "errors.csv") == ["name,stage,reason"]

    # Same answers as a run that was never interrupted.
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "reference"))
    reference = load_settings()
    run_batch(reference, manifest, "k", BatchOptions(progress=False), runtime=fake_runtime())
    ref_dir = reference.runs_dir / "k"
    assert discrete == _lines(ref_dir / "discrete.csv"), context
    assert openset == _lines(ref_dir / "openset.csv"), context
