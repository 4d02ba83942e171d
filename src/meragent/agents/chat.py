"""Chat-model factory and a resilient caller: one role's config in, a LangChain chat model out.

Backends are looked up by name in a small registry: ``openai`` (any OpenAI-compatible server:
vLLM, llama.cpp server, Ollama, OpenAI), ``local`` (an in-process causal LM, optionally with a
LoRA adapter) and ``py:MODULE:ATTR`` (a plug-in factory). Every call the graph makes goes through
:class:`RoleChat`, which applies one retry policy (LangChain's ``Runnable.with_retry``: the same
bounded attempts and exponential backoff for every transient failure, a garbage body as much as
an HTTP 500; an attempt's time limit is the client's own) and counts tokens with LangChain's
``UsageMetadataCallbackHandler``, so the same policy applies to every backend.
A failed call's message is scrubbed of secrets: servers echo the Authorization header.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from meragent.config import RoleConfig, Settings
from meragent.errors import ConfigError, LLMError, one_line
from meragent.llm_policy import CallPolicy as CallPolicy
from meragent.llm_policy import is_retryable
from meragent.llm_policy import policy_for as policy_for
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
    from meragent.plugins import is_plugin, load_plugin

    factory = _BACKENDS.get(role.backend)
    if factory is None and is_plugin(role.backend):
        factory = load_plugin(role.backend, role=role_name)
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


# --------------------------------------------------------------------------- policy & usage


def _role_usage_handler(model_id: str) -> Any:
    """LangChain's usage-metadata handler; a reply without a model name counts as ``model_id``.

    The stock handler keys usage by ``response_metadata["model_name"]`` and drops replies that
    lack one (test doubles, some custom models): their tokens would vanish from the run record.
    """
    from langchain_core.callbacks import UsageMetadataCallbackHandler
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, LLMResult

    class RoleUsageHandler(UsageMetadataCallbackHandler):
        def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
            for generations in response.generations[:1]:
                for generation in generations[:1]:
                    message = getattr(generation, "message", None)
                    if isinstance(generation, ChatGeneration) and isinstance(message, AIMessage):
                        message.response_metadata.setdefault("model_name", model_id)
            super().on_llm_end(response, **kwargs)

    return RoleUsageHandler()


@dataclass
class RoleUsage:
    """One role's calls in one run; tokens are read from LangChain's usage callback."""

    handler: Any
    prices: tuple[float, float] = (0.0, 0.0)
    calls: int = 0
    failures: int = 0
    retries: int = 0
    latency_s: float = 0.0

    def tokens(self) -> tuple[int, int]:
        usage = list(self.handler.usage_metadata.values())
        return (
            sum(int(u.get("input_tokens", 0) or 0) for u in usage),
            sum(int(u.get("output_tokens", 0) or 0) for u in usage),
        )

    def as_dict(self) -> dict[str, float | int]:
        tokens_in, tokens_out = self.tokens()
        cost = (tokens_in * self.prices[0] + tokens_out * self.prices[1]) / 1000.0
        return {
            "calls": self.calls,
            "failures": self.failures,
            "retries": self.retries,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_usd": cost,
            "latency_s": self.latency_s,
        }


@dataclass
class UsageTally:
    """Per-run, per-role calls, retries, tokens and (when prices are known) cost; thread-safe.

    Tokens come from one ``UsageMetadataCallbackHandler`` per role (:meth:`callbacks`), passed
    to every model call of that role; prices are USD per 1,000 input / output tokens.
    """

    roles: dict[str, RoleUsage] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _entry(self, role: str, model_id: str = "") -> RoleUsage:
        with self._lock:
            entry = self.roles.get(role)
            if entry is None:
                entry = self.roles[role] = RoleUsage(_role_usage_handler(model_id or role))
            return entry

    def register(self, role: str, model_id: str, prices: tuple[float, float]) -> None:
        """Declare a role (its model id names replies without one) and its prices."""
        self._entry(role, model_id).prices = prices

    def callbacks(self, role: str) -> list[Any]:
        """The callback handlers a call of ``role`` passes to the model."""
        return [self._entry(role).handler]

    def count(self, role: str, *, retries: int, latency_s: float, failed: bool) -> None:
        """Count one call (successful or not) of ``role``."""
        entry = self._entry(role)
        with self._lock:
            entry.calls += 1
            entry.failures += int(failed)
            entry.retries += retries
            entry.latency_s += latency_s

    def as_dict(self) -> dict[str, dict[str, float | int]]:
        with self._lock:
            entries = sorted(self.roles.items())
        return {name: entry.as_dict() for name, entry in entries}

    def total_tokens(self) -> int:
        return sum(
            int(usage["input_tokens"]) + int(usage["output_tokens"])
            for usage in self.as_dict().values()
        )


# --------------------------------------------------------------------------- resilient calls


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


#: The failed attempts of the call running in this context (see :func:`_counted_retryable`).
_FAILED_ATTEMPTS: ContextVar[list[int] | None] = ContextVar(
    "meragent_failed_attempts", default=None
)


def _counted_retryable(exc: BaseException) -> bool:
    """:func:`is_retryable`, counting the failed attempt for the call that runs it.

    ``with_retry`` asks its predicate exactly once per failed attempt, in the caller's context
    (LangChain runs the retry loop in a copy of it: the counter list is shared, not copied), so
    one retrying runnable per role serves every thread and still gives each call its count.
    """
    failures = _FAILED_ATTEMPTS.get()
    if failures is not None:
        failures[0] += 1
    return is_retryable(exc)


class RoleChat:
    """A chat model bound to a role, called under the retry policy with usage counting.

    The retrying runnables (plain, and one per structured-output schema) and the call config
    are built once: a call is the retry layer around the model, nothing more.
    """

    def __init__(
        self,
        role: str,
        model: BaseChatModel,
        *,
        policy: CallPolicy | None = None,
        tally: UsageTally | None = None,
        prices: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        from langchain_core.runnables import RunnableConfig

        self.role = role
        self.model = model
        self.model_id = model_id_of(model)
        self.policy = policy or CallPolicy()
        self.tally = tally
        self._structured_ok: bool | None = None
        if tally is not None:
            tally.register(role, self.model_id, prices)
        self._config = RunnableConfig(callbacks=tally.callbacks(role)) if tally else None
        self._plain = self.policy.retrying(model, _counted_retryable)
        self._by_schema: dict[type[BaseModel], Runnable[Any, Any]] = {}
        self._by_schema_lock = threading.Lock()

    def _structured(self, schema: type[BaseModel]) -> Runnable[Any, Any]:
        """The retrying structured-output runnable of ``schema`` (built on first use)."""
        with self._by_schema_lock:
            runnable = self._by_schema.get(schema)
            if runnable is None:
                bound = self.model.with_structured_output(schema, include_raw=True)
                runnable = self._by_schema[schema] = self.policy.retrying(bound, _counted_retryable)
            return runnable

    def _attempts(self, runnable: Runnable[Any, Any], value: Any) -> tuple[Any, int, float]:
        """``runnable.invoke(value)`` (a retrying one); return (result, retries, seconds)."""
        started = time.perf_counter()
        failures = [0]
        token = _FAILED_ATTEMPTS.set(failures)
        try:
            result = runnable.invoke(value, self._config)
        except Exception as exc:
            elapsed = time.perf_counter() - started
            attempts = max(failures[0], 1)
            self._count(attempts - 1, elapsed, failed=True)
            raise ChatCallError(
                f"{self.role} ({self.model_id}) failed after {attempts} attempt(s): "
                f"{one_line(exc, with_type=True)}",
                retries=attempts - 1,
                transient=is_retryable(exc),
            ) from None
        finally:
            _FAILED_ATTEMPTS.reset(token)
        return result, failures[0], time.perf_counter() - started

    def _count(self, retries: int, latency: float, *, failed: bool) -> None:
        if self.tally is not None:
            self.tally.count(self.role, retries=retries, latency_s=latency, failed=failed)

    def _reply(self, message: Any, retries: int, latency: float) -> ChatReply:
        usage = getattr(message, "usage_metadata", None)
        self._count(retries, latency, failed=False)
        return ChatReply(
            message=message,
            text=message_text(message),
            retries=retries,
            latency_s=latency,
            usage=dict(usage) if usage else None,
        )

    def invoke(self, messages: MessageDicts) -> ChatReply:
        """Plain chat call; raises LLMError once retries are exhausted."""
        lc_messages = to_langchain_messages(messages)
        message, retries, latency = self._attempts(self._plain, lc_messages)
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
        lc_messages = to_langchain_messages(messages)
        result, retries, latency = self._attempts(self._structured(schema), lc_messages)
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
