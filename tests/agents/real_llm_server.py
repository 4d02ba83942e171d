"""A real OpenAI-compatible server for tests: ``transformers serve`` on 127.0.0.1, offline.

The bundled SmolLM2 ships as a GGUF file; ``transformers serve`` loads models by folder or hub
id, so :func:`export_bundled_smollm2` de-quantises the GGUF once into a plain HF folder and the
server is told to answer every request with it (``--force-model``). :class:`ServerProcess`
picks a free port, starts the server with ``HF_HUB_OFFLINE=1``, waits for ``/v1/models`` and
always stops the process; its log file is quoted in every failure so a CI run says why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

#: How long the server may take to answer ``/v1/models`` (imports torch + FastAPI on 2 cores).
STARTUP_TIMEOUT_S = 180.0
#: How long a stopped server gets to exit before it is killed (SIGTERM can hang mid-stream).
STOP_TIMEOUT_S = 10.0


def export_bundled_smollm2(folder: Path) -> Path:
    """Write the bundled SmolLM2 (GGUF, de-quantised to fp32) as a HF model folder."""
    from meragent.tools.causal_lm import load_base_model, load_tokenizer

    tokenizer, _ = load_tokenizer("bundled:smollm2-135m")
    model = load_base_model("bundled:smollm2-135m", device="cpu", dtype="float32")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def transformers_cli() -> str:
    """The ``transformers`` console script of the running interpreter's environment."""
    script = Path(sys.executable).with_name("transformers")
    found = str(script) if script.is_file() else shutil.which("transformers")
    if not found:
        raise RuntimeError("the 'transformers' command is not installed (transformers[serving])")
    return found


class ServerProcess:
    """One ``transformers serve`` subprocess serving ``model_dir``; use as a context manager."""

    def __init__(self, model_dir: Path, log_file: Path) -> None:
        self.model_dir = model_dir
        self.log_file = log_file
        self.port = free_local_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running server process (None before start and after stop)."""
        return self._process

    def command(self) -> list[str]:
        return [
            transformers_cli(), "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--force-model", str(self.model_dir),
            "--device", "cpu",
            "--dtype", "float32",
            "--log-level", "warning",
        ]  # fmt: skip

    def __enter__(self) -> ServerProcess:
        # Offline: with the hub reachable, /v1/models would query it for its model list.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with self.log_file.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.is_file():
            return "(no server log)"
        text = self.log_file.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Poll ``/v1/models`` until it answers 200; fail early if the process dies."""
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"transformers serve exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"transformers serve not ready after {timeout_s:g} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the server (kill it when it does not exit in time); safe to call twice."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
