"""The graph's nodes, one job each; tools, chat models and stores are injected, never loaded.

Every node runs inside :meth:`PipelineNodes.traced`, which times it and writes one ``step`` row
(node, model id, inputs, prompt, raw and parsed output, latency, error, retries) to the trace
store, also when the node raises. Tool failures become explicit "unavailable" clues; an LLM that
stays down after its retries raises, which fails the clip (the batch runner isolates it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meragent.agents.chat import ChatCallError, RoleChat
from meragent.agents.label_agent import extract_labels
from meragent.agents.prompts import spoken_text
from meragent.agents.reasoning import fallback_description, reason
from meragent.data.media_types import DecodedMedia
from meragent.errors import DataError, MediaError
from meragent.graphs.fusion import attention_fusion, late_fusion, modality_probs
from meragent.graphs.media_cache import MediaCache, empty_media
from meragent.graphs.state import ClipState, MediaInfo
from meragent.graphs.trace import TraceStore
from meragent.schema import Clip, Clue, Modality, Prediction, TraceStep

NodeFunc = Callable[[ClipState, "StepRecord"], dict[str, Any]]

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


@dataclass
class PipelineDeps:
    """Everything the nodes use, built once per process and shared by all clips."""

    tools: Any
    media: MediaCache
    reasoning: RoleChat | None = None
    labeler: RoleChat | None = None
    fusion_model: Any | None = None
    fusion_weights: Mapping[str, float] = field(default_factory=dict)
    llm_weight: float = 1.0
    grouper: Any | None = None
    features_dir: Path | None = None
    trace: TraceStore | None = None
    structured: bool | None = None
    few_shot: bool = True


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


def _error_text(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


class PipelineNodes:
    """The node functions, bound to their dependencies."""

    def __init__(self, deps: PipelineDeps) -> None:
        self.deps = deps
        self._tool_locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ------------------------------------------------------------------ tracing

    def traced(self, name: str, func: NodeFunc) -> Any:
        """Wrap a node so each execution writes exactly one step row, error or not.

        Typed ``Any``: LangGraph's ``add_node`` overloads do not accept a plain Callable.
        """

        def run(state: ClipState) -> dict[str, Any]:
            record = StepRecord()
            started_at = datetime.now(UTC)
            clock = time.perf_counter()
            try:
                update = func(state, record)
            except Exception as exc:
                record.error = _error_text(exc)
                self._write_step(name, state, record, started_at, time.perf_counter() - clock)
                raise
            self._write_step(name, state, record, started_at, time.perf_counter() - clock)
            return update

        run.__name__ = name
        return run

    def _write_step(
        self, name: str, state: ClipState, record: StepRecord, started: datetime, latency: float
    ) -> None:
        if self.deps.trace is None:
            return
        step = TraceStep(
            run_id=state.get("run_id", ""),
            clip_id=state["clip"].id,
            node=name,
            model_id=record.model_id,
            prompt=record.prompt,
            raw_output=record.raw_output,
            parsed_output=record.parsed_output,
            latency_s=latency,
            error=record.error,
            retries=record.retries,
            started_at=started,
        )
        self.deps.trace.add_step(step, inputs=record.inputs)

    # ------------------------------------------------------------------ media

    def load_media(self, state: ClipState, record: StepRecord) -> dict[str, Any]:
        """Decode once into the media cache; note missing modalities as unavailable clues."""
        clip = state["clip"]
        record.inputs = {"video": clip.video, "audio": clip.audio, "subtitle": clip.subtitle}
        record.model_id = "decode_media"
        error = None
        try:
            media = self.deps.media.get(clip)
        except MediaError as exc:
            if not (clip.subtitle and clip.subtitle.strip()):
                raise
            # The words survive a broken file: go on with the subtitle alone.
            error = str(exc)
            record.error = _error_text(exc)
            media = empty_media(clip.id, 16000, "decode_failed")
            self.deps.media.put(clip.id, media)
        info = media_info(media, error)
        skipped = [m for m in TOOL_NODES.values() if not modality_available(info, clip, m)]
        if len(skipped) == len(TOOL_NODES):
            raise DataError(f"clip {clip.id}: no usable audio, video or subtitle")
        clues = [Clue.unavailable(m, "load_media", MISSING_REASONS[m]) for m in skipped]
        record.parsed_output = {**info, "skipped": [m.value for m in skipped]}
        flags = [f"media:{flag}" for flag in info.get("flags", [])]
        return {"media": info, "clues": clues, "flags": flags}

    # ------------------------------------------------------------------ tools

    def _lock_for(self, tool: Any) -> threading.Lock | None:
        """Tools that do not declare ``thread_safe = True`` run one clip at a time."""
        if getattr(tool, "thread_safe", False):
            return None
        with self._locks_guard:
            return self._tool_locks.setdefault(id(tool), threading.Lock())

    def _call_tool(self, tool: Any, call: Callable[[], Clue]) -> Clue:
        lock = self._lock_for(tool)
        if lock is None:
            return call()
        with lock:
            return call()

    def tool_node(self, modality: Modality) -> NodeFunc:
        """A node that runs the toolset's tool for ``modality`` and adds its clue."""

        def run(state: ClipState, record: StepRecord) -> dict[str, Any]:
            clip = state["clip"]
            tool = getattr(self.deps.tools, modality.value, None)
            record.inputs = {"media": state.get("media"), "subtitle": clip.subtitle}
            if tool is None:
                clue = Clue.unavailable(modality, "none", "no tool configured")
            else:
                name = str(getattr(tool, "name", type(tool).__name__))
                try:
                    media = self.deps.media.get(clip)
                    clue = self._call_tool(tool, lambda: tool.analyze(clip, media))
                except Exception as exc:  # one tool failing must not lose the other modalities
                    record.error = _error_text(exc)
                    clue = Clue.unavailable(modality, name, record.error)
            record.model_id = clue.model_id or clue.source
            record.raw_output = clue.text or None
            record.parsed_output = clue.model_dump(mode="json")
            update: dict[str, Any] = {"clues": [clue]}
            flags = [f"{modality.value}:{flag}" for flag in clue.flags]
            if not clue.available:
                flags.append(f"{modality.value}:unavailable")
            update["flags"] = flags
            if modality is Modality.LEXICAL:
                update["transcript"] = (
                    spoken_text(clue) if clue.available else (clip.subtitle or "")
                )
            return update

        return run

    def describer_node(self, attribute: str, modality: Modality) -> NodeFunc:
        """A node that asks an audio or video LLM for a free-text description clue."""

        def run(state: ClipState, record: StepRecord) -> dict[str, Any]:
            clip = state["clip"]
            describer = getattr(self.deps.tools, attribute)
            name = str(getattr(describer, "name", type(describer).__name__))
            subtitle = state.get("transcript") or clip.subtitle or ""
            record.inputs = {"subtitle": subtitle, "media": state.get("media")}
            try:
                media = self.deps.media.get(clip)
                clue = self._call_tool(describer, lambda: describer.describe(clip, media, subtitle))
            except Exception as exc:
                record.error = _error_text(exc)
                clue = Clue.unavailable(modality, name, record.error)
            record.model_id = clue.model_id or name
            record.raw_output = clue.text or None
            record.parsed_output = clue.model_dump(mode="json")
            return {"clues": [clue]}

        return run

    # ------------------------------------------------------------------ agents

    def reasoning(self, state: ClipState, record: StepRecord) -> dict[str, Any]:
        """Merge the clues into a description and a six-class choice."""
        clues = state.get("clues", [])
        chat = self.deps.reasoning
        if chat is None:
            description = fallback_description(clues)
            record.parsed_output = {"description": description, "choice": None}
            return {"description": description, "llm_choice": None, "flags": ["reasoning:no_model"]}
        record.model_id = chat.model_id
        try:
            result = reason(chat, clues, structured=self.deps.structured)
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

    def labeler(self, state: ClipState, record: StepRecord) -> dict[str, Any]:
        """Turn the description into open-vocabulary labels."""
        description = state.get("description", "")
        chat = self.deps.labeler
        record.inputs = {"description": description}
        if chat is None:
            return {"labels": [], "flags": ["labeler:no_model"]}
        record.model_id = chat.model_id
        try:
            result = extract_labels(chat, description, few_shot=self.deps.few_shot)
        except ChatCallError as exc:
            record.retries = exc.retries
            raise
        record.prompt = result.prompt
        record.raw_output = result.raw
        record.parsed_output = result.parsed()
        record.retries = result.retries
        return {"labels": result.labels, "flags": [f"labeler:{flag}" for flag in result.flags]}

    def fusion(self, state: ClipState, record: StepRecord) -> dict[str, Any]:
        """The six-class answer: trained attention head if configured, else late fusion."""
        clues = state.get("clues", [])
        choice = state.get("llm_choice")
        per_modality = modality_probs(clues)
        record.inputs = {"modality_probs": per_modality, "llm_choice": choice}
        if self.deps.fusion_model is not None:
            record.model_id = str(getattr(self.deps.fusion_model, "model_id", "attention"))
            info = attention_fusion(
                self.deps.fusion_model,
                clues,
                clip_id=state["clip"].id,
                features_dir=self.deps.features_dir,
                clip=state["clip"],
            )
        else:
            record.model_id = "late_fusion"
            info = late_fusion(
                per_modality,
                choice,
                weights=self.deps.fusion_weights,
                llm_weight=self.deps.llm_weight,
            )
        record.parsed_output = info
        flags = ["fusion:default_class"] if info.get("source") == "default" else []
        return {"fusion": info, "flags": flags}

    # ------------------------------------------------------------------ answer & evaluation

    def answer(self, state: ClipState, record: StepRecord) -> dict[str, Any]:
        """Assemble the clip's Prediction from whatever the track computed."""
        clip = state["clip"]
        fusion = state.get("fusion") or {}
        prediction = Prediction(
            clip_id=clip.id,
            discrete=fusion.get("discrete"),
            probs=fusion.get("probs"),
            valence=fusion.get("valence"),
            openset=list(state.get("labels", [])),
            description=state.get("description"),
            source=str(fusion.get("source", "")),
            flags=sorted(set(state.get("flags", []))),
        )
        record.parsed_output = prediction.model_dump(mode="json")
        return {"prediction": prediction}

    def evaluator(self, state: ClipState, record: StepRecord) -> dict[str, Any]:
        """Score the prediction against the clip's ground truth (six-class and/or open set)."""
        clip = state["clip"]
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
            grouper = self.deps.grouper if self.deps.grouper is not None else IdentityGrouper()
            scores = score_ov({clip.id: clip.openset}, {clip.id: prediction.openset}, grouper)
            metrics["ov_accuracy"] = scores.accuracy
            metrics["ov_recall"] = scores.recall
            record.model_id = grouper_label(grouper)
            record.parsed_output = {**metrics, "grouper": describe_grouper(grouper)}
            return {"metrics": metrics}
        record.parsed_output = metrics
        return {"metrics": metrics}
