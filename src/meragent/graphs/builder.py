"""Wire the nodes into one LangGraph ``StateGraph`` and route by track and modality.

```
START → load_media → {acoustic, visual, lexical}          (one super-step, available ones only)
      → {audio_llm, video_llm}                              (when describers are configured)
      → reasoning → {fusion (semi/noise/all), labeler (ov/all)} → answer → evaluator (with GT)
```
With a trained attention-fusion head and a six-class-only track the LLM is skipped:
``… → fusion → answer``. The graph is compiled once per track; the dependencies (tools, chat
models, media cache, trace sink) are its ``context_schema`` (:class:`GraphContext`), passed per
invoke: ``graph.invoke(input, config, context=ctx)``. Routing reads the context too, so one
compiled graph serves every run and LLM server. Tests pass fakes and an ``InMemorySaver``; the
batch runner passes a ``SqliteSaver``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langgraph.runtime import Runtime  # evaluated: LangGraph reads the routers' type hints

from meragent.errors import ConfigError
from meragent.graphs import nodes
from meragent.graphs.context import GraphContext
from meragent.graphs.nodes import DESCRIBER_NODES, TOOL_NODES, modality_available, traced
from meragent.graphs.state import TRACKS, ClipInput, ClipOutput, ClipState
from meragent.schema import Modality

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

SIX_CLASS_TRACKS = ("semi", "noise", "all")
OV_TRACKS = ("ov", "all")
DESCRIBER_MODALITY = {"audio_llm": Modality.ACOUSTIC, "video_llm": Modality.VISUAL}


def checkpoint_serializer() -> Any:
    """A checkpoint serializer that may revive our own state types (and nothing unexpected)."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    from meragent.schema import Clip, Clue, Prediction

    return JsonPlusSerializer(allowed_msgpack_modules=[Clip, Clue, Prediction, Modality])


class _Router:
    """Conditional-edge functions; they read small state values and the run's context."""

    def __init__(self, track: str) -> None:
        self.track = track

    def tools(self, state: ClipState) -> list[str]:
        info = state.get("media", {})
        return [
            node
            for node, modality in TOOL_NODES.items()
            if modality_available(info, state["clip"], modality)
        ]

    def describers(self, state: ClipState, ctx: GraphContext) -> list[str]:
        info = state.get("media", {})
        return [
            node
            for node, attribute in DESCRIBER_NODES.items()
            if getattr(ctx.tools, attribute, None) is not None
            and modality_available(info, state["clip"], DESCRIBER_MODALITY[node])
        ]

    def after_tools(self, state: ClipState, runtime: Runtime[GraphContext]) -> list[str]:
        return self.describers(state, runtime.context) or self.after_clues(state, runtime)

    def after_clues(self, state: ClipState, runtime: Runtime[GraphContext]) -> list[str]:
        if runtime.context.fusion_model is not None and self.track in ("semi", "noise"):
            return ["fusion"]
        return ["reasoning"]

    def after_reasoning(self, state: ClipState) -> list[str]:
        targets = []
        if self.track in SIX_CLASS_TRACKS:
            targets.append("fusion")
        if self.track in OV_TRACKS:
            targets.append("labeler")
        return targets

    def after_answer(self, state: ClipState) -> str:
        return "evaluator" if state["clip"].has_ground_truth else "__end__"


def build_graph(
    track: str = "all", *, checkpointer: Any = None
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the clip graph of ``track``, once; invoke it with ``context=GraphContext(...)``."""
    from langgraph.graph import END, START, StateGraph

    if track not in TRACKS:
        raise ConfigError(f"unknown track {track!r} (choose from {', '.join(TRACKS)})")
    route = _Router(track)
    graph = StateGraph(
        ClipState, context_schema=GraphContext, input_schema=ClipInput, output_schema=ClipOutput
    )
    graph.add_node("load_media", traced("load_media", nodes.load_media))
    for name, modality in TOOL_NODES.items():
        graph.add_node(name, traced(name, nodes.tool_node(modality)))
    for name, attribute in DESCRIBER_NODES.items():
        describer = nodes.describer_node(attribute, DESCRIBER_MODALITY[name])
        graph.add_node(name, traced(name, describer))
    for name in ("reasoning", "fusion", "labeler", "answer", "evaluator"):
        graph.add_node(name, traced(name, getattr(nodes, name)))

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
