"""SIGKILL a batch at a seeded point, resume it, and get every clip exactly once.

The batch runs in a subprocess on the test doubles (a profile naming them) with a small
per-call delay so the kill lands mid-run; the resumed outputs must equal an uninterrupted run's.
The kill point comes from a seed printed in every failure message (set ``MERAGENT_KILL_SEED`` to
replay it). An in-process test stops a clip's graph after every possible super-step, including
the moment a kill leaves a step's writes saved but not yet checkpointed, and resumes it.
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
from typing import Any

import pandas as pd
import pytest
from graph_helpers import write_manifest
from langgraph.checkpoint.sqlite import SqliteSaver
from meragent_fakes import doubles_env, fake_run_deps, write_fake_profile

from meragent.config import load_settings
from meragent.graphs.batch import BatchOptions, invoke_clip, run_batch, thread_id
from meragent.graphs.builder import build_graph, checkpoint_serializer
from meragent.schema import Clip

N_CLIPS = 40
SEED_ENV = "MERAGENT_KILL_SEED"
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
    profile = write_fake_profile(tmp_path / "fake.toml", delay_s=0.01)  # doubles, chosen explicitly
    env = doubles_env({**os.environ, "MERAGENT_HOME": str(home), "MERAGENT_PROFILE": str(profile)})
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1_000_000))
    target = random.Random(seed).randint(1, N_CLIPS - 10)
    process = _batch(manifest, env)
    done_at_kill = _kill_when(process, home / "runs" / "k" / "trace.sqlite", target)
    context = (
        f"(killed at {done_at_kill} clips, target {target}, rc {process.returncode}; "
        f"replay with {SEED_ENV}={seed})"
    )
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
    assert len(_lines(run_dir / "errors.csv")) == 1, context  # the header only

    # Same answers as a run that was never interrupted.
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "reference"))
    reference = load_settings()
    run_batch(reference, manifest, "k", BatchOptions(progress=False), runtime=fake_run_deps())
    ref_dir = reference.runs_dir / "k"
    assert discrete == _lines(ref_dir / "discrete.csv"), context
    assert openset == _lines(ref_dir / "openset.csv"), context


def _fake_graph(checkpointer: Any = None) -> Any:
    """A graph compiled afresh, as a new process would build it."""
    return build_graph("all", checkpointer=checkpointer)


def _fake_context() -> Any:
    """Fresh fake tools and chat models, as a new process would load them."""
    return fake_run_deps().context()


def _answer(output: dict[str, Any]) -> tuple[Any, ...]:
    return output["prediction"].discrete, output["labels"], output["description"], output["clues"]


@pytest.mark.parametrize("clip_index", [3, 10])
def test_a_clip_stopped_after_any_step_resumes_to_the_uninterrupted_answer(
    clip_index: int,
) -> None:
    # Stopping the stream after the step's last task is what a kill between "every task saved
    # its writes" and "the next checkpoint" leaves: no next node, no prediction. Resuming that
    # with a fresh input appended a second set of clues and changed the answer.
    clip = Clip(
        id=f"clip_{clip_index:03d}",
        video=Path(f"/data/clip_{clip_index:03d}.mp4"),
        subtitle=f"sentence number {clip_index}",
        discrete="worried",
    )
    start = {"run_id": "k", "clip": clip}
    expected = _answer(_fake_graph().invoke(start, context=_fake_context()))
    n_updates = len(list(_fake_graph().stream(start, context=_fake_context())))
    config = {"configurable": {"thread_id": thread_id("k", clip.id)}}
    for stop_after in range(1, n_updates):
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        checkpointer = SqliteSaver(conn, serde=checkpoint_serializer())
        stream = _fake_graph(checkpointer).stream(start, config, context=_fake_context())
        for done, _ in enumerate(stream, start=1):
            if done == stop_after:
                break
        stream.close()
        graph = _fake_graph(checkpointer)
        resumed = invoke_clip(graph, "k", clip, checkpointed=True, context=_fake_context())
        assert _answer(resumed) == expected, f"stopped after update {stop_after} of {n_updates}"
        conn.close()
