"""Bulk feature extraction for a whole manifest into the feature cache (``meragent features``).

An encoder is named by a modality of the profile (``acoustic``, ``visual``, ``lexical``), by a
bundled model (``prosody``, ``fer``, ``minilm``), or explicitly as ``KIND:MODEL`` with KIND one
of ``hubert``, ``wav2vec2``, ``clip``, ``hf``, ``minilm`` (e.g.
``hubert:TencentGameMate/chinese-hubert-large``). Clips already in the cache are skipped when
their vector was made from the same media file (path, size, mtime) or subtitle by the same
model and recipe (see ``feature_cache``; a MER-NOISE copy of a clip is another file, so it is
recomputed, and a folder made by another model is refused with both named); the
rest are decoded, grouped ``batch_size`` at a time into shared forward passes, and saved one
``.npy`` each. A clip that fails (unreadable file, no audio, too short) is recorded and the run
goes on; a batch that fails is retried clip by clip so one bad clip cannot sink its neighbours.
The failures of the last run are written to ``<features_dir>/<feature>.failures.jsonl``.

Text encoders embed the manifest's subtitle; a clip without one gets the zero vector (MERTools'
convention). Run the pipeline (which transcribes with ASR) to fill subtitles first if needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meragent.config import (
    RoleConfig,
    Settings,
    announce_precision,
    resolve_device,
    resolve_precision,
)
from meragent.errors import ConfigError, DataError, MeragentError
from meragent.schema import Clip, ClipFailure
from meragent.tools.feature_cache import FeatureCache, FeatureRecipe, SourceStamp
from meragent.tools.modality_tools import (
    FER_FEATURE,
    PROSODY_FEATURE,
    encoder_source,
    fer_recipe,
    prosody_recipe,
)
from meragent.tools.model_source import first_line
from meragent.tools.registry import (
    acoustic_recipe,
    clip_recipe,
    detector_identity,
    feature_name_for,
    role_feature_name,
    text_recipe,
    yunet_path,
)

EXPLICIT_KINDS = ("hubert", "wav2vec2", "clip", "hf", "minilm")
NAMED_ENCODERS = ("acoustic", "visual", "lexical", "prosody", "fer", "minilm")
#: Speech encoders (HuBERT/wav2vec2 family) and the prosody clue work on 16 kHz audio.
AUDIO_RATE = 16000
#: Exceptions a single clip may raise while being decoded or encoded.
CLIP_FAILURES = (MeragentError, ValueError, RuntimeError, OSError)


@dataclass
class ExtractReport:
    """What one extraction run did."""

    feature: str
    model_id: str
    total: int
    cached: int
    extracted: int
    #: Clips whose cached vector was made from other media (or an older file) and was redone.
    stale: int = 0
    failures: list[ClipFailure] = field(default_factory=list)
    manifest_errors: list[str] = field(default_factory=list)
    failures_path: Path | None = None
    #: The precision the encoder computed in (``fp32`` or ``bf16``; fp32 for bundled models).
    precision: str = "fp32"


@dataclass
class Extractor:
    """One encoder prepared for bulk use: what input it needs and how it embeds a batch."""

    feature: str
    model_id: str
    needs: str  # "audio" | "frames" | "text"
    encode_batch: Callable[[list[Any]], list[np.ndarray]]
    recipe: FeatureRecipe
    precision: str = "fp32"


def _audio_extractor(
    kind: str, model: str, options: dict[str, Any], device: str, precision: str
) -> Extractor:
    from meragent.tools.acoustic_encoder import load_acoustic_encoder

    layers = int(options.get("layers", 4))
    pooling = str(options.get("pooling", "mean"))
    chunk_s = float(options.get("chunk_s", 10.0))
    recipe = acoustic_recipe(
        model, layers=layers, pooling=pooling, chunk_s=chunk_s, precision=precision
    )
    encoder = load_acoustic_encoder(
        model,
        device=device,
        layers=layers,
        pooling=pooling,
        chunk_s=chunk_s,
        dtype=str(options.get("dtype", "float32")),
        precision=precision,
    )
    feature = str(
        options.get("feature_name") or feature_name_for(model, layers=layers, pooling=pooling)
    )
    return Extractor(
        feature,
        model,
        "audio",
        lambda audios: encoder.encode_many(audios, batch_size=len(audios)),
        recipe,
        precision,
    )


def _prosody_extractor() -> Extractor:
    from meragent.tools.prosody import extract_prosody

    def encode(audios: list[np.ndarray]) -> list[np.ndarray]:
        return [extract_prosody(audio, AUDIO_RATE).as_vector() for audio in audios]

    return Extractor(PROSODY_FEATURE, "prosody", "audio", encode, prosody_recipe(AUDIO_RATE))


def _clip_extractor(
    settings: Settings, model: str, options: dict[str, Any], device: str, precision: str
) -> Extractor:
    from meragent.tools.clip_encoder import load_clip_encoder
    from meragent.tools.faces import crop_faces, load_face_detector

    yunet = options.get("yunet_onnx") or yunet_path(settings)
    recipe = clip_recipe(
        model, frames=settings.num_frames, detector=detector_identity(yunet), precision=precision
    )
    dtype = str(options.get("dtype", "float32"))
    encoder = load_clip_encoder(model, device=device, dtype=dtype, precision=precision)
    detector = load_face_detector(yunet)
    feature = str(options.get("feature_name") or feature_name_for(model))

    def encode(frame_sets: list[np.ndarray]) -> list[np.ndarray]:
        crops = [crop_faces(frames, detector).crops for frames in frame_sets]
        return encoder.encode_many(crops)

    return Extractor(feature, model, "frames", encode, recipe, precision)


def _fer_extractor(settings: Settings, model_path: str | None) -> Extractor:
    from meragent.tools.faces import crop_faces, load_face_detector
    from meragent.tools.facial_expression import load_fer_classifier

    yunet = yunet_path(settings)
    resolved = str(Path(model_path).expanduser().resolve()) if model_path else None
    recipe = fer_recipe(resolved, settings.num_frames, detector_identity(yunet))
    classifier = load_fer_classifier(model_path)
    detector = load_face_detector(yunet)

    def encode(frame_sets: list[np.ndarray]) -> list[np.ndarray]:
        vectors = []
        for frames in frame_sets:
            faces = crop_faces(frames, detector)
            if faces.found_faces:
                probs = classifier.classify(frames[faces.frame_indices], faces.boxes)
            else:
                probs = classifier.classify(faces.crops, [None] * len(faces.crops))
            vectors.append(probs.mean(axis=0).astype(np.float32))
        return vectors

    return Extractor(FER_FEATURE, "fer", "frames", encode, recipe)


def _text_extractor(
    backend: str, model: str, options: dict[str, Any], device: str, precision: str
) -> Extractor:
    from meragent.tools.text_encoder import load_text_encoder

    layers = int(options.get("layers", 4))
    precision = precision if backend == "hf" else "fp32"  # the bundled MiniLM runs in fp32
    recipe = text_recipe(backend, model, layers=layers, precision=precision)
    encoder = load_text_encoder(backend, model, device=device, layers=layers, precision=precision)
    feature = str(options.get("feature_name") or feature_name_for(model, layers=layers))
    encode = lambda texts: list(encoder.encode(texts))  # noqa: E731
    return Extractor(feature, model, "text", encode, recipe, precision)


def _from_role(
    settings: Settings, role: str, device: str, overrides: dict[str, Any], precision: str
) -> Extractor:
    config: RoleConfig = settings.role(role)
    options = {**config.options, **overrides}
    if role == "acoustic_encoder":
        if config.backend == "prosody":
            return _prosody_extractor()
        if config.backend in ("hubert", "wav2vec2") and config.model:
            return _audio_extractor(config.backend, config.model, options, device, precision)
    if role == "visual_encoder" and config.backend == "clip" and config.model:
        extractor = _clip_extractor(settings, config.model, config.options, device, precision)
        extractor.feature = role_feature_name(config, config.model)
        return extractor
    if role == "text_encoder" and config.backend in ("hf", "minilm"):
        model = config.model or "bundled:minilm"
        return _text_extractor(config.backend, model, options, device, precision)
    raise ConfigError(
        f"profile {settings.profile!r} has no extractable model for role {role} "
        f"(backend {config.backend!r}); name one explicitly, e.g. --encoder hubert:MODEL"
    )


def build_extractor(
    settings: Settings,
    encoder: str,
    device: str,
    layers: int | None = None,
    precision: str = "fp32",
) -> Extractor:
    """Resolve an ``--encoder`` name (see the module docstring) into a loaded extractor.

    ``layers`` overrides how many last hidden layers are summed (HuBERT and HF text encoders).
    """
    overrides: dict[str, Any] = {} if layers is None else {"layers": layers}
    if ":" in encoder and not encoder.startswith("bundled:"):
        kind, model = encoder.split(":", 1)
        if kind not in EXPLICIT_KINDS or not model:
            kinds = ", ".join(EXPLICIT_KINDS)
            raise ConfigError(f"unknown encoder {encoder!r}: use KIND:MODEL with KIND in {kinds}")
        if kind in ("hubert", "wav2vec2"):
            return _audio_extractor(kind, model, overrides, device, precision)
        if kind == "clip":
            return _clip_extractor(settings, model, {}, device, precision)
        return _text_extractor(kind, model, overrides, device, precision)
    roles = {"acoustic": "acoustic_encoder", "visual": "visual_encoder", "lexical": "text_encoder"}
    if encoder in roles:
        return _from_role(settings, roles[encoder], device, overrides, precision)
    if encoder == "prosody":
        return _prosody_extractor()
    if encoder == "fer":
        return _fer_extractor(settings, settings.role("facial_expression").model)
    if encoder in ("minilm", "bundled:minilm"):
        return _text_extractor("minilm", "bundled:minilm", {}, device, "fp32")
    raise ConfigError(
        f"unknown encoder {encoder!r} (use one of {', '.join(NAMED_ENCODERS)} or KIND:MODEL)"
    )


def _media_path(clip: Clip) -> Path:
    path = clip.video or clip.audio
    if path is None:
        raise DataError(f"clip {clip.id!r}: no video or audio file in the manifest")
    return Path(path)


def load_input(clip: Clip, needs: str, settings: Settings) -> Any:
    """Decode what the extractor needs from one clip (raises for a clip that lacks it)."""
    if needs == "text":
        return (clip.subtitle or "").strip()  # what the lexical tool encodes
    from meragent.data.media import decode_media, read_audio

    if needs == "audio":
        source = clip.audio or _media_path(clip)
        return read_audio(Path(source), clip_id=clip.id, sample_rate=AUDIO_RATE)
    media = decode_media(
        _media_path(clip),
        clip_id=clip.id,
        num_frames=settings.num_frames,
        sample_rate=settings.sample_rate,
        audio_path=clip.audio if clip.video else None,
        max_audio_s=0.1,  # only frames are needed; keep audio decoding to a minimum
    )
    if not media.has_video:
        raise DataError(f"clip {clip.id!r}: no video frames")
    return media.frames


def _encode_isolating(
    extractor: Extractor, batch: list[tuple[Clip, Any]]
) -> list[tuple[Clip, np.ndarray | None, str | None]]:
    """Encode a batch; if it fails as a whole, retry each clip alone to find the bad one."""
    try:
        vectors = extractor.encode_batch([item for _, item in batch])
        return [(clip, vector, None) for (clip, _), vector in zip(batch, vectors, strict=True)]
    except CLIP_FAILURES as exc:
        if len(batch) == 1:
            return [(batch[0][0], None, first_line(exc))]
    results: list[tuple[Clip, np.ndarray | None, str | None]] = []
    for pair in batch:
        results.extend(_encode_isolating(extractor, [pair]))
    return results


def _write_failures(path: Path, failures: list[ClipFailure]) -> Path | None:
    if not failures:
        path.unlink(missing_ok=True)  # a clean run leaves no stale report behind
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (failure.model_dump_json() for failure in failures)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class _Plan:
    """Which clips need encoding, with the source each new vector will be tied to."""

    todo: list[tuple[Clip, SourceStamp | None]]
    cached: int
    stale: int


def _source_of(clip: Clip, needs: str) -> SourceStamp | None:
    modality = "lexical" if needs == "text" else "acoustic"
    text = (clip.subtitle or "").strip() if needs == "text" else None
    return encoder_source(modality, clip, text)


def _plan(clips: list[Clip], cache: FeatureCache, extractor: Extractor) -> _Plan:
    """Reuse a cached vector only when it was made from this clip's media by this recipe."""
    plan = _Plan([], 0, 0)
    for clip in clips:
        source = _source_of(clip, extractor.needs)
        if cache.has(extractor.feature, clip.id, source=source, recipe=extractor.recipe):
            plan.cached += 1
            continue
        if cache.path(extractor.feature, clip.id).is_file():
            plan.stale += 1  # same name, other (or changed) media: never the old vector
        plan.todo.append((clip, source))
    return plan


def _check_options(batch_size: int, device: str | None) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if device not in (None, "auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)")


def _announced_extractor(
    settings: Settings,
    encoder: str,
    device: str | None,
    layers: int | None,
    precision: str | None,
) -> Extractor:
    """Build ``encoder``'s extractor; say the precision once when it is a neural model."""
    device_name = resolve_device(device or settings.device)
    wanted = precision or settings.precision
    resolved = resolve_precision(wanted, device_name)
    extractor = build_extractor(settings, encoder, device_name, layers=layers, precision=resolved)
    if extractor.model_id not in ("prosody", "fer") and not extractor.model_id.startswith(
        "bundled:"
    ):
        announce_precision(wanted, device_name)
    return extractor


@dataclass
class _ExtractRun:
    """One extraction pass: groups inputs into batches, saves vectors, counts and reports."""

    extractor: Extractor
    cache: FeatureCache
    total: int
    done: int
    progress: Callable[[int, int], None] | None
    extracted: int = 0
    failures: list[ClipFailure] = field(default_factory=list)
    batch: list[tuple[Clip, SourceStamp | None, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.progress:
            self.progress(self.done, self.total)

    def encode_all(
        self, todo: list[tuple[Clip, SourceStamp | None]], settings: Settings, batch_size: int
    ) -> None:
        for clip, stamp in todo:
            try:
                item = load_input(clip, self.extractor.needs, settings)
            except CLIP_FAILURES as exc:
                self.fail(clip, "decode", first_line(exc))
                continue
            self.batch.append((clip, stamp, item))
            if len(self.batch) >= batch_size:
                self.flush()
        if self.batch:
            self.flush()

    def flush(self) -> None:
        extractor = self.extractor
        sources = {clip.id: stamp for clip, stamp, _ in self.batch}
        pairs = [(clip, item) for clip, _, item in self.batch]
        self.batch.clear()
        for clip, vector, error in _encode_isolating(extractor, pairs):
            if vector is None:
                self.fail(clip, "encode", error or "failed")
                continue
            stamp = sources[clip.id]
            self.cache.save(
                extractor.feature, clip.id, vector, source=stamp, recipe=extractor.recipe
            )
            self.extracted += 1
            self.step()

    def fail(self, clip: Clip, stage: str, reason: str) -> None:
        self.failures.append(ClipFailure(clip_id=clip.id, stage=stage, reason=reason))
        self.step()

    def step(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total)


def extract_features(
    settings: Settings,
    source: Path | str,
    encoder: str,
    *,
    batch_size: int = 16,
    device: str | None = None,
    layers: int | None = None,
    feature_name: str | None = None,
    subtitle_language: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    precision: str | None = None,
) -> ExtractReport:
    """Fill the feature cache for every clip of ``source`` with ``encoder``'s vectors.

    ``feature_name`` overrides the cache folder's name; ``subtitle_language`` picks the
    transcript column text encoders read (see ``load_manifest``). ``progress(done, total)`` is
    called after each clip (cached ones count as done at once). ``precision`` (``auto|fp32|
    bf16``, default the settings') applies to HuBERT/wav2vec2, CLIP and HF text encoders; the
    folder's recipe records bf16, so bf16 and fp32 vectors never share a folder.
    """
    from meragent.data.manifest import MediaPolicy, load_manifest

    _check_options(batch_size, device)
    extractor = _announced_extractor(settings, encoder, device, layers, precision)
    # A text encoder reads only the subtitle: rows without media (MERTools labels) are clips.
    media: MediaPolicy = "optional" if extractor.needs == "text" else "required"
    loaded = load_manifest(
        source, data_root=settings.data_root, media=media, subtitle_language=subtitle_language
    )
    clips = loaded.clips
    if feature_name:
        extractor.feature = feature_name
    cache = FeatureCache(settings.features_dir)
    cache.check_recipe(extractor.feature, extractor.recipe)  # another model's folder: stop now
    plan = _plan(clips, cache, extractor)
    run = _ExtractRun(extractor, cache, len(clips), plan.cached, progress)
    run.encode_all(plan.todo, settings, batch_size)
    failures = run.failures
    failures_path = _write_failures(
        settings.features_dir / f"{extractor.feature}.failures.jsonl", failures
    )
    return ExtractReport(
        feature=extractor.feature,
        model_id=extractor.model_id,
        total=len(clips),
        cached=plan.cached,
        extracted=run.extracted,
        stale=plan.stale,
        failures=failures,
        manifest_errors=[str(error) for error in loaded.errors],
        failures_path=failures_path,
        precision=extractor.precision,
    )


def report_summary(report: ExtractReport) -> dict[str, Any]:
    """The report as plain JSON-able data (for the CLI)."""
    return {
        "feature": report.feature,
        "model": report.model_id,
        "total": report.total,
        "cached": report.cached,
        "extracted": report.extracted,
        "stale": report.stale,
        "failed": len(report.failures),
        "manifest_errors": len(report.manifest_errors),
        "failures_file": str(report.failures_path) if report.failures_path else None,
        "precision": report.precision,
    }


def dumps_summary(report: ExtractReport) -> str:
    return json.dumps(report_summary(report), indent=2)
