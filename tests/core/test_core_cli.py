"""The root CLI: help is fast (no heavy imports), config show masks secrets, errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from meragent.cli import app

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
