"""The one retry policy of every LLM call (chat roles and describers): LangChain's ``with_retry``.

An attempt's time limit is the client's own (``ChatOpenAI(timeout=..., max_retries=0)``; a local
model is bounded by ``max_new_tokens``), so no attempt runs on an abandoned thread, and the
client does not retry on top (that would multiply the attempts of some failures, such as an
HTTP 500, and not others, such as a garbage body). Lives outside ``agents/`` so ``tools/`` (the
describers) can use it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meragent.config import RoleConfig, Settings

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable


@dataclass(frozen=True)
class CallPolicy:
    """How often (and how patiently) to retry; the one retry policy of every LLM call.

    An attempt's time limit is the client's own (``ChatOpenAI(timeout=...)``; a local model is
    bounded by ``max_new_tokens``), so no attempt runs on an abandoned thread.
    """

    max_retries: int = 2
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    jitter_s: float = 0.1

    def retrying(
        self,
        runnable: Runnable[Any, Any],
        retry_if: Callable[[BaseException], bool] | None = None,
    ) -> Runnable[Any, Any]:
        """``runnable`` with this policy: transient failures retried with exponential backoff.

        ``retry_if`` (default :func:`is_retryable`) is asked once per failed attempt; callers
        that count attempts pass a wrapper of ``is_retryable``. Build the result once and reuse
        it: it holds no per-call state.
        """
        return runnable.with_retry(
            retry_if_exception_type=retry_if or is_retryable,
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
    return CallPolicy(
        max_retries=int(role.options.get("max_retries", settings.llm_max_retries)),
        backoff_s=float(role.options.get("backoff_s", 0.5)),
    )


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
