"""The ``openai`` chat backend against a real OpenAI-compatible server (``transformers serve``).

Every other agents test uses fakes; here a real server process on 127.0.0.1 serves the bundled
SmolLM2, and meragent is pointed at it the way a user would (``MERAGENT_LLM_BASE_URL`` plus
``MERAGENT_MODELS__<ROLE>__*`` overrides). ``transformers serve`` 4.57 streams every answer
(hence the ``streaming`` role option) and ignores ``response_format``, so the reasoning agent's
schema request reaches the server, the prose that comes back is not the schema, and the call
falls back to the text route with a flag saying so.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from real_llm_server import ServerProcess, export_bundled_smollm2
from typer.testing import CliRunner

from meragent.agents.chat import RoleChat, UsageTally, make_chat_model, policy_for
from meragent.agents.label_agent import extract_labels
from meragent.agents.reasoning import SixClassAnswer, reason
from meragent.config import load_settings
from meragent.schema import EMOTIONS, Clue, Modality

#: The name meragent sends; the server answers with its one model whatever the name.
SERVED_NAME = "smollm2-135m"
CLUES = [
    Clue(modality=Modality.LEXICAL, source="subtitle", text="I finally passed the exam!"),
    Clue(
        modality=Modality.ACOUSTIC,
        source="prosody",
        text="high pitch, fast pace",
        probs={"happy": 0.6, "neutral": 0.3, "sad": 0.1},
    ),
    Clue.unavailable(Modality.VISUAL, "fer", "no face found"),
]


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bundled GGUF de-quantised once into a HF folder ``transformers serve`` can load."""
    folder = export_bundled_smollm2(tmp_path_factory.mktemp("smollm2-hf"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # 540 MB of fp32 weights: not kept in pytest's tmp


@pytest.fixture(scope="module")
def llm_server(
    smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A running ``transformers serve`` on a free 127.0.0.1 port; always stopped afterwards."""
    log_file = tmp_path_factory.mktemp("llm-server") / "serve.log"
    with ServerProcess(smollm2_folder, log_file) as server:
        yield server


def point_roles_at(monkeypatch: pytest.MonkeyPatch, base_url: str) -> None:
    """What a user sets to send both chat roles to an OpenAI-compatible server."""
    monkeypatch.setenv("MERAGENT_LLM_BASE_URL", base_url)
    monkeypatch.delenv("MERAGENT_LLM_API_KEY", raising=False)
    monkeypatch.delenv("MERAGENT_PROFILE", raising=False)  # the default profile, real models
    for role in ("REASONING_LLM", "LABELER_LLM"):
        monkeypatch.setenv(f"MERAGENT_MODELS__{role}__BACKEND", "openai")
        monkeypatch.setenv(f"MERAGENT_MODELS__{role}__MODEL", SERVED_NAME)
        monkeypatch.setenv(f"MERAGENT_MODELS__{role}__OPTIONS__STREAMING", "true")


def role_chat(name: str, profile_role: str, tally: UsageTally) -> RoleChat:
    """The RoleChat the graph's runtime builds for one role from the current settings."""
    settings = load_settings()
    role = settings.role(profile_role)
    model = make_chat_model(role, settings, role_name=profile_role)
    return RoleChat(name, model, policy=policy_for(role, settings), tally=tally)


def assert_structured_flag_tells_the_route(raw: str, structured: bool, flags: list[str]) -> None:
    """``structured`` says which route produced the answer, and the flags agree with it."""
    if not structured:
        # The schema was asked for and not honoured: the text route answered, and says why.
        assert "structured_unsupported" in flags
    elif "structured_parse_failed" not in flags:
        assert SixClassAnswer.model_validate(json.loads(raw)).description


@pytest.mark.slow
def test_reasoning_and_labeler_answer_through_a_real_server(
    llm_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_roles_at(monkeypatch, llm_server.base_url)
    tally = UsageTally()
    reasoning_chat = role_chat("reasoning", "reasoning_llm", tally)
    labeler_chat = role_chat("labeler", "labeler_llm", tally)
    assert reasoning_chat.model_id == SERVED_NAME
    assert reasoning_chat.supports_structured_output()  # ChatOpenAI offers json_schema

    result = reason(reasoning_chat, CLUES)
    assert result.raw.strip(), llm_server.log_tail()
    assert result.description.strip()
    assert "description_from_clues" not in result.flags  # the model wrote it, not the fallback
    assert result.choice is None or result.choice in EMOTIONS
    assert result.modalities == ["acoustic", "lexical"]
    assert_structured_flag_tells_the_route(result.raw, result.structured, result.flags)
    usage = tally.as_dict()["reasoning"]
    # The schema request went out; when it was not honoured, a plain request followed.
    assert usage["calls"] == (1 if result.structured else 2)

    labels = extract_labels(labeler_chat, result.description)
    assert labels.raw.strip(), llm_server.log_tail()
    assert isinstance(labels.labels, list)
    assert all(isinstance(label, str) and label for label in labels.labels)
    # Parsed from the real reply: every label is words the model wrote (lower-cased).
    assert all(label in labels.raw.lower() for label in labels.labels)
    assert tally.as_dict()["labeler"]["calls"] == 1
    assert tally.as_dict()["labeler"]["failures"] == 0


@pytest.mark.slow
def test_meragent_run_answers_one_clip_through_a_real_server(
    llm_server: ServerProcess,
    synth_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meragent.cli import app

    point_roles_at(monkeypatch, llm_server.base_url)
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MERAGENT_DEVICE", "cpu")
    result = CliRunner().invoke(app, ["run", f"{synth_dataset}#synth_000", "--json"])
    assert result.exit_code == 0, f"{result.output}\n--- server log ---\n{llm_server.log_tail()}"
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["clip"] == "synth_000"
    assert answer["discrete"] in EMOTIONS
    assert answer["description"].strip()
    assert isinstance(answer["openset"], list)
    assert all(isinstance(label, str) for label in answer["openset"])
    reasoning_flags = [f for f in answer["flags"] if f.startswith("reasoning:")]
    assert "reasoning:description_from_clues" not in reasoning_flags


@pytest.mark.slow
def test_server_fixture_stops_the_process_and_frees_the_port(
    smollm2_folder: Path, tmp_path: Path
) -> None:
    server = ServerProcess(smollm2_folder, tmp_path / "serve.log")
    with server:
        process = server.process
        assert process is not None and process.poll() is None
    assert process.poll() is not None  # stopped (terminated, or killed when it hung)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.base_url}/models", timeout=2)


def test_openai_role_options_reach_the_client_as_self_hosted_servers_read_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point_roles_at(monkeypatch, "http://127.0.0.1:9/v1")
    settings = load_settings()
    model = make_chat_model(settings.role("reasoning_llm"), settings, role_name="reasoning_llm")
    assert model.streaming is True  # the env value "true" arrives as a string
    # The offline profile's cap (96): LangChain sends max_completion_tokens, which Ollama and
    # transformers serve ignore; max_tokens in the body is what they read.
    assert model.max_tokens == 96
    assert model.extra_body == {"max_tokens": 96}


def test_openai_role_without_base_url_sends_only_the_standard_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MERAGENT_LLM_BASE_URL", raising=False)
    monkeypatch.setenv("MERAGENT_LLM_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("MERAGENT_MODELS__REASONING_LLM__BACKEND", "openai")
    monkeypatch.setenv("MERAGENT_MODELS__REASONING_LLM__MODEL", "gpt-4o-mini")
    settings = load_settings()
    model = make_chat_model(settings.role("reasoning_llm"), settings, role_name="reasoning_llm")
    assert model.streaming is False
    assert model.max_tokens == 96 and model.extra_body is None
