"""The graph's runtime context (its ``context_schema``): everything nodes use, per invoke.

One compiled graph per track serves every run and every LLM server: the tools, chat models,
media cache and trace store reach the nodes as ``runtime.context`` (LangGraph's
``Runtime[GraphContext]``), passed with ``graph.invoke(input, config, context=ctx)`` — also on
a resume, ``graph.invoke(None, config, context=ctx)``. The context is never checkpointed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meragent.agents.chat import RoleChat
from meragent.graphs.media_cache import MediaCache, MediaDecoder, default_decoder
from meragent.schema import TraceStep
from meragent.tools.base import ToolSet


class StepSink(Protocol):
    """Where trace rows go: the run's TraceStore, or Ray's per-batch collector."""

    def add_step(self, step: TraceStep, *, inputs: Any = None) -> Any: ...


@dataclass(frozen=True)
class GraphContext:
    """The dependencies of one run (or one LLM server of a run), shared by all its clips.

    ``tools``: a ToolSet (``acoustic``, ``visual``, ``lexical``, optional ``audio_describer`` /
    ``video_describer``). ``reasoning`` / ``labeler``: RoleChat or None (role skipped).
    ``fusion_model``: a trained attention-fusion predictor (else late fusion with
    ``fusion_weights`` / ``llm_weight``); it reads ``features_dir/<encoder>/<clip>.npy`` when a
    clue has no cached feature. ``few_shot``: show the labeler its examples (off for a LoRA
    tuned without them). ``structured``: force (True/False) or auto-detect (None) the reasoning
    model's structured output.
    """

    tools: ToolSet
    media: MediaCache
    reasoning: RoleChat | None = None
    labeler: RoleChat | None = None
    fusion_model: Any = None
    fusion_weights: Mapping[str, float] = field(default_factory=dict)
    llm_weight: float = 1.0
    grouper: Any = None
    features_dir: Path | None = None
    trace: StepSink | None = None
    structured: bool | None = None
    few_shot: bool = True


def as_role_chat(role: str, model: Any) -> RoleChat | None:
    """A chat model as a RoleChat of ``role`` (a RoleChat or None passes through)."""
    if model is None or isinstance(model, RoleChat):
        return model
    return RoleChat(role, model)


def graph_context(
    tools: ToolSet,
    chat_models: Mapping[str, Any],
    *,
    decoder: MediaDecoder | None = None,
    media: MediaCache | None = None,
    **fields: Any,
) -> GraphContext:
    """A context from loose parts: ``chat_models`` ``{"reasoning": …, "labeler": …}``.

    ``media`` wins over ``decoder`` (default: ``data.media.decode_media``); other keywords are
    :class:`GraphContext` fields.
    """
    return GraphContext(
        tools=tools,
        media=media if media is not None else MediaCache(decoder or default_decoder()),
        reasoning=as_role_chat("reasoning", chat_models.get("reasoning")),
        labeler=as_role_chat("labeler", chat_models.get("labeler")),
        **fields,
    )
