"""Shared pieces of the GPU suite's steps: device facts, JSON written as it goes, CLI calls.

Every step of ``bench/gpu_suite.py`` is its own process (so one step's crash, hang or memory
cannot take the others down) and keeps its figures in a :class:`Recorder`, which rewrites the
step's JSON file after each figure: a step killed at its time cap still leaves what it finished.
Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: The ``meragent`` console script's entry point, run with this interpreter (no install needed).
CLI = ("-c", "from meragent.cli import main; main()")
#: How much of a failed command's output a result keeps.
TAIL_CHARS = 2000


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(partial, path)


class Recorder:
    """A step's result dict, rewritten to ``path`` on every change."""

    def __init__(self, path: Path, **header: Any) -> None:
        self.path = path
        self.data: dict[str, Any] = {"finished": False, **header}
        self.flush()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.flush()

    def finish(self) -> None:
        self.set("finished", True)

    def flush(self) -> None:
        write_json(self.path, self.data)


def device_facts(device: str) -> dict[str, Any]:
    """Device name, library versions and host: what every result must say about itself."""
    import torch
    import transformers

    facts: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    try:
        import peft

        facts["peft"] = peft.__version__
    except ImportError:
        facts["peft"] = None
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch sees no GPU (use --tiny to check on CPU)")
        facts["device_name"] = torch.cuda.get_device_name()
        facts["cuda"] = torch.version.cuda
        facts["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        facts["device_name"] = f"CPU ({platform.processor() or platform.machine()})"
        facts["cpu_threads"] = torch.get_num_threads()
    return facts


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def release_memory(device: str) -> None:
    """Give cached GPU blocks back between parts of a step (peak figures stay per part)."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def run_cli(args: list[str], *, timeout_s: float, env: dict[str, str] | None = None) -> dict:
    """Run ``meragent ARGS`` as a child process; wall time, exit code and the output's tail."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, *CLI, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as exc:
        # What it printed so far (e.g. the fusion search's per-stack times) is still worth keeping.
        return {
            "rc": None,
            "timed_out": True,
            "wall_s": round(time.perf_counter() - started, 2),
            "stderr_tail": _text(exc.stderr)[-TAIL_CHARS:],
            "stdout": _text(exc.stdout),
        }
    result = {
        "rc": done.returncode,
        "wall_s": round(time.perf_counter() - started, 2),
        "stdout": done.stdout,
    }
    if done.returncode != 0:
        result["stderr_tail"] = done.stderr[-TAIL_CHARS:]
    return result


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return output or ""


def cli_ok(result: dict) -> bool:
    return result.get("rc") == 0


def without_stdout(result: dict) -> dict:
    """A CLI result as stored: the output's tail instead of all of it."""
    kept = {key: value for key, value in result.items() if key != "stdout"}
    if "stdout" in result:
        kept["stdout_tail"] = result["stdout"][-TAIL_CHARS:]
    return kept
