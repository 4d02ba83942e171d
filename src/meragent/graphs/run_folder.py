"""A run's folder under ``settings.runs_dir``: its name rules, its lock, clearing it.

``runs_dir/NAME`` holds ``trace.sqlite``, ``checkpoints.sqlite`` (in-process executor), the
outputs of ``graphs.outputs`` and a ``.lock`` file held (``filelock``, an OS lock the kernel drops
if the holder dies) while a batch runs; beside it ``.pid`` names the holder, which the refusal
message quotes and ``trace list`` checks to tell a live run from a killed one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meragent.config import Settings
from meragent.errors import ConfigError, MeragentError
from meragent.graphs.outputs import OUTPUT_FILES, PARTS_DIR

CHECKPOINT_FILE = "checkpoints.sqlite"
LOCK_FILE = ".lock"
PID_FILE = ".pid"
_RUN_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class RunLockedError(MeragentError):
    """Another batch with the same run name is running."""


# --------------------------------------------------------------------------- run folder & lock


def check_run_name(name: str) -> str:
    """A run name is one safe folder name (letters, digits, ``._-``)."""
    if not name or name.startswith(".") or not set(name) <= _RUN_NAME_OK:
        raise ConfigError(f"invalid run name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


def run_dir_for(settings: Settings, name: str) -> Path:
    """The folder of run ``name``: ``settings.runs_dir/name``."""
    return settings.runs_dir / check_run_name(name)


@contextmanager
def run_lock(run_dir: Path, name: str) -> Iterator[None]:
    """Hold the run's exclusive lock, or raise :class:`RunLockedError` naming the holder's pid."""
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunLockedError(
            f"run {name!r} is already running (pid {_holder(run_dir)}); wait for it to finish or "
            "choose another --run name"
        ) from None
    pid_file = run_dir / PID_FILE
    try:
        pid_file.write_text(str(os.getpid()), encoding="utf-8")
        yield
    finally:
        pid_file.unlink(missing_ok=True)
        lock.release()


def _holder(run_dir: Path) -> str:
    try:
        return (run_dir / PID_FILE).read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def batch_alive(run_dir: Path) -> bool:
    """Whether the process named in the run's pid file is still alive (for ``trace list``)."""
    try:
        pid = int((run_dir / PID_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clear_run(run_dir: Path) -> None:
    """Remove a run's store, checkpoints and outputs (the lock file stays: we hold it)."""
    import shutil

    for name in (*OUTPUT_FILES, "trace.html"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / PARTS_DIR, ignore_errors=True)
    for base in ("trace.sqlite", CHECKPOINT_FILE):
        for suffix in ("", "-wal", "-shm"):
            (run_dir / f"{base}{suffix}").unlink(missing_ok=True)
