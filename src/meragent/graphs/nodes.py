"""The graph's nodes, one job each: plain LangGraph nodes ``(state, runtime) -> update``.

Dependencies come from ``runtime.context`` (:class:`GraphContext`), never from closures. Every
node runs inside :func:`traced`, the one place trace rows are made: it times the node and writes
one ``step`` row (node, model id, inputs, prompt, raw and parsed output, latency, error,
retries) to the context's trace sink, also when the node raises. A node describes itself by
filling :func:`step_record`. Tool failures become explicit "unavailable" clues; an LLM that
stays down after its retries raises, which fails the clip (the batch runner isolates it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from langgraph.runtime import Runtime  # evaluated: LangGraph reads the nodes' type hints

from meragent.agents.chat import ChatCallError
from meragent.agents.label_agent import extract_labels
from meragent.agents.prompts import spoken_text
from meragent.agents.reasoning import fallback_description, reason
from meragent.data.media_types import DecodedMedia
from meragent.errors import DataError, MediaError, one_line
from meragent.graphs.context import GraphContext
from meragent.graphs.fusion import attention_fusion, late_fusion, modality_probs
from meragent.graphs.media_cache import empty_media
from meragent.graphs.state import ClipState, MediaInfo
from meragent.schema import Clip, Clue, Modality, Prediction, TraceStep

#: A node: LangGraph state and runtime in, a state update out.
Node = Callable[[ClipState, Runtime[GraphContext]], dict[str, Any]]

TOOL_NODES: dict[str, Modality] = {
    "acoustic": Modality.ACOUSTIC,
    "visual": Modality.VISUAL,
    "lexical": Modality.LEXICAL,
}
#: Why a tool node is skipped, per modality (shown to the reasoning model).
MISSING_REASONS: dict[Modality, str] = {
    Modality.ACOUSTIC: "no audio",
    Modality.VISUAL: "no video",
    Modality.LEXICAL: "no subtitle and no audio",
}
#: Describer nodes (audio / video LLMs) and the toolset attribute that holds each.
DESCRIBER_NODES: dict[str, str] = {"audio_llm": "audio_describer", "video_llm": "video_describer"}


@dataclass
class StepRecord:
    """What a node reports about itself for its trace row."""

    model_id: str | None = None
    inputs: Any = None
    prompt: Any = None
    raw_output: str | None = None
    parsed_output: Any = None
    retries: int = 0
    error: str | None = None


_CURRENT_STEP: ContextVar[StepRecord | None] = ContextVar("meragent_step", default=None)


def step_record() -> StepRecord:
    """The trace record of the node running now (a throwaway one outside :func:`traced`)."""
    record = _CURRENT_STEP.get()
    return record if record is not None else StepRecord()


def traced(name: str, node: Node) -> Any:
    """Wrap a node so each execution writes exactly one step row, error or not.

    Typed ``Any``: LangGraph's ``add_node`` overloads do not accept a plain Callable.
    """

    def run(state: ClipState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
        if not isinstance(runtime.context, GraphContext):
            got = type(runtime.context).__name__
            raise TypeError(f"the clip graph is invoked with context=GraphContext(...), not {got}")
        record = StepRecord()
        token = _CURRENT_STEP.set(record)
        started_at = datetime.now(UTC)
        clock = time.perf_counter()
        try:
            return node(state, runtime)
        except Exception as exc:
            record.error = one_line(exc, with_type=True)
            raise
        finally:
            _CURRENT_STEP.reset(token)
            _write_step(runtime.context, name, state, record, started_at, clock)

    run.__name__ = name
    return run


def _write_step(
    ctx: GraphContext,
    name: str,
    state: ClipState,
    record: StepRecord,
    started: datetime,
    clock: float,
) -> None:
    if ctx.trace is None:
        return
    step = TraceStep(
        run_id=state.get("run_id", ""),
        clip_id=state["clip"].id,
        node=name,
        model_id=record.model_id,
        prompt=record.prompt,
        raw_output=record.raw_output,
        parsed_output=record.parsed_output,
        latency_s=time.perf_counter() - clock,
        error=record.error,
        retries=record.retries,
        started_at=started,
    )
    ctx.trace.add_step(step, inputs=record.inputs)


def media_info(media: DecodedMedia, error: str | None = None) -> MediaInfo:
    """The small, checkpointable summary of decoded media."""
    return MediaInfo(
        duration=float(media.duration),
        sample_rate=int(media.sample_rate),
        has_audio=media.has_audio,
        has_video=media.has_video,
        n_frames=0 if media.frames is None else len(media.frames),
        flags=list(media.flags),
        error=error,
    )


def modality_available(info: MediaInfo, clip: Clip, modality: Modality) -> bool:
    """Whether a tool can do anything: audio for acoustic, frames for visual, words for lexical."""
    if modality is Modality.ACOUSTIC:
        return bool(info.get("has_audio"))
    if modality is Modality.VISUAL:
        return bool(info.get("has_video"))
    return bool(clip.subtitle and clip.subtitle.strip()) or bool(info.get("has_audio"))


_TOOL_LOCKS: dict[int, threading.Lock] = {}
_TOOL_LOCKS_GUARD = threading.Lock()


def _lock_for(tool: Any) -> threading.Lock | None:
    """Tools that do not declare ``thread_safe = True`` run one clip at a time, process-wide."""
    if getattr(tool, "thread_safe", False):
        return None
    with _TOOL_LOCKS_GUARD:
        return _TOOL_LOCKS.setdefault(id(tool), threading.Lock())


def _call_tool(tool: Any, call: Callable[[], Clue]) -> Clue:
    lock = _lock_for(tool)
    if lock is None:
        return call()
    with lock:
        return call()


# ---------------------------------------------------------------------- media


def load_media(state: ClipState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """Decode once into the media cache; note missing modalities as unavailable clues."""
    ctx, record, clip = runtime.context, step_record(), state["clip"]
    record.inputs = {"video": clip.video, "audio": clip.audio, "subtitle": clip.subtitle}
    record.model_id = "decode_media"
    error = None
    try:
        media = ctx.media.get(clip)
    except MediaError as exc:
        if not (clip.subtitle and clip.subtitle.strip()):
            raise
        # The words survive a broken file: go on with the subtitle alone.
        error = str(exc)
        record.error = one_line(exc, with_type=True)
        media = empty_media(clip.id, 16000, "decode_failed")
        ctx.media.put(clip.id, media)
    info = media_info(media, error)
    skipped = [m for m in TOOL_NODES.values() if not modality_available(info, clip, m)]
    if len(skipped) == len(TOOL_NODES):
        raise DataError(f"clip {clip.id}: no usable audio, video or subtitle")
    clues = [Clue.unavailable(m, "load_media", MISSING_REASONS[m]) for m in skipped]
    record.parsed_output = {**info, "skipped": [m.value for m in skipped]}
    flags = [f"media:{flag}" for flag in info.get("flags", [])]
    return {"media": info, "clues": clues, "flags": flags}


# ---------------------------------------------------------------------- tools


def _tool_update(modality: Modality, clip: Clip, clue: Clue) -> dict[str, Any]:
    record = step_record()
    record.model_id = clue.model_id or clue.source
    record.raw_output = clue.text or None
    record.parsed_output = clue.model_dump(mode="json")
    flags = [f"{modality.value}:{flag}" for flag in clue.flags]
    if not clue.available:
        flags.append(f"{modality.value}:unavailable")
    update: dict[str, Any] = {"clues": [clue], "flags": flags}
    if modality is Modality.LEXICAL:
        update["transcript"] = spoken_text(clue) if clue.available else (clip.subtitle or "")
    return update


def tool_node(modality: Modality) -> Node:
    """A node that runs the toolset's tool for ``modality`` and adds its clue."""

    def run(state: ClipState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
        ctx, record, clip = runtime.context, step_record(), state["clip"]
        tool = getattr(ctx.tools, modality.value, None)
        record.inputs = {"media": state.get("media"), "subtitle": clip.subtitle}
        if tool is None:
            clue = Clue.unavailable(modality, "none", "no tool configured")
        else:
            name = str(getattr(tool, "name", type(tool).__name__))
            try:
                media = ctx.media.get(clip)
                clue = _call_tool(tool, lambda: tool.analyze(clip, media))
            except Exception as exc:  # one tool failing must not lose the other modalities
                record.error = one_line(exc, with_type=True)
                clue = Clue.unavailable(modality, name, record.error)
        return _tool_update(modality, clip, clue)

    return run


def describer_node(attribute: str, modality: Modality) -> Node:
    """A node that asks an audio or video LLM for a free-text description clue."""

    def run(state: ClipState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
        ctx, record, clip = runtime.context, step_record(), state["clip"]
        describer = getattr(ctx.tools, attribute)
        name = str(getattr(describer, "name", type(describer).__name__))
        subtitle = state.get("transcript") or clip.subtitle or ""
        record.inputs = {"subtitle": subtitle, "media": state.get("media")}
        try:
            media = ctx.media.get(clip)
            clue = _call_tool(describer, lambda: describer.describe(clip, media, subtitle))
        except Exception as exc:
            record.error = one_line(exc, with_type=True)
            clue = Clue.unavailable(modality, name, record.error)
        record.model_id = clue.model_id or name
        record.raw_output = clue.text or None
        record.parsed_output = clue.model_dump(mode="json")
        return {"clues": [clue]}

    return run


# ---------------------------------------------------------------------- agents


def reasoning(state: ClipState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """Merge the clues into a description and a six-class choice."""
    ctx, record = runtime.context, step_record()
    clues = state.get("clues", [])
    chat = ctx.reasoning
    if chat is None:
        description = fallback_description(clues)
        record.parsed_output = {"description": description, "choice": None}
        return {"description": description, "llm_choice": None, "flags": ["reasoning:no_model"]}
    record.model_id = chat.model_id
    try:
        result = reason(chat, clues, structured=ctx.structured)
    except ChatCallError as exc:
        record.retries = exc.retries  # the trace shows how hard we tried
        raise
    record.prompt = result.prompt
    record.raw_output = result.raw
    record.parsed_output = result.parsed()
    record.retries = result.retries
    return {
        "description": result.description,
        "llm_choice": result.choice,
        "flags": [f"reasoning:{flag}" for flag in result.flags],
    }


def labeler(state: ClipState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """Turn the description into open-vocabulary labels."""
    ctx, record = runtime.context, step_record()
    description = state.get("description", "")
    chat = ctx.labeler
    record.inputs = {"description": description}
    if chat is None:
        return {"labels": [], "flags": ["labeler:no_model"]}
    record.model_id = chat.model_id
    try:
        result = extract_labels(chat, description, few_shot=ctx.few_shot)
    except ChatCallError as exc:
        record.retries = exc.retries
        raise
    record.prompt = result.prompt
    record.raw_output = result.raw
    record.parsed_output = result.parsed()
    record.retries = result.retries
    return {"labels": result.labels, "flags": [f"labeler:{flag}" for flag in result.flags]}


def fusion(state: ClipState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """The six-class answer: trained attention head if configured, else late fusion."""
    ctx, record = runtime.context, step_record()
    clues = state.get("clues", [])
    choice = state.get("llm_choice")
    per_modality = modality_probs(clues)
    record.inputs = {"modality_probs": per_modality, "llm_choice": choice}
    if ctx.fusion_model is not None:
        record.model_id = str(getattr(ctx.fusion_model, "model_id", "attention"))
        info = attention_fusion(
            ctx.fusion_model,
            clues,
            clip_id=state["clip"].id,
            features_dir=ctx.features_dir,
            clip=state["clip"],
        )
    else:
        record.model_id = "late_fusion"
        info = late_fusion(
            per_modality, choice, weights=ctx.fusion_weights, llm_weight=ctx.llm_weight
        )
    record.parsed_output = info
    flags = ["fusion:default_class"] if info.get("source") == "default" else []
    return {"fusion": info, "flags": flags}


# ---------------------------------------------------------------------- answer & evaluation


def answer(state: ClipState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """Assemble the clip's Prediction from whatever the track computed."""
    clip = state["clip"]
    fusion_info = state.get("fusion") or {}
    prediction = Prediction(
        clip_id=clip.id,
        discrete=fusion_info.get("discrete"),
        probs=fusion_info.get("probs"),
        valence=fusion_info.get("valence"),
        openset=list(state.get("labels", [])),
        description=state.get("description"),
        source=str(fusion_info.get("source", "")),
        flags=sorted(set(state.get("flags", []))),
    )
    step_record().parsed_output = prediction.model_dump(mode="json")
    return {"prediction": prediction}


def evaluator(state: ClipState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """Score the prediction against the clip's ground truth (six-class and/or open set)."""
    record, clip = step_record(), state["clip"]
    prediction = state["prediction"]
    metrics: dict[str, Any] = {}
    record.inputs = {"discrete": clip.discrete, "openset": clip.openset}
    if clip.discrete is not None and prediction.discrete is not None:
        metrics["discrete_correct"] = prediction.discrete == clip.discrete
    if clip.openset is not None and "labels" in state:
        from meragent.eval.grouping import IdentityGrouper
        from meragent.eval.ov import score_ov
        from meragent.graphs.runtime import describe_grouper, grouper_label

        # The run's grouper, the one metrics.json and `meragent eval ov` use.
        grouper = runtime.context.grouper
        grouper = grouper if grouper is not None else IdentityGrouper()
        scores = score_ov({clip.id: clip.openset}, {clip.id: prediction.openset}, grouper)
        metrics["ov_accuracy"] = scores.accuracy
        metrics["ov_recall"] = scores.recall
        record.model_id = grouper_label(grouper)
        record.parsed_output = {**metrics, "grouper": describe_grouper(grouper)}
        return {"metrics": metrics}
    record.parsed_output = metrics
    return {"metrics": metrics}
