"""An in-process LangChain chat model around ``meragent.tools.causal_lm`` (local weights + LoRA).

Weights are loaded by ``tools.causal_lm.load_causal_lm`` (the only place that loads them); this
class only turns LangChain messages into the role/content dicts ``generate_chat`` expects and the
result back into an ``AIMessage`` with token usage. It imports langchain, so it is imported lazily.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

from meragent.tools.causal_lm_decoding import AnswerShape

_ROLE_OF_TYPE = {"system": "system", "human": "user", "ai": "assistant"}
# One lock per loaded model: the reasoning and labeler roles often share the same weights.
_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def generation_lock(lm: Any) -> threading.Lock:
    """The lock that serialises generations on one loaded model (keyed by its torch module)."""
    key = getattr(lm, "model", lm)  # LoadedLM is an unhashable dataclass; its module is not
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(key)
        if lock is None:
            lock = _MODEL_LOCKS[key] = threading.Lock()
        return lock


def to_chat_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages -> ``[{"role", "content"}]`` for a chat template."""
    converted = []
    for message in messages:
        role = _ROLE_OF_TYPE.get(message.type)
        if role is None:
            raise ValueError(f"local chat model cannot take a {message.type!r} message")
        content = message.content if isinstance(message.content, str) else str(message.content)
        converted.append({"role": role, "content": content})
    return converted


def _cut_at_stop(text: str, stop: list[str] | None) -> str:
    for marker in stop or []:
        index = text.find(marker)
        if index >= 0:
            text = text[:index]
    return text


class LocalChatModel(BaseChatModel):
    """Greedy (or sampled) generation from a loaded causal LM; one generation at a time."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    lm: Any = Field(exclude=True, repr=False)
    model_id: str
    max_new_tokens: int = 128
    temperature: float = 0.0
    #: ``prose`` ends at a repeated sentence (cut from the answer); ``list`` at the end of the
    #: list line or a repeated item (the labeler); ``free`` stops only at EOS or the cap.
    answer_shape: AnswerShape = "prose"

    @property
    def _llm_type(self) -> str:
        return "meragent-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "max_new_tokens": self.max_new_tokens}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        from meragent.tools.causal_lm import generate_chat
        from meragent.tools.causal_lm_decoding import DecodingSettings

        decoding = DecodingSettings(
            max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens)),
            temperature=self.temperature,
            shape=self.answer_shape,
        )
        # A torch model shared by several graph threads and roles: one generation at a time.
        with generation_lock(self.lm):
            result = generate_chat(self.lm, to_chat_dicts(messages), decoding=decoding)
        message = AIMessage(
            content=_cut_at_stop(result.text, stop),
            usage_metadata={
                "input_tokens": result.prompt_tokens,
                "output_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            },
            response_metadata={"model_name": self.model_id},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
