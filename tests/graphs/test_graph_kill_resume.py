"""SIGKILL a batch at a seeded point, resume it, and get every clip exactly once.

The batch runs in a subprocess on the test doubles (a profile naming them) with a small
per-call delay so the kill lands mid-run; the resumed outputs must equal an uninterrupted run's.
The kill point comes from a seed printed in every failure message (set ``MERAGENT_KILL_SEED`` to
replay it). An in-process test stops a clip's graph after every possible super-step, including
the moment a kill leaves a step's writes saved but not yet checkpointed, and resumes it.
"""

from __future__ import annotations

import contextlib
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


def _children(pid: int) -> list[int]:
    """The process's child processes (Linux /proc), not counting threads."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            found += [int(x) for x in (task / "children").read_text().split()]
    return found


def _kill_when(process: subprocess.Popen[bytes], trace: Path, target: int) -> tuple[int, list[int]]:
    """Kill ``process`` once ``target`` clips are done: (clips done, its children then)."""
    deadline = time.monotonic() + 120
    children: list[int] = []
    while process.poll() is None and time.monotonic() < deadline:
        if _done(trace) >= target:
            children = _children(process.pid)
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=30)
    return _done(trace), children


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")  # a zombie
    except (ProcessLookupError, FileNotFoundError):
        return True


def _wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if not _gone(p)]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_sigkill_then_resume_gives_every_clip_exactly_once(
    processes: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With worker processes the kill hits the driver only: the workers must exit on their own.
    manifest = write_manifest(tmp_path / "data", N_CLIPS)
    home = tmp_path / "home"
    profile = write_fake_profile(tmp_path / "fake.toml", delay_s=0.01)  # doubles, chosen explicitly
    env = doubles_env({**os.environ, "MERAGENT_HOME": str(home), "MERAGENT_PROFILE": str(profile)})
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1_000_000))
    target = random.Random(seed).randint(1, N_CLIPS - 10)
    process = _batch(manifest, env, "--processes", processes)
    done_at_kill, children = _kill_when(process, home / "runs" / "k" / "trace.sqlite", target)
    context = (
        f"(killed at {done_at_kill} clips, target {target}, rc {process.returncode}; "
        f"replay with {SEED_ENV}={seed})"
    )
    assert process.returncode == -signal.SIGKILL, context
    if processes != "1":  # orphans would go on writing checkpoints under the resumed run
        assert len(children) >= 2, context  # the workers (and multiprocessing's tracker)
        assert _wait_gone(children) == [], context

    resumed = _batch(manifest, env, "--resume", "--processes", processes)
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
