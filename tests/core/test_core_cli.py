"""The root CLI: help is fast (no heavy imports), config show masks secrets, errors are one line.

stdout carries only results: libraries' INFO logs go to stderr, and only with ``--verbose``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from meragent.cli import app
from meragent.commands import config_cmd
from meragent.commands.terminal import SELF_CONFIGURING_LOGGERS

runner = CliRunner()
HEAVY_MODULES = ("torch", "transformers", "whisperx", "faiss", "cv2", "langgraph", "librosa")


def test_importing_the_cli_pulls_in_no_heavy_library() -> None:
    code = f"import sys, meragent.cli; print([m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_help_lists_command_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("config", "data", "eval", "fusion", "finetune", "trace"):
        assert group in result.output


def test_config_show_prints_json_with_masked_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERAGENT_LLM_API_KEY", "sk-top-secret")
    result = runner.invoke(app, ["config", "show", "--profile", "full"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["profile"] == "full"
    assert data["llm_api_key"] == "********"
    assert "sk-top-secret" not in result.output


def test_bad_profile_is_one_line_error_and_exit_2() -> None:
    result = runner.invoke(app, ["config", "show", "--profile", "nope"])
    assert result.exit_code == 2
    assert "error: unknown profile 'nope'" in result.output
    assert "Traceback" not in result.output


def test_data_group_offers_check_synth_and_corrupt() -> None:
    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0
    for command in ("check", "synth", "corrupt"):
        assert command in result.output
    corrupt_help = runner.invoke(app, ["data", "corrupt", "--help"])
    assert corrupt_help.exit_code == 0
    assert "--snr" in corrupt_help.output


@pytest.fixture
def quiet_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put the process's logging and progress-bar settings back after a CLI callback ran."""
    root = logging.getLogger()
    saved = {name: logging.getLogger(name) for name in ("", *SELF_CONFIGURING_LOGGERS)}
    state = {n: (lg.level, list(lg.handlers), lg.propagate) for n, lg in saved.items()}
    for variable in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(variable, "x")  # recorded, so monkeypatch restores the original
        monkeypatch.delenv(variable)
    yield
    for name, (level, handlers, propagate) in state.items():
        logger = saved[name]
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
    assert root is logging.getLogger()


def _noisy_settings(real: Any) -> Any:
    """``load_settings`` that first logs the way whisperx and Lightning do while loading."""

    def load(**kwargs: Any) -> Any:
        from whisperx.log_utils import get_logger  # installs a stdout handler if none is set

        get_logger("whisperx.asr").info("No language specified, language will be detected")
        lightning = logging.getLogger("lightning.pytorch.utilities.migration.utils")
        lightning.setLevel(logging.INFO)
        lightning.info("Lightning automatically upgraded your loaded checkpoint")
        lightning.warning("a warning worth seeing")
        return real(**kwargs)

    return load


@pytest.mark.usefixtures("quiet_defaults")
def test_library_info_logs_stay_off_stdout_and_verbose_shows_them_on_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config_cmd, "load_settings", _noisy_settings(config_cmd.load_settings))
    quiet = runner.invoke(app, ["config", "show"])
    assert quiet.exit_code == 0, quiet.output
    json.loads(quiet.stdout)  # stdout is the JSON answer and nothing else
    for noise in ("No language specified", "automatically upgraded"):
        assert noise not in quiet.stdout and noise not in quiet.stderr
    assert "WARNING lightning.pytorch.utilities.migration.utils: a warning worth seeing" in (
        quiet.stderr
    )
    assert os.environ["TQDM_DISABLE"] == "1"  # e.g. transformers' GGUF de-quantizing bar

    verbose = runner.invoke(app, ["--verbose", "config", "show"])
    assert verbose.exit_code == 0, verbose.output
    json.loads(verbose.stdout)
    assert "INFO whisperx.asr: No language specified" in verbose.stderr
    assert "automatically upgraded" in verbose.stderr


def test_batch_help_shows_the_ray_extra_literally() -> None:
    result = runner.invoke(app, ["batch", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "needs meragent[ray]" in result.stdout
