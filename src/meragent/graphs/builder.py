"""Wire the nodes into one LangGraph ``StateGraph`` and route by track and modality.

```
START → load_media → {acoustic, visual, lexical}          (one super-step, available ones only)
      → {audio_llm, video_llm}                              (when describers are configured)
      → reasoning → {fusion (semi/noise/all), labeler (ov/all)} → answer → evaluator (with GT)
```
With a trained attention-fusion head and a six-class-only track the LLM is skipped:
``… → fusion → answer``. Tools and chat models are injected, so tests pass fakes and an
``InMemorySaver``; the batch runner passes a ``SqliteSaver``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meragent.agents.chat import RoleChat
from meragent.errors import ConfigError
from meragent.graphs.media_cache import MediaCache, MediaDecoder, default_decoder
from meragent.graphs.nodes import (
    DESCRIBER_NODES,
    TOOL_NODES,
    PipelineDeps,
    PipelineNodes,
    modality_available,
)
from meragent.graphs.state import TRACKS, ClipInput, ClipOutput, ClipState
from meragent.graphs.trace import TraceStore
from meragent.schema import Modality

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

SIX_CLASS_TRACKS = ("semi", "noise", "all")
OV_TRACKS = ("ov", "all")
DESCRIBER_MODALITY = {"audio_llm": Modality.ACOUSTIC, "video_llm": Modality.VISUAL}


def _as_role_chat(role: str, model: Any) -> RoleChat | None:
    if model is None or isinstance(model, RoleChat):
        return model
    return RoleChat(role, model)


def checkpoint_serializer() -> Any:
    """A checkpoint serializer that may revive our own state types (and nothing unexpected)."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    from meragent.schema import Clip, Clue, Prediction

    return JsonPlusSerializer(allowed_msgpack_modules=[Clip, Clue, Prediction, Modality])


class _Router:
    """Conditional-edge functions; they read only small state values."""

    def __init__(self, deps: PipelineDeps, track: str) -> None:
        self.deps = deps
        self.track = track
        self.trained_fusion = deps.fusion_model is not None

    def tools(self, state: ClipState) -> list[str]:
        info = state.get("media", {})
        return [
            node
            for node, modality in TOOL_NODES.items()
            if modality_available(info, state["clip"], modality)
        ]

    def describers(self, state: ClipState) -> list[str]:
        info = state.get("media", {})
        return [
            node
            for node, attribute in DESCRIBER_NODES.items()
            if getattr(self.deps.tools, attribute, None) is not None
            and modality_available(info, state["clip"], DESCRIBER_MODALITY[node])
        ]

    def after_tools(self, state: ClipState) -> list[str]:
        return self.describers(state) or self.after_clues(state)

    def after_clues(self, state: ClipState) -> list[str]:
        if self.trained_fusion and self.track in ("semi", "noise"):
            return ["fusion"]
        return ["reasoning"]

    def after_reasoning(self, state: ClipState) -> list[str]:
        nodes = []
        if self.track in SIX_CLASS_TRACKS:
            nodes.append("fusion")
        if self.track in OV_TRACKS:
            nodes.append("labeler")
        return nodes

    def after_answer(self, state: ClipState) -> str:
        return "evaluator" if state["clip"].has_ground_truth else "__end__"


def build_graph(
    tools: Any,
    chat_models: Mapping[str, Any],
    *,
    track: str = "all",
    checkpointer: Any = None,
    trace: TraceStore | None = None,
    decoder: MediaDecoder | None = None,
    media_cache: MediaCache | None = None,
    fusion_model: Any = None,
    fusion_weights: Mapping[str, float] | None = None,
    llm_weight: float = 1.0,
    grouper: Any = None,
    structured: bool | None = None,
    features_dir: Path | None = None,
    labeler_few_shot: bool = True,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the clip graph.

    ``tools``: an object with ``acoustic``, ``visual``, ``lexical`` ModalityTools and optional
    ``audio_describer`` / ``video_describer``. ``chat_models``: ``{"reasoning": …,
    "labeler": …}`` LangChain chat models or :class:`RoleChat` wrappers (None to skip a role).
    ``decoder`` turns a Clip into DecodedMedia (default: ``data.media.decode_media``).
    ``fusion_model``: a trained attention-fusion predictor (else late fusion); it reads the
    clues' cached features, or ``features_dir/<encoder>/<clip>.npy``.
    ``labeler_few_shot``: show the labeler its examples (off for a LoRA tuned without them).
    """
    from langgraph.graph import END, START, StateGraph

    if track not in TRACKS:
        raise ConfigError(f"unknown track {track!r} (choose from {', '.join(TRACKS)})")
    deps = PipelineDeps(
        tools=tools,
        media=media_cache if media_cache is not None else MediaCache(decoder or default_decoder()),
        reasoning=_as_role_chat("reasoning", chat_models.get("reasoning")),
        labeler=_as_role_chat("labeler", chat_models.get("labeler")),
        fusion_model=fusion_model,
        fusion_weights=dict(fusion_weights or {}),
        llm_weight=llm_weight,
        grouper=grouper,
        features_dir=features_dir,
        trace=trace,
        structured=structured,
        few_shot=labeler_few_shot,
    )
    nodes = PipelineNodes(deps)
    route = _Router(deps, track)
    graph = StateGraph(ClipState, input_schema=ClipInput, output_schema=ClipOutput)

    graph.add_node("load_media", nodes.traced("load_media", nodes.load_media))
    for name, modality in TOOL_NODES.items():
        graph.add_node(name, nodes.traced(name, nodes.tool_node(modality)))
    for name, attribute in DESCRIBER_NODES.items():
        describer = nodes.describer_node(attribute, DESCRIBER_MODALITY[name])
        graph.add_node(name, nodes.traced(name, describer))
    graph.add_node("reasoning", nodes.traced("reasoning", nodes.reasoning))
    graph.add_node("fusion", nodes.traced("fusion", nodes.fusion))
    graph.add_node("labeler", nodes.traced("labeler", nodes.labeler))
    graph.add_node("answer", nodes.traced("answer", nodes.answer))
    graph.add_node("evaluator", nodes.traced("evaluator", nodes.evaluator))

    graph.add_edge(START, "load_media")
    graph.add_conditional_edges("load_media", route.tools, list(TOOL_NODES))
    clue_targets = [*DESCRIBER_NODES, "reasoning", "fusion"]
    for name in TOOL_NODES:
        # All tool nodes finish in the same super-step, so the next node runs once.
        graph.add_conditional_edges(name, route.after_tools, clue_targets)
    for name in DESCRIBER_NODES:
        graph.add_conditional_edges(name, route.after_clues, ["reasoning", "fusion"])
    graph.add_conditional_edges("reasoning", route.after_reasoning, ["fusion", "labeler"])
    graph.add_edge("fusion", "answer")
    graph.add_edge("labeler", "answer")
    graph.add_conditional_edges("answer", route.after_answer, ["evaluator", END])
    graph.add_edge("evaluator", END)
    return graph.compile(checkpointer=checkpointer, name=f"meragent-{track}")
