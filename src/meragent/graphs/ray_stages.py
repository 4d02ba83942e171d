"""The three Ray Data stages of a scaled-out batch, and the columns that carry a clip between them.

1. :func:`decode_batch` (CPU tasks): decode each clip with the runtime's decoder and run the
   visual tool's face detector on the sampled frames (boxes and 224 x 224 crops).
2. :class:`EncoderStage` (an actor pool, ``num_gpus`` each): the toolset's speech, image and
   text encoders over the whole batch at once; a vector already in the feature cache is reused.
3. :class:`GraphStage` (an actor pool, threads inside): the unchanged clip graph per clip. Its
   tools are wrapped so that, for that clip, the encoders hand back stage 2's vectors and the face
   detector replays stage 1's boxes; its decoder replays stage 1's media (or decode error). The
   tool nodes then do exactly what they do in-process (cache write, heads, clue text), so the
   answers equal the in-process executor's. Trace steps are collected, not written: the driver
   commits them with the clip's result, because it alone owns the run's SQLite store.

Between stages a row holds plain columns: ``seq`` and ``clip`` (Clip JSON), arrays as ``.npy``
bytes (``b""`` when absent), small metadata and errors as JSON text (``""`` when absent). Errors
travel as ``{kind, base, message}`` and are rebuilt with the same class name, message and
meragent base class, so per-clip failure handling (stage names, unavailable clues) is unchanged.
No column is ever null, which keeps every block's Arrow schema identical.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, cast

import numpy as np

from meragent.config import Settings
from meragent.data.media_types import DecodedMedia
from meragent.errors import (
    ConfigError,
    DataError,
    LLMError,
    MediaError,
    MeragentError,
    ModelLoadError,
)
from meragent.graphs.runtime import Runtime
from meragent.schema import Clip, TraceStep
from meragent.tools.lazy import Lazy, shared

#: ``factory(settings, track=...)`` -> Runtime; ``graphs.runtime.runtime_for`` by default.
RuntimeFactory = Callable[..., Runtime]

SEQ = "seq"
CLIP = "clip"
CLIP_ID = "clip_id"
MEDIA = "media"
AUDIO = "audio"
FRAMES = "frames"
FRAME_TIMES = "frame_times"
DECODE_ERROR = "decode_error"
FACES = "faces"
FACES_ERROR = "faces_error"
CROPS = "crops"
STATUS = "status"
PAYLOAD = "payload"
USAGE = "usage"
#: The tool attributes of a toolset whose encoders stage 2 runs, in graph order.
MODALITIES: tuple[str, ...] = ("acoustic", "visual", "lexical")
#: Error classes rebuilt by name; any other class is recreated under its own name on the nearest
#: of these bases, so ``isinstance`` checks downstream (MediaError, LLMError, ...) still hold.
_KNOWN_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        MediaError,
        DataError,
        ModelLoadError,
        LLMError,
        ConfigError,
        MeragentError,
        ValueError,
        RuntimeError,
        OSError,
        TypeError,
    )
}
_REBUILT: dict[tuple[str, str], type[Exception]] = {}
_REBUILT_LOCK = threading.Lock()


def vector_column(modality: str) -> str:
    return f"vec_{modality}"


def error_column(modality: str) -> str:
    return f"err_{modality}"


# --------------------------------------------------------------------------- column codecs


def array_bytes(array: np.ndarray | None) -> bytes:
    """``.npy`` bytes of an array (``b""`` for None): exact dtype and shape, no pickle."""
    if array is None:
        return b""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def bytes_array(data: bytes | None) -> np.ndarray | None:
    if not data:
        return None
    return np.load(io.BytesIO(bytes(data)), allow_pickle=False)


def error_json(exc: BaseException) -> str:
    """An exception as JSON: its class name, nearest known base and message."""
    base = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _KNOWN_ERRORS), "")
    return json.dumps({"kind": type(exc).__name__, "base": base, "message": str(exc)})


def rebuild_error(text: str) -> Exception:
    """The exception :func:`error_json` described: same class name, message and base class."""
    data = json.loads(text)
    kind, base, message = str(data["kind"]), str(data.get("base") or ""), str(data["message"])
    cls = _KNOWN_ERRORS.get(kind)
    if cls is None:
        with _REBUILT_LOCK:
            key = (kind, base)
            if key not in _REBUILT:
                parent = _KNOWN_ERRORS.get(base, Exception)
                _REBUILT[key] = type(kind, (parent,), {"__module__": __name__})
            cls = _REBUILT[key]
    # Bypass custom __init__ signatures (ModelLoadError takes three arguments): only the class
    # and the message matter to the code that handles the error.
    error = cls.__new__(cls)
    error.args = (message,)
    return error


def objects(values: list[Any]) -> np.ndarray:
    """A 1-D object column (np.array would try to stack equal-length bytes or lists)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def media_json(media: DecodedMedia) -> str:
    return json.dumps(
        {
            "clip_id": media.clip_id,
            "sample_rate": int(media.sample_rate),
            "duration": float(media.duration),
            "fps": None if media.fps is None else float(media.fps),
            "flags": list(media.flags),
        }
    )


def media_from_row(meta: str, audio: bytes, frames: bytes, frame_times: bytes) -> DecodedMedia:
    data = json.loads(meta)
    return DecodedMedia(
        clip_id=data["clip_id"],
        sample_rate=int(data["sample_rate"]),
        duration=float(data["duration"]),
        audio=bytes_array(audio),
        frames=bytes_array(frames),
        frame_times=bytes_array(frame_times),
        fps=data["fps"],
        flags=list(data["flags"]),
    )


def faces_json(detector_name: str, found: list[list[Any]]) -> str:
    return json.dumps(
        {"detector": detector_name, "frames": [[asdict(b) for b in f] for f in found]}
    )


def faces_from_json(text: str) -> tuple[str, list[list[Any]]]:
    from meragent.tools.faces import FaceBox

    data = json.loads(text)
    frames = []
    for boxes in data["frames"]:
        frames.append(
            [
                FaceBox(**{**box, "eyes": tuple(tuple(eye) for eye in box["eyes"])})
                if box.get("eyes") is not None
                else FaceBox(**box)
                for box in boxes
            ]
        )
    return str(data["detector"]), frames


def _json_safe(value: Any) -> Any:
    """Plain JSON data, encoded exactly as the trace store would encode it."""
    from meragent.graphs.trace import dumps

    text = dumps(value)
    return None if text is None else json.loads(text)


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

    def runtime(self, settings: Settings) -> Runtime:
        return self.factory(settings, track=self.track)


#: Profile roles that build chat models when a Runtime is made.
CHAT_ROLE_NAMES: tuple[str, ...] = ("reasoning_llm", "labeler_llm")


def without_chat_roles(settings: Settings, *, only_backend: str | None = None) -> Settings:
    """A copy whose chat roles are switched off (all, or only those using ``only_backend``)."""
    from meragent.config import RoleConfig

    models = dict(settings.models)
    for role in CHAT_ROLE_NAMES:
        if only_backend is None or settings.role(role).backend == only_backend:
            models[role] = RoleConfig(backend="none")
    return settings.model_copy(update={"models": models})


def staged_tools(tools: Any) -> dict[str, Any]:
    """The toolset's tools that own an encoder slot and a feature cache, by modality."""
    from meragent.tools.modality_tools import EncoderSlot

    found = {}
    for modality in MODALITIES:
        tool = getattr(tools, modality, None)
        if isinstance(getattr(tool, "encoder", None), EncoderSlot) and hasattr(tool, "cache"):
            found[modality] = tool
    return found


def _face_detector(tools: Any) -> tuple[Lazy[Any] | None, bool]:
    """The visual tool's detector holder when the tool uses faces, and whether crops are needed."""
    visual = getattr(tools, "visual", None)
    detector = getattr(visual, "detector", None)
    encoder = getattr(visual, "encoder", None)
    if not isinstance(detector, Lazy):
        return None, False
    if encoder is None and getattr(visual, "expression", None) is None:
        return None, False  # the tool answers "no visual model" without looking for faces
    return detector, encoder is not None


# --------------------------------------------------------------------------- stage 1: decode


class _RecordingDetector:
    """Passes detections through and remembers them, frame by frame."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = str(getattr(inner, "name", "detector"))
        self.found: list[list[Any]] = []

    def detect(self, frame: np.ndarray) -> list[Any]:
        boxes = list(self.inner.detect(frame))
        self.found.append(boxes)
        return boxes


def decode_clip(
    clip: Clip, decoder: Callable[[Clip], DecodedMedia], detector: Lazy[Any] | None, crops: bool
) -> dict[str, Any]:
    """One clip's stage-1 columns; a failure is recorded in the row, never raised."""
    row: dict[str, Any] = {
        MEDIA: "",
        AUDIO: b"",
        FRAMES: b"",
        FRAME_TIMES: b"",
        DECODE_ERROR: "",
        FACES: "",
        FACES_ERROR: "",
        CROPS: b"",
    }
    try:
        media = decoder(clip)
    except Exception as exc:  # replayed in the graph stage, where load_media handles it
        row[DECODE_ERROR] = error_json(exc)
        return row
    row[MEDIA] = media_json(media)
    row[AUDIO] = array_bytes(media.audio)
    row[FRAMES] = array_bytes(media.frames)
    row[FRAME_TIMES] = array_bytes(media.frame_times)
    if detector is not None and media.has_video and media.frames is not None:
        from meragent.tools.faces import crop_faces

        try:
            recorder = _RecordingDetector(detector.get())
            faces = crop_faces(media.frames, recorder)
        except Exception as exc:  # the visual tool meets the same error in the graph stage
            row[FACES_ERROR] = error_json(exc)
        else:
            row[FACES] = faces_json(recorder.name, recorder.found)
            if crops:
                row[CROPS] = array_bytes(faces.crops)
    return row


def decode_batch(batch: dict[str, np.ndarray], context: StageContext) -> dict[str, np.ndarray]:
    """Ray Data task: decode + face crops for a batch of clips."""
    runtime = shared(
        ("ray-decode", context.token), lambda: context.runtime(context.tool_settings())
    )
    loaded = runtime.get()
    detector, want_crops = _face_detector(loaded.tools)
    rows = [
        decode_clip(Clip.model_validate_json(str(text)), loaded.decoder, detector, want_crops)
        for text in batch[CLIP]
    ]
    columns = {SEQ: np.asarray(batch[SEQ], dtype=np.int64), CLIP: objects(list(batch[CLIP]))}
    for name in rows[0] if rows else ():
        columns[name] = objects([row[name] for row in rows])
    return columns


# --------------------------------------------------------------------------- stage 2: encoders


@dataclass
class _Pending:
    index: int
    item: Any


def encode_isolating(
    encode: Callable[[list[Any]], list[np.ndarray]], items: list[Any]
) -> list[tuple[np.ndarray | None, BaseException | None]]:
    """Encode a batch; when it fails as a whole, retry clip by clip to pin down the bad one."""
    try:
        vectors = encode(items)
        return [(np.asarray(vector, dtype=np.float32), None) for vector in vectors]
    except Exception as exc:
        if len(items) == 1:
            return [(None, exc)]
    results: list[tuple[np.ndarray | None, BaseException | None]] = []
    for item in items:
        results.extend(encode_isolating(encode, [item]))
    return results


class EncoderStage:
    """Ray Data actor: the speech, image and text encoders of the toolset, batched.

    Inputs match what the in-process tools feed the same models (the waveform, the face crops,
    the stripped subtitle), so the vectors equal theirs up to floating-point batching noise.
    """

    def __init__(self, context: StageContext) -> None:
        self.tools = staged_tools(context.runtime(context.tool_settings(gpu=context.gpu)).tools)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clips = [Clip.model_validate_json(str(text)) for text in batch[CLIP]]
        columns = {name: batch[name] for name in batch if name != CROPS}
        for modality, tool in self.tools.items():
            vectors, errors = self._encode(modality, tool, batch, clips)
            columns[vector_column(modality)] = objects(vectors)
            columns[error_column(modality)] = objects(errors)
        return columns

    def _encode(
        self, modality: str, tool: Any, batch: dict[str, np.ndarray], clips: list[Clip]
    ) -> tuple[list[bytes], list[str]]:
        from meragent.tools.modality_tools import encoder_source

        vectors: list[bytes] = [b""] * len(clips)
        errors: list[str] = [""] * len(clips)
        slot, cache = tool.encoder, tool.cache
        pending: list[_Pending] = []
        for index, clip in enumerate(clips):
            item = _encoder_input(modality, batch, index, clip)
            if item is None:
                continue  # the tool will not call its encoder for this clip
            try:  # reused only when made from this clip's media (or text) by the same recipe
                source = encoder_source(modality, clip, item if modality == "lexical" else None)
                cached = cache.lookup(slot.feature, clip.id, source=source, recipe=slot.recipe)
                if cached is not None:
                    vectors[index] = array_bytes(cached)
                    continue
            except Exception as exc:  # an unreadable cached file fails the same way in-process
                errors[index] = error_json(exc)
                continue
            pending.append(_Pending(index, item))
        if not pending:
            return vectors, errors
        try:
            model = slot.model.get()
        except Exception as exc:  # e.g. ModelLoadError: every clip of the batch reports it
            for entry in pending:
                errors[entry.index] = error_json(exc)
            return vectors, errors
        encode = partial(encode_batch, modality, model)
        for entry, (vector, error) in zip(
            pending, encode_isolating(encode, [e.item for e in pending]), strict=True
        ):
            if error is not None:
                errors[entry.index] = error_json(error)
            else:
                vectors[entry.index] = array_bytes(vector)
        return vectors, errors


def _encoder_input(modality: str, batch: dict[str, np.ndarray], index: int, clip: Clip) -> Any:
    """What the modality's tool would pass to its encoder for this clip, or None."""
    if modality == "lexical":
        text = (clip.subtitle or "").strip()
        return text or None  # no subtitle: the graph stage's tool transcribes and encodes
    if batch[DECODE_ERROR][index]:
        return None
    if modality == "acoustic":
        audio = bytes_array(batch[AUDIO][index])
        if audio is None or audio.size == 0:
            return None
        return (audio, int(json.loads(str(batch[MEDIA][index]))["sample_rate"]))
    return bytes_array(batch[CROPS][index])  # visual: None when no frames or detection failed


def encode_batch(modality: str, model: Any, items: list[Any]) -> list[np.ndarray]:
    """One encoder call over a batch, as the encoder stage makes it (the GPU benchmark times it).

    ``items``: ``(waveform, sample_rate)`` pairs (acoustic), face-crop stacks (visual) or
    subtitles (lexical); one float vector per item comes back.
    """
    if modality == "acoustic":
        rates = {rate for _, rate in items}
        if len(rates) > 1:
            raise DataError(f"mixed sample rates in one encoder batch: {sorted(rates)}")
        audios = [audio for audio, _ in items]
        return list(model.encode_many(audios, sample_rate=rates.pop(), batch_size=len(audios)))
    if modality == "visual":
        return list(model.encode_many(items))
    return list(model.encode(items))


# --------------------------------------------------------------------------- stage 3: the graph


@dataclass
class StagedVector:
    """One clip's vector from the encoder stage (or the error the encoder raised for it)."""

    vector: np.ndarray | None
    error: BaseException | None = None

    def value(self) -> np.ndarray:
        if self.error is not None:
            raise self.error
        assert self.vector is not None
        return self.vector


class StagedSpeechEncoder(StagedVector):
    """Stands in for ``AcousticEncoder`` inside the acoustic tool."""

    def encode(self, audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
        return self.value()


class StagedImageEncoder(StagedVector):
    """Stands in for ``ClipImageEncoder`` inside the visual tool."""

    def encode_clip(self, images: np.ndarray) -> np.ndarray:
        return self.value()


class StagedTextEncoder(StagedVector):
    """Stands in for a text encoder inside the lexical tool (one text in, one row out)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.value()[None, :]


_STAGED_ENCODERS: dict[str, type[StagedVector]] = {
    "acoustic": StagedSpeechEncoder,
    "visual": StagedImageEncoder,
    "lexical": StagedTextEncoder,
}


@dataclass
class ReplayDetector:
    """Answers ``detect`` with the boxes stage 1 found, frame after frame."""

    frames: list[list[Any]]
    name: str = "replay"
    _next: int = 0

    def detect(self, frame: np.ndarray) -> list[Any]:
        boxes = self.frames[self._next]
        self._next += 1
        return list(boxes)


def _fixed(value: Any) -> Any:
    return value


def _raise(error: BaseException) -> Any:
    raise error


@dataclass
class ClipStaging:
    """What stages 1-2 produced for one clip."""

    media: DecodedMedia | None = None
    decode_error: BaseException | None = None
    faces: tuple[str, list[list[Any]]] | None = None
    faces_error: BaseException | None = None
    encoded: dict[str, StagedVector] = field(default_factory=dict)

    def bind(self, modality: str, tool: Any) -> Any:
        """A copy of ``tool`` that reads this clip's staged vector and face boxes."""
        from meragent.tools.modality_tools import EncoderSlot

        changes: dict[str, Any] = {}
        slot = getattr(tool, "encoder", None)
        if isinstance(slot, EncoderSlot) and modality in self.encoded:
            staged = self.encoded[modality]
            encoder = _STAGED_ENCODERS[modality](staged.vector, staged.error)
            changes["encoder"] = replace(slot, model=Lazy(partial(_fixed, encoder)))
        if modality == "visual" and isinstance(getattr(tool, "detector", None), Lazy):
            if self.faces_error is not None:
                changes["detector"] = Lazy(partial(_raise, self.faces_error))
            elif self.faces is not None:
                name, frames = self.faces
                changes["detector"] = Lazy(partial(_fixed, ReplayDetector(frames, name)))
        return replace(tool, **changes) if changes else tool


def staging_from_row(batch: dict[str, np.ndarray], index: int) -> ClipStaging:
    staging = ClipStaging()
    if batch[DECODE_ERROR][index]:
        staging.decode_error = rebuild_error(str(batch[DECODE_ERROR][index]))
    else:
        staging.media = media_from_row(
            str(batch[MEDIA][index]),
            batch[AUDIO][index],
            batch[FRAMES][index],
            batch[FRAME_TIMES][index],
        )
    if batch[FACES_ERROR][index]:
        staging.faces_error = rebuild_error(str(batch[FACES_ERROR][index]))
    elif batch[FACES][index]:
        staging.faces = faces_from_json(str(batch[FACES][index]))
    for modality in MODALITIES:
        if vector_column(modality) not in batch:
            continue
        error = batch[error_column(modality)][index]
        vector = bytes_array(batch[vector_column(modality)][index])
        if error:
            staging.encoded[modality] = StagedVector(None, rebuild_error(str(error)))
        elif vector is not None:
            staging.encoded[modality] = StagedVector(vector)
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


@dataclass
class StagedTool:
    """A toolset tool that, per clip, uses what the earlier stages computed for that clip.

    It serialises calls itself when the inner tool is not thread-safe (and says it is safe), so
    that the graphs of one actor, one per LLM server, share one lock per tool.
    """

    modality: str
    inner: Any
    staged: StagedInputs
    thread_safe: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return str(getattr(self.inner, "name", type(self.inner).__name__))

    def analyze(self, clip: Clip, media: DecodedMedia) -> Any:
        staging = self.staged.get(clip.id)
        tool = self.inner if staging is None else staging.bind(self.modality, self.inner)
        if getattr(self.inner, "thread_safe", False):
            return tool.analyze(clip, media)
        with self._lock:
            return tool.analyze(clip, media)


@dataclass
class SerialisedDescriber:
    """An audio/video describer shared by an actor's graphs, one call at a time unless it is
    thread-safe (the graphs' own per-tool locks are per graph)."""

    inner: Any
    thread_safe: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return str(getattr(self.inner, "name", type(self.inner).__name__))

    def describe(self, clip: Clip, media: DecodedMedia, subtitle: str) -> Any:
        if getattr(self.inner, "thread_safe", False):
            return self.inner.describe(clip, media, subtitle)
        with self._lock:
            return self.inner.describe(clip, media, subtitle)


@dataclass
class StagedToolSet:
    """The ToolSet shape the graph expects, with the three modality tools wrapped."""

    acoustic: Any
    visual: Any
    lexical: Any
    audio_describer: Any = None
    video_describer: Any = None

    @classmethod
    def wrap(cls, tools: Any, staged: StagedInputs) -> StagedToolSet:
        def wrapped(modality: str) -> Any:
            tool = getattr(tools, modality, None)
            return None if tool is None else StagedTool(modality, tool, staged)

        def serialised(attribute: str) -> Any:
            describer = getattr(tools, attribute, None)
            return None if describer is None else SerialisedDescriber(describer)

        return cls(
            acoustic=wrapped("acoustic"),
            visual=wrapped("visual"),
            lexical=wrapped("lexical"),
            audio_describer=serialised("audio_describer"),
            video_describer=serialised("video_describer"),
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
                "prompt": _json_safe(step.prompt),
                "raw_output": step.raw_output,
                "parsed_output": _json_safe(step.parsed_output),
                "latency_s": step.latency_s,
                "error": step.error,
                "retries": step.retries,
                "started_at": step.started_at.isoformat(),
            },
            "inputs": _json_safe(inputs),
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

    With several LLM servers (``llm_urls``) the actor builds one graph per server and sends clip
    ``seq`` to server ``seq % n``, so the load spreads evenly whatever the number of actors.
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
        tools = StagedToolSet.wrap(self.runtimes[0].tools, self.staged)
        self.graphs = [
            build_graph(
                tools,
                runtime.chat_models,
                track=context.track,
                trace=cast(Any, self.steps),  # duck-typed: only add_step is called
                media_cache=self.media,
                **runtime.graph_options(),
            )
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

        graph = self.graphs[seq % len(self.graphs)]
        clock = time.perf_counter()
        payload: dict[str, Any]
        try:
            self.staged.put(clip.id, staging_from_row(batch, index))
            output = invoke_clip(graph, self.context.run_id, clip, checkpointed=False)
            payload = {"status": "ok", "output": _json_safe(output)}
        except Exception as exc:  # per-clip isolation, as in the in-process batch
            payload = failure_payload(exc)
            payload["clip"] = _json_safe(clip)
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
