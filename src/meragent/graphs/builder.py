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

Where the next node depends on the clip or the context, the node's update carries it
(LangGraph's ``Command(update=..., goto=...)``, built by :func:`routed` from the node's plain
update): a conditional edge would re-read the whole state once per source node (three times
after the tools), which cost about a tenth of a clip's orchestration. What depends on the track
alone is a static edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langgraph.runtime import Runtime  # evaluated: LangGraph reads the nodes' type hints

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


#: Where a node goes next: the clip's state with the node's update applied, and the context.
Route = Callable[[ClipState, GraphContext], Sequence[str]]


class _Router:
    """Where each node goes next, from last-value state keys (clip, media) and the context."""

    def __init__(self, track: str) -> None:
        self.track = track

    def tools(self, state: ClipState, ctx: GraphContext) -> list[str]:
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

    def after_tools(self, state: ClipState, ctx: GraphContext) -> list[str]:
        return self.describers(state, ctx) or self.after_clues(state, ctx)

    def after_clues(self, state: ClipState, ctx: GraphContext) -> list[str]:
        if ctx.fusion_model is not None and self.track in ("semi", "noise"):
            return ["fusion"]
        return ["reasoning"]

    def after_reasoning(self) -> list[str]:
        """Static: the track alone decides."""
        targets = []
        if self.track in SIX_CLASS_TRACKS:
            targets.append("fusion")
        if self.track in OV_TRACKS:
            targets.append("labeler")
        return targets

    def after_answer(self, state: ClipState, ctx: GraphContext) -> list[str]:
        return ["evaluator"] if state["clip"].has_ground_truth else []


def routed(node: Any, route: Route) -> Any:
    """``node`` whose update also names the next nodes (``Command(update=..., goto=route(...))``).

    ``route`` sees the state with the node's update laid over it, as a conditional edge would
    for the last-value keys it reads (clip, media); no next node ends the clip's graph.
    """
    from langgraph.types import Command

    def run(state: ClipState, runtime: Runtime[GraphContext]) -> Any:
        update = node(state, runtime)
        goto = route({**state, **update}, runtime.context)
        return Command(update=update, goto=list(goto))

    run.__name__ = getattr(node, "__name__", "routed")
    return run


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
    clue_targets = (*DESCRIBER_NODES, "reasoning", "fusion")
    node = traced("load_media", nodes.load_media)
    graph.add_node("load_media", routed(node, route.tools), destinations=tuple(TOOL_NODES))
    for name, modality in TOOL_NODES.items():
        node = traced(name, nodes.tool_node(modality))
        # All tool nodes finish in the same super-step, so the next node runs once.
        graph.add_node(name, routed(node, route.after_tools), destinations=clue_targets)
    for name, attribute in DESCRIBER_NODES.items():
        node = traced(name, nodes.describer_node(attribute, DESCRIBER_MODALITY[name]))
        graph.add_node(name, routed(node, route.after_clues), destinations=("reasoning", "fusion"))
    for name in ("reasoning", "fusion", "labeler", "evaluator"):
        graph.add_node(name, traced(name, getattr(nodes, name)))
    node = traced("answer", nodes.answer)
    graph.add_node("answer", routed(node, route.after_answer), destinations=("evaluator", END))

    graph.add_edge(START, "load_media")
    for target in route.after_reasoning():
        graph.add_edge("reasoning", target)
    graph.add_edge("fusion", "answer")
    graph.add_edge("labeler", "answer")
    graph.add_edge("evaluator", END)
    return graph.compile(checkpointer=checkpointer, name=f"meragent-{track}")
