"""The three Ray Data stages of a scaled-out batch, and the columns that carry a clip between them.

1. :func:`decode_batch` (CPU tasks): decode each clip with the runtime's decoder.
2. :class:`EncoderStage` (an actor pool, ``num_gpus`` each): every batchable tool's public
   ``prepare`` → ``encode_batch`` over the whole batch (``tools.encoding.encode_items``); a
   vector already in the feature cache is reused.
3. :class:`GraphStage` (an actor pool, threads inside): the unchanged clip graph per clip. Each
   tool node calls the tool's ``finish(clip, media, vector)`` with stage 2's vector (or error);
   the decoder replays stage 1's media (or decode error). ``finish`` does exactly what the
   in-process tool does with the vector (cache write, heads, clue text), so the answers equal
   the in-process executor's. Trace steps are collected, not written: the driver
   commits them with the clip's result, because it alone owns the run's SQLite store.

The columns a row carries between stages and their codecs are in ``graphs.ray_columns``
(re-exported here for the executor and the tests).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from meragent.config import Settings
from meragent.data.media_types import DecodedMedia
from meragent.errors import ConfigError, DataError
from meragent.graphs.ray_columns import (
    AUDIO,
    CLIP,
    CLIP_ID,
    DECODE_ERROR,
    FRAME_TIMES,
    FRAMES,
    MEDIA,
    PAYLOAD,
    SEQ,
    STATUS,
    USAGE,
    array_bytes,
    bytes_array,
    error_column,
    error_json,
    json_safe,
    media_json,
    objects,
    rebuild_error,
    recipe_column,
    row_media,
    vector_column,
)
from meragent.graphs.runtime import RunDeps
from meragent.schema import Clip, Clue, TraceStep
from meragent.tools.base import BatchableTool, Describer, ModalityTool, ToolSet
from meragent.tools.encoding import MODALITIES
from meragent.tools.lazy import shared

#: ``factory(settings, track=...)`` -> RunDeps; ``graphs.runtime.load_run_deps`` by default.
RuntimeFactory = Callable[..., RunDeps]


# --------------------------------------------------------------------------- shared context


@dataclass(frozen=True)
class StageContext:
    """What every stage needs to rebuild the run's runtime inside a Ray worker."""

    settings: Settings
    track: str
    run_id: str
    factory: RuntimeFactory
    #: Unique per batch run: keys the per-process runtime of the decode tasks.
    token: str
    concurrency: int = 1
    llm_urls: tuple[str, ...] = ()
    #: Whether the encoder actors hold GPUs (otherwise every stage runs on CPU).
    gpu: bool = False

    def cpu_settings(self) -> Settings:
        """The settings with ``device=auto`` pinned to CPU (a stage without a GPU reservation)."""
        if self.settings.device == "auto":
            return self.settings.model_copy(update={"device": "cpu"})
        return self.settings

    def tool_settings(self, *, gpu: bool = False) -> Settings:
        """Settings for the stages that only decode and encode: no chat role is built there
        (a ``local`` LLM backend would otherwise load its weights in every such worker)."""
        return without_chat_roles(self.settings if gpu else self.cpu_settings())

    def runtime(self, settings: Settings) -> RunDeps:
        return self.factory(settings, track=self.track)


#: Profile roles that build chat models when a RunDeps is made.
CHAT_ROLE_NAMES: tuple[str, ...] = ("reasoning_llm", "labeler_llm")


def without_chat_roles(settings: Settings, *, only_backend: str | None = None) -> Settings:
    """A copy whose chat roles are switched off (all, or only those using ``only_backend``)."""
    from meragent.config import RoleConfig

    models = dict(settings.models)
    for role in CHAT_ROLE_NAMES:
        if only_backend is None or settings.role(role).backend == only_backend:
            models[role] = RoleConfig(backend="none")
    return settings.model_copy(update={"models": models})


# --------------------------------------------------------------------------- stage 1: decode


def decode_clip(clip: Clip, decoder: Callable[[Clip], DecodedMedia]) -> dict[str, Any]:
    """One clip's stage-1 columns; a failure is recorded in the row, never raised."""
    row: dict[str, Any] = {MEDIA: "", AUDIO: b"", FRAMES: b"", FRAME_TIMES: b"", DECODE_ERROR: ""}
    try:
        media = decoder(clip)
    except Exception as exc:  # replayed in the graph stage, where load_media handles it
        row[DECODE_ERROR] = error_json(exc)
        return row
    row[MEDIA] = media_json(media)
    row[AUDIO] = array_bytes(media.audio)
    row[FRAMES] = array_bytes(media.frames)
    row[FRAME_TIMES] = array_bytes(media.frame_times)
    return row


def decode_batch(batch: dict[str, np.ndarray], context: StageContext) -> dict[str, np.ndarray]:
    """Ray Data task: decode a batch of clips."""
    runtime = shared(
        ("ray-decode", context.token), lambda: context.runtime(context.tool_settings())
    )
    decoder = runtime.get().decoder
    rows = [decode_clip(Clip.model_validate_json(str(text)), decoder) for text in batch[CLIP]]
    columns = {SEQ: np.asarray(batch[SEQ], dtype=np.int64), CLIP: objects(list(batch[CLIP]))}
    for name in rows[0] if rows else ():
        columns[name] = objects([row[name] for row in rows])
    return columns


# --------------------------------------------------------------------------- stage 2: encoders


class EncoderStage:
    """Ray Data actor: each batchable tool's ``prepare`` → ``encode_batch`` over the batch.

    A vector already in the feature cache (same recipe, same source) is reused; a clip the tool
    would not encode (no modality, no subtitle yet, decode failed) gets no vector and its tool
    node does what it does in-process. Inputs are the tools' own, so the vectors equal theirs.
    """

    def __init__(self, context: StageContext) -> None:
        from meragent.tools.encoding import batchable_tools

        runtime = context.runtime(context.tool_settings(gpu=context.gpu))
        self.tools = batchable_tools(runtime.tools)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from meragent.tools.encoding import encode_items

        clips = [Clip.model_validate_json(str(text)) for text in batch[CLIP]]
        items = [(clip, row_media(batch, index)) for index, clip in enumerate(clips)]
        columns = dict(batch)
        for modality, tool in self.tools.items():
            outcomes = encode_items(tool, items, batch_size=max(1, len(items)))
            columns[vector_column(modality)] = objects(
                [array_bytes(o) if isinstance(o, np.ndarray) else b"" for o in outcomes]
            )
            columns[error_column(modality)] = objects(
                [error_json(o) if isinstance(o, BaseException) else "" for o in outcomes]
            )
            columns[recipe_column(modality)] = objects([tool.recipe_digest()] * len(items))
        return columns


# --------------------------------------------------------------------------- stage 3: the graph


@dataclass
class ClipStaging:
    """What stages 1-2 produced for one clip: its media (or decode error) and its vectors."""

    media: DecodedMedia | None = None
    decode_error: BaseException | None = None
    #: Per modality: the encoder stage's vector, or the error it raised for this clip.
    encoded: dict[str, np.ndarray | BaseException] = field(default_factory=dict)
    #: Per modality: the recipe digest (model, settings, precision) the vector was made with.
    recipes: dict[str, str] = field(default_factory=dict)


def staging_from_row(batch: dict[str, np.ndarray], index: int) -> ClipStaging:
    staging = ClipStaging(media=row_media(batch, index))
    if batch[DECODE_ERROR][index]:
        staging.decode_error = rebuild_error(str(batch[DECODE_ERROR][index]))
    for modality in MODALITIES:
        if vector_column(modality) not in batch:
            continue
        if recipe_column(modality) in batch:
            staging.recipes[modality] = str(batch[recipe_column(modality)][index])
        error = batch[error_column(modality)][index]
        vector = bytes_array(batch[vector_column(modality)][index])
        if error:
            staging.encoded[modality] = rebuild_error(str(error))
        elif vector is not None:
            staging.encoded[modality] = vector
    return staging


class StagedInputs:
    """Thread-safe registry of the clips a graph actor is running, by clip id."""

    def __init__(self) -> None:
        self._items: dict[str, ClipStaging] = {}
        self._lock = threading.Lock()

    def put(self, clip_id: str, staging: ClipStaging) -> None:
        with self._lock:
            self._items[clip_id] = staging

    def get(self, clip_id: str) -> ClipStaging | None:
        with self._lock:
            return self._items.get(clip_id)

    def drop(self, clip_id: str) -> None:
        with self._lock:
            self._items.pop(clip_id, None)

    def decode(self, clip: Clip) -> DecodedMedia:
        """The graph's media decoder: stage 1's media, or stage 1's decode error raised again."""
        staging = self.get(clip.id)
        if staging is None:
            raise DataError(f"clip {clip.id}: no decoded media came from the decode stage")
        if staging.decode_error is not None:
            raise staging.decode_error
        assert staging.media is not None
        return staging.media


def _digest(tool: BatchableTool) -> str | None:
    try:
        return tool.recipe_digest()
    except ConfigError:  # a tool without an encoder: nothing was staged for it
        return None


class _SharedInner:
    """A wrapper around a tool the graphs of one actor share: calls into it one at a time,
    unless it says it is thread-safe (the graphs' own per-tool locks are per graph)."""

    inner: Any
    _lock: threading.Lock

    @property
    def name(self) -> str:
        return str(getattr(self.inner, "name", type(self.inner).__name__))

    def _serialised(self, call: Callable[[], Clue]) -> Clue:
        if getattr(self.inner, "thread_safe", False):
            return call()
        with self._lock:
            return call()


@dataclass
class StagedTool(_SharedInner):
    """A toolset tool that, per clip, uses what the earlier stages computed for that clip.

    It serialises calls itself when the inner tool is not thread-safe (and says it is safe), so
    that the graphs of one actor, one per LLM server, share one lock per tool.
    """

    modality: str
    inner: ModalityTool
    staged: StagedInputs
    thread_safe: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def analyze(self, clip: Clip, media: DecodedMedia) -> Clue:
        """``finish`` with the encoder stage's vector for this clip (``analyze`` without one)."""
        staging = self.staged.get(clip.id)
        if isinstance(self.inner, BatchableTool):
            vector = None if staging is None else staging.encoded.get(self.modality)
            if staging is not None and staging.recipes.get(self.modality) != _digest(self.inner):
                # The encoder actor's tool resolved another recipe (e.g. bf16 on its GPU, fp32 on
                # this CPU): its vector would be saved under this tool's recipe. Encode here.
                vector = None
            call = partial(self.inner.finish, clip, media, vector)
        else:
            call = partial(self.inner.analyze, clip, media)
        return self._serialised(call)


@dataclass
class SerialisedDescriber(_SharedInner):
    """An audio/video describer shared by an actor's graphs (see :class:`_SharedInner`)."""

    inner: Describer
    thread_safe: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def describe(self, clip: Clip, media: DecodedMedia, subtitle: str) -> Clue:
        return self._serialised(partial(self.inner.describe, clip, media, subtitle))


def staged_toolset(tools: ToolSet, staged: StagedInputs) -> ToolSet:
    """The toolset with its modality tools staged and its describers serialised."""
    from meragent.tools.registry import ToolSet as PlainToolSet

    def serialised(describer: Describer | None) -> Describer | None:
        return None if describer is None else SerialisedDescriber(describer)

    return PlainToolSet(
        acoustic=StagedTool("acoustic", tools.acoustic, staged),
        visual=StagedTool("visual", tools.visual, staged),
        lexical=StagedTool("lexical", tools.lexical, staged),
        audio_describer=serialised(tools.audio_describer),
        video_describer=serialised(tools.video_describer),
    )


class StepCollector:
    """Keeps the nodes' trace steps per clip (it has the TraceStore ``add_step`` signature)."""

    def __init__(self) -> None:
        self._steps: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def add_step(self, step: TraceStep, *, inputs: Any = None) -> None:
        entry = {
            "step": {
                "run_id": step.run_id,
                "clip_id": step.clip_id,
                "node": step.node,
                "model_id": step.model_id,
                "prompt": json_safe(step.prompt),
                "raw_output": step.raw_output,
                "parsed_output": json_safe(step.parsed_output),
                "latency_s": step.latency_s,
                "error": step.error,
                "retries": step.retries,
                "started_at": step.started_at.isoformat(),
            },
            "inputs": json_safe(inputs),
        }
        with self._lock:
            self._steps.setdefault(step.clip_id, []).append(entry)

    def pop(self, clip_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return self._steps.pop(clip_id, [])


def usage_delta(
    after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Per-role counters spent between two tally snapshots (roles with no calls left out)."""
    delta = {}
    for role, counters in after.items():
        previous = before.get(role, {})
        spent = {key: value - previous.get(key, 0) for key, value in counters.items()}
        if any(spent.values()):
            delta[role] = spent
    return delta


def add_usage(total: dict[str, dict[str, float]], more: dict[str, dict[str, float]]) -> None:
    for role, counters in more.items():
        entry = total.setdefault(role, {})
        for key, value in counters.items():
            entry[key] = entry.get(key, 0) + value


def failure_payload(exc: BaseException) -> dict[str, Any]:
    """The fields ``batch.record_failure`` would store for this exception."""
    from meragent.graphs.batch import failure_stage

    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return {
        "status": "failed",
        "stage": failure_stage(exc),
        "reason": reason,
        "error": f"{type(exc).__name__}: {reason}",
    }


class GraphStage:
    """Ray Data actor: the clip graph over a batch, ``concurrency`` clips at a time.

    One compiled graph per track; with several LLM servers (``llm_urls``) the actor builds one
    graph context per server and sends clip ``seq`` to server ``seq % n``, so the load spreads
    evenly whatever the number of actors.
    """

    def __init__(self, context: StageContext) -> None:
        from meragent.graphs.builder import build_graph
        from meragent.graphs.media_cache import MediaCache

        self.context = context
        settings = context.cpu_settings()
        urls: tuple[str | None, ...] = context.llm_urls or (None,)
        self.runtimes = [
            context.runtime(
                settings if url is None else settings.model_copy(update={"llm_base_url": url})
            )
            for url in urls
        ]
        self.staged = StagedInputs()
        self.steps = StepCollector()
        self.media = MediaCache(self.staged.decode, max_items=4 * context.concurrency + 4)
        # One toolset for every graph: the tools (and their locks) are per actor, not per server.
        tools = staged_toolset(self.runtimes[0].tools, self.staged)
        self.graph = build_graph(context.track)
        self.contexts = [
            runtime.context(trace=self.steps, media=self.media, tools=tools)
            for runtime in self.runtimes
        ]
        self.pool = ThreadPoolExecutor(max_workers=max(1, context.concurrency))

    def _usage(self) -> dict[str, dict[str, float]]:
        total: dict[str, dict[str, float]] = {}
        tallies = {id(rt.tally): rt.tally for rt in self.runtimes}
        for tally in tallies.values():
            add_usage(total, tally.as_dict())
        return total

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        before = self._usage()
        jobs = [
            (int(batch[SEQ][i]), Clip.model_validate_json(str(batch[CLIP][i])), batch, i)
            for i in range(len(batch[SEQ]))
        ]
        payloads = list(self.pool.map(lambda job: self._process(*job), jobs))
        usage = [""] * len(jobs)
        if usage:
            usage[-1] = json.dumps(usage_delta(self._usage(), before))
        return {
            SEQ: np.asarray([seq for seq, *_ in jobs], dtype=np.int64),
            CLIP_ID: objects([clip.id for _, clip, *_ in jobs]),
            STATUS: objects([payload["status"] for payload in payloads]),
            PAYLOAD: objects([json.dumps(payload, ensure_ascii=False) for payload in payloads]),
            USAGE: objects(usage),
        }

    def _process(
        self, seq: int, clip: Clip, batch: dict[str, np.ndarray], index: int
    ) -> dict[str, Any]:
        from meragent.graphs.batch import invoke_clip

        graph_context = self.contexts[seq % len(self.contexts)]
        clock = time.perf_counter()
        payload: dict[str, Any]
        try:
            self.staged.put(clip.id, staging_from_row(batch, index))
            output = invoke_clip(
                self.graph, self.context.run_id, clip, checkpointed=False, context=graph_context
            )
            payload = {"status": "ok", "output": json_safe(output)}
        except Exception as exc:  # per-clip isolation, as in the in-process batch
            payload = failure_payload(exc)
            payload["clip"] = json_safe(clip)
        finally:
            self.media.drop(clip.id)
            self.staged.drop(clip.id)
        payload["latency_s"] = time.perf_counter() - clock
        payload["steps"] = self.steps.pop(clip.id)
        return payload


def worker_environment(environ: dict[str, str]) -> dict[str, str]:
    """Environment variables a Ray job forwards to its workers: meragent's and the HF offline
    switches, never the API key (the pickled Settings carry it; a runtime_env is visible in the
    Ray dashboard)."""
    forwarded = {}
    for name, value in environ.items():
        if name == "MERAGENT_LLM_API_KEY":
            continue
        if name.startswith("MERAGENT_") or name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            forwarded[name] = value
    return forwarded
