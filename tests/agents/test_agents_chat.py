"""RoleChat policy (retries, backoff, the client's timeout, usage) and the chat-model factory.

The retry policy is LangChain's ``with_retry``; its waits go through ``time.sleep``, which the
tests replace with a recorder (``sleeps``) so backoff is checked without waiting. Timeouts are
the client's own (``ChatOpenAI(timeout=...)``) against a real server on 127.0.0.1 that sleeps.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from http_double import scripted_server
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from meragent_fakes import ScriptedChatModel

from meragent.agents.chat import (
    CallPolicy,
    ChatCallError,
    RoleChat,
    UsageTally,
    chat_backends,
    make_chat_model,
    policy_for,
)
from meragent.config import RoleConfig, load_settings
from meragent.errors import ConfigError, LLMError

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff waits the retry policy asked for (none actually waited)."""
    waited: list[float] = []
    monkeypatch.setattr("tenacity.nap.time.sleep", waited.append)
    return waited


def _chat(model: Any, *, retries: int = 2, **kw: Any) -> RoleChat:
    policy = CallPolicy(max_retries=retries, backoff_s=0.5, jitter_s=0.0)
    return RoleChat("reasoning", model, policy=policy, **kw)


def test_transient_failures_are_retried_with_exponential_backoff(sleeps: list[float]) -> None:
    model = ScriptedChatModel(reply=lambda _: "fine", fail_first=2)
    tally = UsageTally()
    chat = _chat(model, tally=tally)
    reply = chat.invoke(MESSAGES)
    assert reply.text == "fine"
    assert reply.retries == 2
    assert model.calls == 3
    assert sleeps == [0.5, 1.0]
    usage = tally.as_dict()["reasoning"]
    assert usage["calls"] == 1 and usage["retries"] == 2 and usage["failures"] == 0
    assert usage["input_tokens"] == 4  # "be brief" + "hi there"
    assert usage["output_tokens"] == 1


def test_retries_are_bounded_then_a_chat_call_error() -> None:
    model = ScriptedChatModel(reply=lambda _: "never", fail_first=100)
    tally = UsageTally()
    chat = _chat(model, retries=2, tally=tally)
    with pytest.raises(ChatCallError) as caught:
        chat.invoke(MESSAGES)
    assert model.calls == 3
    assert caught.value.retries == 2
    assert isinstance(caught.value, LLMError)
    assert "reasoning (scripted) failed after 3 attempt(s): ConnectionError" in str(caught.value)
    assert tally.as_dict()["reasoning"]["failures"] == 1


def test_a_non_transient_error_is_not_retried(sleeps: list[float]) -> None:
    def broken(_: Any) -> str:
        raise ValueError("bad request")

    model = ScriptedChatModel(reply=broken)
    chat = _chat(model, retries=3)
    with pytest.raises(ChatCallError, match="ValueError: bad request"):
        chat.invoke(MESSAGES)
    assert model.calls == 1
    assert sleeps == []


def test_a_slow_server_times_out_on_the_clients_timeout_and_is_retried(
    sleeps: list[float],
) -> None:
    # The attempt is bounded by ChatOpenAI's own timeout (no abandoned thread): the server
    # sleeps 3 s per request, the client gives up after 0.2 s, twice.
    with scripted_server("sleep:3") as server:
        settings = load_settings(llm_base_url=server.url, llm_timeout_s=0.2)
        chat = _chat(make_chat_model(RoleConfig(backend="openai", model="m"), settings), retries=1)
        started = time.perf_counter()
        with pytest.raises(ChatCallError) as caught:
            chat.invoke(MESSAGES)
        elapsed = time.perf_counter() - started
    assert caught.value.transient and caught.value.retries == 1
    assert "failed after 2 attempt(s): OpenAITimeoutError: Request timed out." in str(caught.value)
    assert len(server.requests) == 2
    assert elapsed < 2.0  # neither attempt waited for the sleeping server
    assert sleeps == [0.5]


def test_a_slow_first_answer_then_a_fast_one_succeeds(sleeps: list[float]) -> None:
    with scripted_server("sleep:3", "ok") as server:
        settings = load_settings(llm_base_url=server.url, llm_timeout_s=0.3)
        chat = _chat(make_chat_model(RoleConfig(backend="openai", model="m"), settings))
        reply = chat.invoke(MESSAGES)
    assert reply.retries == 1 and "Answer: neutral" in reply.text
    assert reply.usage is not None and reply.usage["input_tokens"] == 3  # the server's count


def test_cost_is_tallied_from_usage_metadata_and_prices() -> None:
    message = AIMessage(
        content="ok",
        usage_metadata={"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500},
    )
    tally = UsageTally()
    chat = _chat(
        GenericFakeChatModel(messages=iter([message, message])), tally=tally, prices=(0.5, 2.0)
    )
    chat.invoke(MESSAGES)
    chat.invoke(MESSAGES)
    usage = tally.as_dict()["reasoning"]
    assert usage["input_tokens"] == 2000 and usage["output_tokens"] == 1000
    assert usage["cost_usd"] == pytest.approx(2 * (0.5 + 1.0))
    assert tally.total_tokens() == 3000


def test_backoff_is_capped(sleeps: list[float]) -> None:
    policy = CallPolicy(max_retries=4, backoff_s=1.0, backoff_max_s=3.0, jitter_s=0.0)
    chat = RoleChat("reasoning", ScriptedChatModel(fail_first=100), policy=policy)
    with pytest.raises(ChatCallError):
        chat.invoke(MESSAGES)
    assert sleeps == [1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("failure", ["garbage", "500"])
def test_a_garbage_body_gets_the_same_attempts_as_an_http_500(failure: str) -> None:
    # Before: the client raised JSONDecodeError for a garbage body (tried once) while a 500
    # was retried. Both say "the server misbehaved this time", so both get every attempt.
    with scripted_server(failure) as server:
        settings = load_settings(llm_base_url=server.url, llm_timeout_s=5.0)
        model = make_chat_model(RoleConfig(backend="openai", model="m"), settings)
        chat = RoleChat("reasoning", model, policy=CallPolicy(max_retries=2, backoff_s=0.01))
        with pytest.raises(ChatCallError) as caught:
            chat.invoke(MESSAGES)
    assert len(server.requests) == 3
    assert caught.value.retries == 2 and caught.value.transient
    assert "failed after 3 attempt(s)" in str(caught.value)


def test_one_garbage_body_then_a_good_reply_succeeds_on_the_retry() -> None:
    with scripted_server("garbage", "ok") as server:
        settings = load_settings(llm_base_url=server.url, llm_timeout_s=5.0)
        model = make_chat_model(RoleConfig(backend="openai", model="m"), settings)
        chat = RoleChat("reasoning", model, policy=CallPolicy(max_retries=1, backoff_s=0.01))
        reply = chat.invoke(MESSAGES)
    assert reply.retries == 1 and "Answer: neutral" in reply.text
    assert len(server.requests) == 2


def test_openai_backend_builds_a_chat_openai_without_client_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MERAGENT_LLM_API_KEY", "sk-test-key")
    settings = load_settings(llm_base_url="http://127.0.0.1:9/v1", llm_timeout_s=7.0)
    role = RoleConfig(
        backend="openai", model="Qwen/Qwen2.5-7B-Instruct", options={"max_new_tokens": 64}
    )
    model = make_chat_model(role, settings, role_name="reasoning_llm")
    assert type(model).__name__ == "ChatOpenAI"
    assert model.model_name == "Qwen/Qwen2.5-7B-Instruct"  # type: ignore[attr-defined]
    assert model.openai_api_base == "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]
    assert model.max_retries == 0  # type: ignore[attr-defined]
    assert model.request_timeout == 7.0  # type: ignore[attr-defined]
    assert model.max_tokens == 64  # type: ignore[attr-defined]
    assert "sk-test-key" not in repr(model)


def test_openai_backend_against_a_dead_server_fails_after_bounded_retries() -> None:
    settings = load_settings(llm_base_url="http://127.0.0.1:9/v1", llm_timeout_s=2.0)
    role = RoleConfig(backend="openai", model="m")
    chat = _chat(make_chat_model(role, settings), retries=1)
    with pytest.raises(ChatCallError) as caught:
        chat.invoke(MESSAGES)
    assert caught.value.retries == 1  # connection refused is transient: retried once


def test_factory_errors_name_the_role() -> None:
    settings = load_settings()
    with pytest.raises(ConfigError, match="role labeler_llm: unknown chat backend 'nope'"):
        make_chat_model(RoleConfig(backend="nope"), settings, role_name="labeler_llm")
    with pytest.raises(ConfigError, match="needs MERAGENT_LLM_BASE_URL"):
        make_chat_model(RoleConfig(backend="openai", model="m"), settings, role_name="x")
    assert {"local", "openai"} <= set(chat_backends())


def test_policy_for_reads_settings_and_role_options() -> None:
    settings = load_settings(llm_timeout_s=30.0, llm_max_retries=4)
    remote = policy_for(RoleConfig(backend="openai", model="m"), settings)
    assert (remote.max_retries, remote.backoff_s) == (4, 0.5)
    local = policy_for(RoleConfig(backend="local", model="m", options={"max_retries": 0}), settings)
    assert local.max_retries == 0
    # One policy: no per-attempt timeout of the policy's own (the client bounds an attempt).
    assert not hasattr(remote, "timeout_s")


def test_a_plugin_chat_backend_is_loaded_by_module_and_attribute() -> None:
    settings = load_settings()
    role = RoleConfig(backend="py:meragent_fakes:scripted_chat_factory", model="x")
    model = make_chat_model(role, settings, role_name="reasoning_llm")
    assert isinstance(model, ScriptedChatModel) and model.model_id == "scripted-x"
    with pytest.raises(ConfigError, match="cannot import plug-in module 'no_such_mod'"):
        make_chat_model(RoleConfig(backend="py:no_such_mod:f"), settings, role_name="r")
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        make_chat_model(RoleConfig(backend="py:meragent_fakes:nope"), settings, role_name="r")


def test_tokens_of_every_role_come_from_the_usage_callback(sleeps: list[float]) -> None:
    tally = UsageTally()
    first = RoleChat("reasoning", ScriptedChatModel(model_id="a"), tally=tally, prices=(1.0, 0.0))
    second = RoleChat("labeler", ScriptedChatModel(model_id="b", fail_first=1), tally=tally)
    first.invoke(MESSAGES)
    second.invoke(MESSAGES)  # one failed attempt: no tokens, one retry
    usage = tally.as_dict()
    words = len(scripted_reply_words(MESSAGES))
    assert usage["reasoning"]["input_tokens"] == 4 and usage["reasoning"]["output_tokens"] == words
    assert usage["reasoning"]["cost_usd"] == pytest.approx(4 / 1000)
    assert usage["labeler"] == {
        "calls": 1, "failures": 0, "retries": 1, "input_tokens": 4, "output_tokens": words,
        "cost_usd": 0.0, "latency_s": pytest.approx(usage["labeler"]["latency_s"]),
    }  # fmt: skip
    assert tally.roles["reasoning"].handler.usage_metadata["a"]["input_tokens"] == 4


def scripted_reply_words(messages: list[dict[str, str]]) -> list[str]:
    from langchain_core.messages import HumanMessage, SystemMessage
    from meragent_fakes import scripted_reply

    lc = [SystemMessage(messages[0]["content"]), HumanMessage(messages[1]["content"])]
    return scripted_reply(lc).split()


def _tiny_lm(out: Path) -> Path:
    """A 2-layer random Llama with a word-level tokenizer and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "system", "user", "assistant", "be", "brief", "hi", "there"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>"
    )
    wrapped.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    wrapped.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def test_local_backend_generates_with_usage_metadata(tmp_path: Path) -> None:
    model_dir = _tiny_lm(tmp_path / "tiny")
    settings = load_settings(device="cpu")
    role = RoleConfig(backend="local", model=str(model_dir), options={"max_new_tokens": 3})
    model = make_chat_model(role, settings, role_name="reasoning_llm")
    assert type(model).__name__ == "LocalChatModel"
    tally = UsageTally()
    reply = RoleChat("reasoning", model, tally=tally).invoke(MESSAGES)
    assert isinstance(reply.text, str)
    assert reply.usage is not None
    assert reply.usage["input_tokens"] == 7  # "system be brief user hi there assistant"
    assert 1 <= reply.usage["output_tokens"] <= 3
    assert tally.as_dict()["reasoning"]["calls"] == 1
    # A local model cannot bind tools: the reasoning agent must use the text route.
    assert RoleChat("reasoning", model).supports_structured_output() is False


def test_describers_retry_under_the_same_policy(sleeps: list[float]) -> None:
    # Before, the describers relied on ChatOpenAI(max_retries=...): a second retry strategy.
    from meragent.tools.describers import make_openai_chat

    with scripted_server("500", "garbage", "ok") as server:
        chat = make_openai_chat(
            "m", base_url=server.url, api_key=None, timeout_s=5, max_retries=2, max_tokens=8
        )
        reply = chat.invoke("hi")
    assert "Answer: neutral" in reply.content
    assert len(server.requests) == 3  # a garbage body is retried like a 500, no client retries
    assert len(sleeps) == 2


def test_threads_sharing_one_role_each_get_their_own_retry_count(sleeps: list[float]) -> None:
    # One retrying runnable serves every thread of a role: a call's retries are its own, even
    # when another thread's call succeeds between its failed attempts.
    first_failure, steady_done = threading.Event(), threading.Event()
    failures = {"n": 0}

    def reply(messages: Any) -> str:
        if str(messages[-1].content) != "flaky":
            return "steady"
        failures["n"] += 1
        if failures["n"] == 1:
            first_failure.set()
            raise ConnectionError("down (scripted)")
        if failures["n"] == 2:
            assert steady_done.wait(5)
            raise ConnectionError("down again (scripted)")
        return "recovered"

    tally = UsageTally()
    chat = _chat(ScriptedChatModel(reply=reply), retries=2, tally=tally)
    replies: dict[str, Any] = {}

    def flaky() -> None:
        replies["flaky"] = chat.invoke([{"role": "user", "content": "flaky"}])

    thread = threading.Thread(target=flaky)
    thread.start()
    assert first_failure.wait(5)
    replies["steady"] = chat.invoke([{"role": "user", "content": "steady"}])
    steady_done.set()
    thread.join(5)
    assert replies["steady"].text == "steady" and replies["steady"].retries == 0
    assert replies["flaky"].text == "recovered" and replies["flaky"].retries == 2
    usage = tally.as_dict()["reasoning"]
    assert usage["calls"] == 2 and usage["retries"] == 2 and usage["failures"] == 0
