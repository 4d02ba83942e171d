"""Chat-model factory and a resilient caller: one role's config in, a LangChain chat model out.

Backends are looked up by name in a small registry: ``openai`` (any OpenAI-compatible server:
vLLM, llama.cpp server, Ollama, OpenAI) and ``local`` (an in-process causal LM, optionally with a
LoRA adapter). Every call the graph makes goes through :class:`RoleChat`, which applies one
retry policy (LangChain's ``Runnable.with_retry``: the same bounded attempts and exponential
backoff for every transient failure, a garbage body as much as an HTTP 500) and a per-run
token/cost tally, so the same policy applies to every backend and fakes can exercise it.
A failed call's message is scrubbed of secrets: servers echo the Authorization header.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from meragent.config import RoleConfig, Settings
from meragent.errors import ConfigError, LLMError
from meragent.secrets import register_secret, scrub

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.runnables import Runnable

#: A backend factory builds a chat model for one role (``role_name`` is for error messages).
ChatBackendFactory = Callable[[str, RoleConfig, Settings], "BaseChatModel"]

#: Message dicts the prompts are written as: ``{"role": "system"|"user"|"assistant", ...}``.
MessageDicts = Sequence[dict[str, str]]


# --------------------------------------------------------------------------- backends


def _openai_chat(role_name: str, role: RoleConfig, settings: Settings) -> BaseChatModel:
    """``ChatOpenAI`` against ``llm_base_url`` (or the role's own ``base_url`` option)."""
    from langchain_openai import ChatOpenAI

    if not role.model:
        raise ConfigError(f"role {role_name}: backend 'openai' needs a model name")
    base_url = role.options.get("base_url") or settings.llm_base_url
    api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    register_secret(api_key)  # whatever the server echoes back, the key is not shown
    if base_url is None and api_key is None:
        raise ConfigError(
            f"role {role_name}: backend 'openai' needs MERAGENT_LLM_BASE_URL (a vLLM/llama.cpp/"
            "Ollama server) or MERAGENT_LLM_API_KEY"
        )
    kwargs: dict[str, Any] = {
        "model": role.model,
        "base_url": base_url,
        # Local servers ignore the key but the client insists on one.
        "api_key": api_key or "not-needed",
        # The client's own timeout bounds each attempt (no thread is abandoned on the way).
        "timeout": float(role.options.get("timeout_s", settings.llm_timeout_s)),
        # RoleChat retries every transient failure the same way; client retries on top would
        # multiply the attempts of some failures (HTTP 500) and not others (a garbage body).
        "max_retries": 0,
        "temperature": float(role.options.get("temperature", 0.0)),
        # transformers serve answers only as an event stream; env values arrive as strings.
        "streaming": str(role.options.get("streaming", False)).lower() in ("true", "1", "yes"),
    }
    if "max_new_tokens" in role.options or "max_tokens" in role.options:
        kwargs["max_tokens"] = int(role.options.get("max_tokens", role.options["max_new_tokens"]))
        if base_url is not None:
            # LangChain sends the cap as max_completion_tokens only, which Ollama and
            # transformers serve ignore (unbounded replies); self-hosted servers read max_tokens.
            kwargs["extra_body"] = {"max_tokens": kwargs["max_tokens"]}
    return ChatOpenAI(**kwargs)


def _local_chat(role_name: str, role: RoleConfig, settings: Settings) -> BaseChatModel:
    """An in-process causal LM (``bundled:…``, a hub id or a directory), LoRA when configured."""
    from meragent.agents.local_chat import LocalChatModel
    from meragent.tools.causal_lm import load_causal_lm

    if not role.model:
        raise ConfigError(f"role {role_name}: backend 'local' needs a model id or path")
    lm = load_causal_lm(
        role.model,
        adapter=role.adapter,
        device=settings.resolved_device(),
        dtype=str(role.options.get("dtype", "auto")),
    )
    return LocalChatModel(
        lm=lm,
        model_id=lm.model_id,
        max_new_tokens=int(role.options.get("max_new_tokens", 128)),
        temperature=float(role.options.get("temperature", 0.0)),
    )


_BACKENDS: dict[str, ChatBackendFactory] = {"openai": _openai_chat, "local": _local_chat}


def register_chat_backend(name: str, factory: ChatBackendFactory) -> None:
    """Add (or replace) a chat backend under ``name`` so profiles can select it."""
    _BACKENDS[name] = factory


def chat_backends() -> list[str]:
    """Names a profile may use as a chat role's ``backend``."""
    return sorted(_BACKENDS)


def make_chat_model(
    role: RoleConfig, settings: Settings, *, role_name: str = "chat role"
) -> BaseChatModel:
    """Build the LangChain chat model a role's config names."""
    factory = _BACKENDS.get(role.backend)
    if factory is None:
        raise ConfigError(
            f"role {role_name}: unknown chat backend {role.backend!r} "
            f"(known: {', '.join(chat_backends())})"
        )
    return factory(role_name, role, settings)


def model_id_of(model: Any) -> str:
    """A readable id for traces: the served model name, a local model id, or the class name."""
    for attr in ("model_id", "model_name", "model"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


# --------------------------------------------------------------------------- policy & tally


@dataclass(frozen=True)
class CallPolicy:
    """How often (and how patiently) to retry, and an optional per-attempt time limit.

    ``timeout_s`` is for models without a timeout of their own (test doubles): ``ChatOpenAI``
    enforces ``llm_timeout_s`` itself and a local model is bounded by ``max_new_tokens``.
    """

    timeout_s: float | None = None
    max_retries: int = 2
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    jitter_s: float = 0.1

    def retrying(self, runnable: Runnable[Any, Any]) -> Runnable[Any, Any]:
        """``runnable`` with this policy: transient failures retried with exponential backoff."""
        return runnable.with_retry(
            retry_if_exception_type=is_retryable,
            stop_after_attempt=self.max_retries + 1,
            wait_exponential_jitter=self.backoff_s > 0,
            exponential_jitter_params={
                "initial": self.backoff_s,
                "max": self.backoff_max_s,
                "jitter": self.jitter_s,
            },
        )


def policy_for(role: RoleConfig, settings: Settings) -> CallPolicy:
    """The call policy of a role: settings' retries, overridable in the role's options."""
    # Both real backends bound an attempt themselves (see CallPolicy); a role may still ask.
    own_timeout = role.backend in ("openai", "local")
    timeout = None if own_timeout else role.options.get("timeout_s", settings.llm_timeout_s)
    return CallPolicy(
        timeout_s=None if timeout is None else float(timeout),
        max_retries=int(role.options.get("max_retries", settings.llm_max_retries)),
        backoff_s=float(role.options.get("backoff_s", 0.5)),
    )


@dataclass
class RoleUsage:
    """Counters for one role in one run."""

    calls: int = 0
    failures: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0


@dataclass
class UsageTally:
    """Thread-safe per-run totals of calls, tokens and (when prices are known) cost."""

    roles: dict[str, RoleUsage] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(
        self,
        role: str,
        *,
        usage: dict[str, Any] | None,
        retries: int,
        latency_s: float,
        failed: bool,
        prices: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """Count one call (successful or not); prices are USD per 1,000 input/output tokens."""
        tokens_in = int((usage or {}).get("input_tokens", 0) or 0)
        tokens_out = int((usage or {}).get("output_tokens", 0) or 0)
        with self._lock:
            entry = self.roles.setdefault(role, RoleUsage())
            entry.calls += 1
            entry.failures += int(failed)
            entry.retries += retries
            entry.input_tokens += tokens_in
            entry.output_tokens += tokens_out
            entry.cost_usd += (tokens_in * prices[0] + tokens_out * prices[1]) / 1000.0
            entry.latency_s += latency_s

    def as_dict(self) -> dict[str, dict[str, float | int]]:
        with self._lock:
            return {name: dict(vars(usage)) for name, usage in sorted(self.roles.items())}

    def total_tokens(self) -> int:
        with self._lock:
            return sum(u.input_tokens + u.output_tokens for u in self.roles.values())


# --------------------------------------------------------------------------- resilient calls


class ChatTimeoutError(TimeoutError):
    """One attempt exceeded the policy's timeout."""


class ChatCallError(LLMError):
    """A role's call failed for good; ``retries`` says how many retries were spent first.

    ``transient`` says whether the last failure was a transient one (the server is down, slow
    or garbled) rather than a rejected request. The message is scrubbed of secrets and the
    original exception is not chained: its text may hold an echoed API key.
    """

    def __init__(self, message: str, *, retries: int, transient: bool = False) -> None:
        super().__init__(scrub(message))
        self.retries = retries
        self.transient = transient


def is_retryable(exc: BaseException) -> bool:
    """Transient failures (timeouts, connection errors, 429, 5xx, a body that is not JSON)."""
    # A garbage HTTP body surfaces as JSONDecodeError from the client: the server misbehaved
    # once, like a 500, so it gets the same attempts. (Unparsable *content* in a well-formed
    # reply is not an exception: structured output reports it as a parsing error.)
    if isinstance(exc, TimeoutError | ConnectionError | json.JSONDecodeError):
        return True
    if getattr(exc, "is_retryable", False) is True:  # langchain-core's ModelError family
        return True
    try:
        import openai
    except ImportError:  # pragma: no cover - openai ships with langchain-openai
        return False
    transient = (
        openai.APIConnectionError,  # includes APITimeoutError
        openai.RateLimitError,
        openai.InternalServerError,
        openai.APIResponseValidationError,
    )
    return isinstance(exc, transient)


def _call_with_timeout(func: Callable[[], Any], timeout_s: float | None) -> Any:
    """Run ``func`` and give up after ``timeout_s`` (the attempt's thread is abandoned)."""
    if timeout_s is None:
        return func()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = func()
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, daemon=True, name="meragent-llm-call").start()
    if not done.wait(timeout_s):
        raise ChatTimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@dataclass
class ChatReply:
    """One successful call: the message, its text, and what it took."""

    message: AIMessage
    text: str
    retries: int
    latency_s: float
    usage: dict[str, Any] | None


@dataclass
class StructuredReply:
    """A structured-output call: the parsed object (None when parsing failed) and the raw reply."""

    parsed: BaseModel | None
    raw: ChatReply
    parsing_error: str | None = None


def to_langchain_messages(messages: MessageDicts) -> list[BaseMessage]:
    """Convert role/content dicts to LangChain message objects."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    converted: list[BaseMessage] = []
    for message in messages:
        kind = kinds.get(message["role"])
        if kind is None:
            raise ValueError(f"unknown message role {message['role']!r}")
        converted.append(kind(content=message["content"]))
    return converted


def message_text(message: Any) -> str:
    """The text of an AI message (string content, or the text parts of a content list)."""
    content = getattr(message, "content", message)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p if isinstance(p, str) else str(p.get("text", "")) for p in content]
        return "".join(parts)
    return "" if content is None else str(content)


class RoleChat:
    """A chat model bound to a role, called with timeout, retries, backoff and usage counting."""

    def __init__(
        self,
        role: str,
        model: BaseChatModel,
        *,
        policy: CallPolicy | None = None,
        tally: UsageTally | None = None,
        prices: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self.role = role
        self.model = model
        self.model_id = model_id_of(model)
        self.policy = policy or CallPolicy()
        self.tally = tally
        self.prices = prices
        self._structured_ok: bool | None = None

    def _attempts(self, func: Callable[[], Any]) -> tuple[Any, int, float]:
        """Call ``func`` under the retry policy; return (value, retries, seconds)."""
        from langchain_core.runnables import RunnableLambda

        started = time.perf_counter()
        attempts = 0

        def attempt(_: object) -> Any:
            nonlocal attempts
            attempts += 1
            return _call_with_timeout(func, self.policy.timeout_s)

        try:
            value = self.policy.retrying(RunnableLambda(attempt)).invoke(None)
        except Exception as exc:
            elapsed = time.perf_counter() - started
            self._count(None, attempts - 1, elapsed, failed=True)
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise ChatCallError(
                f"{self.role} ({self.model_id}) failed after {attempts} attempt(s): {reason}",
                retries=attempts - 1,
                transient=is_retryable(exc),
            ) from None
        return value, attempts - 1, time.perf_counter() - started

    def _count(
        self, usage: dict[str, Any] | None, retries: int, latency: float, *, failed: bool
    ) -> None:
        if self.tally is not None:
            self.tally.add(
                self.role,
                usage=usage,
                retries=retries,
                latency_s=latency,
                failed=failed,
                prices=self.prices,
            )

    def _reply(self, message: Any, retries: int, latency: float) -> ChatReply:
        usage = getattr(message, "usage_metadata", None)
        usage_dict = dict(usage) if usage else None
        self._count(usage_dict, retries, latency, failed=False)
        return ChatReply(
            message=message,
            text=message_text(message),
            retries=retries,
            latency_s=latency,
            usage=usage_dict,
        )

    def invoke(self, messages: MessageDicts) -> ChatReply:
        """Plain chat call; raises LLMError once retries are exhausted."""
        lc_messages = to_langchain_messages(messages)
        message, retries, latency = self._attempts(lambda: self.model.invoke(lc_messages))
        return self._reply(message, retries, latency)

    def supports_structured_output(self) -> bool:
        """Whether the model can bind a schema as a tool (small local models cannot)."""
        if self._structured_ok is None:
            try:
                self.model.with_structured_output(_ProbeSchema)
                self._structured_ok = True
            except (NotImplementedError, ValueError, TypeError):
                self._structured_ok = False
        return self._structured_ok

    def invoke_structured(self, messages: MessageDicts, schema: type[BaseModel]) -> StructuredReply:
        """Ask for ``schema`` via the model's tool/JSON-schema support; keep the raw reply."""
        runnable = self.model.with_structured_output(schema, include_raw=True)
        lc_messages = to_langchain_messages(messages)
        result, retries, latency = self._attempts(lambda: runnable.invoke(lc_messages))
        reply = self._reply(result["raw"], retries, latency)
        parsed = result.get("parsed")
        error = result.get("parsing_error")
        return StructuredReply(
            parsed=parsed if isinstance(parsed, schema) else None,
            raw=reply,
            parsing_error=None if error is None else str(error),
        )


class _ProbeSchema(BaseModel):
    """A throwaway schema used only to ask a model whether it supports structured output."""

    answer: str
