"""The API key never reaches a terminal, a run folder or a trace page, even when echoed.

The server is a real HTTP server on 127.0.0.1 that answers 401 quoting the request's
``Authorization`` header (a misconfigured proxy does that); the chat roles are the real
``ChatOpenAI`` pointed at it through the environment, driven through the CLI.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from http_double import scripted_server
from typer.testing import CliRunner

from meragent.agents.chat import CallPolicy, ChatCallError, RoleChat, make_chat_model
from meragent.cli import app
from meragent.commands.errors import fail
from meragent.commands.terminal import ScrubbingFormatter
from meragent.config import RoleConfig, load_settings
from meragent.secrets import REDACTED, register_secret, scrub

KEY = "sk-planted-7f3a9c0e5b1d"
PROFILE = """
[roles.acoustic_encoder]
backend = "none"
[roles.facial_expression]
backend = "none"
[roles.text_encoder]
backend = "none"
[roles.asr]
backend = "none"
[roles.reasoning_llm]
backend = "openai"
model = "m"
[roles.labeler_llm]
backend = "openai"
model = "m"
[roles.grouper]
backend = "identity"
"""


def _files_holding(folder: Path, needle: bytes) -> list[Path]:
    """Like ``grep -ral``: every file under ``folder`` whose bytes contain ``needle``."""
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_scrub_hides_registered_values_and_bearer_tokens() -> None:
    register_secret("sk-registered-41ab")
    line = (
        "failed: auth=Bearer sk-registered-41ab; other=Bearer abcdef123456; key sk-registered-41ab"
    )
    assert scrub(line) == f"failed: auth=Bearer {REDACTED}; other=Bearer {REDACTED}; key {REDACTED}"
    assert scrub("short a b", extra=["a"]) == "short a b"  # too short to be a secret
    assert scrub("x my-store-only-value y", extra=["my-store-only-value"]) == f"x {REDACTED} y"


def test_log_lines_and_error_lines_are_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    register_secret("sk-in-a-log-line-99")
    record = logging.LogRecord(
        "lib", logging.WARNING, __file__, 1, "got %s", ("sk-in-a-log-line-99",), None
    )
    assert "sk-in-a-log-line-99" not in ScrubbingFormatter().format(record)
    fail("server said auth=Bearer sk-in-a-log-line-99")
    assert capsys.readouterr().err == f"error: server said auth=Bearer {REDACTED}\n"


def test_a_chat_call_error_carries_no_key_even_in_its_cause() -> None:
    with scripted_server("echo401") as server:
        settings = load_settings(llm_base_url=server.url, llm_api_key=KEY)
        chat = RoleChat(
            "reasoning",
            make_chat_model(RoleConfig(backend="openai", model="m"), settings),
            policy=CallPolicy(max_retries=0),
        )
        with pytest.raises(ChatCallError) as caught:
            chat.invoke([{"role": "user", "content": "hi"}])
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"  # it was sent
    assert "401" in str(caught.value) and KEY not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.fixture
def clip_manifest(tmp_path: Path) -> Path:
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "clips"), "--n", "1"])
    assert result.exit_code == 0, result.output
    return tmp_path / "clips" / "manifest.csv"


def test_an_echoed_key_reaches_no_terminal_run_folder_or_trace_page(
    tmp_path: Path, clip_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    profile = tmp_path / "echo.toml"
    profile.write_text(PROFILE, encoding="utf-8")
    runner = CliRunner()
    with scripted_server("echo401") as server:
        monkeypatch.setenv("MERAGENT_HOME", str(home))
        monkeypatch.setenv("MERAGENT_LLM_BASE_URL", server.url)
        monkeypatch.setenv("MERAGENT_LLM_API_KEY", KEY)
        one = runner.invoke(app, ["run", str(clip_manifest), "--profile", str(profile)])
        batch = runner.invoke(
            app, ["batch", str(clip_manifest), "--run", "b", "--profile", str(profile)]
        )
        page = tmp_path / "b.html"
        export = runner.invoke(app, ["trace", "export", "b", "--html", str(page)])
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)
    # The failures are reported, with the server's words but not the key.
    assert one.exit_code == 1 and "failed [llm]" in one.stderr and "401" in one.stderr
    assert batch.exit_code == 1 and "failed synth_000 [llm]" in batch.stdout
    assert f"auth=Bearer {REDACTED}" in batch.stdout
    assert export.exit_code == 0, export.output
    for result in (one, batch, export):
        assert KEY not in result.stdout and KEY not in result.stderr
    assert _files_holding(home, KEY.encode()) == []  # run folders, stores, caches
    assert KEY.encode() not in page.read_bytes()
    assert "401" in page.read_text(encoding="utf-8")
