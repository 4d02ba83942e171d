"""The three tool nodes' workers: acoustic, visual and lexical ``ModalityTool`` implementations.

Each turns one modality of a decoded clip into a ``Clue``: a short factual text for the
reasoning LLM, six-class probabilities when a head (or the facial-expression model) gives them,
and a reference to the clip's embedding in the feature cache (never the array itself). Models
are held in ``Lazy`` holders, so nothing loads until the first clip that needs it, and a
cached embedding is reused instead of recomputed when it was made from this clip's media (or
text) by the same model and recipe; a folder dropped in from MERTools is trusted as it is.

A missing modality gives ``Clue.unavailable``; a clip that breaks one model (too short, corrupt
frames) keeps whatever the other models found and records the error on the clue. Configuration
problems (``ModelLoadError``) do propagate: they affect every clip and must be seen.

Every tool is batchable in two phases (``meragent.tools.base.BatchableTool``): ``prepare`` gives
the encoder's input for a clip (or None), ``encode_batch`` runs the encoder over many clips at
once, and ``finish(clip, media, vector)`` builds the clue from a vector computed elsewhere (or,
without one, from the cache or a batch-1 encode: that is ``analyze``). ``cached``/``save`` read
and write the feature cache with the tool's recipe and the input's source stamp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from meragent.data.media_types import DecodedMedia
from meragent.errors import DataError, ModelLoadError
from meragent.schema import EMOTIONS, Clip, Clue, Modality
from meragent.tools.encoding import Encoded, EncoderInput, SlotEncoding
from meragent.tools.feature_cache import FeatureCache, FeatureRecipe, SourceStamp
from meragent.tools.heads import EmotionHead
from meragent.tools.lazy import Lazy
from meragent.tools.prosody import describe_prosody, extract_prosody

PROSODY_FEATURE = "prosody-UTT"
FER_FEATURE = "fer-UTT"
ENCODER_FAILED = "encoder_failed"
ASR_FLAG = "asr"
NO_SPEECH = "no_speech"

#: Per-clip failures a model may raise on odd input; anything else is a bug and propagates.
CLIP_ERRORS = (DataError, ValueError, RuntimeError)


def format_probs(probs: dict[str, float], top: int = 3) -> str:
    """``"happy 0.82, neutral 0.10, sad 0.04"`` (highest first)."""
    ranked = sorted(probs.items(), key=lambda item: item[1], reverse=True)[:top]
    return ", ".join(f"{name} {value:.2f}" for name, value in ranked)


def prosody_recipe(sample_rate: int) -> FeatureRecipe:
    """The prosody vector depends only on the rate of the waveform it is measured on."""
    return FeatureRecipe("prosody", {"sample_rate": int(sample_rate)})


def fer_recipe(model_path: str | None, frames: int | None, detector: str) -> FeatureRecipe:
    return FeatureRecipe(model_path or "bundled:fer", {"frames": frames, "face_detector": detector})


def cached_or_computed(
    cache: FeatureCache,
    feature: str,
    clip_id: str,
    compute: Callable[[], np.ndarray],
    *,
    source: SourceStamp | None = None,
    recipe: FeatureRecipe | None = None,
) -> tuple[np.ndarray, str]:
    """The clip's vector from the cache, or computed now and written there; plus its path.

    A cached vector is reused only when it was made from ``source`` (the clip's media files,
    or the encoded text) by ``recipe``; otherwise it is recomputed and replaced.
    """
    cached = cache.lookup(feature, clip_id, source=source, recipe=recipe)
    if cached is not None:
        return cached, str(cache.path(feature, clip_id))
    vector = np.asarray(compute(), dtype=np.float32)
    return vector, str(cache.save(feature, clip_id, vector, source=source, recipe=recipe))


def encoder_source(modality: str, clip: Clip, text: str | None = None) -> SourceStamp | None:
    """What an encoder's vector for ``clip`` is computed from: the encoded text (lexical) or
    the clip's media files (acoustic, visual; None for a clip without media)."""
    if modality == Modality.LEXICAL.value:
        return SourceStamp.of_text(text or "")
    return SourceStamp.of_clip(clip)


def heard_given(data: dict[str, Any]) -> bool:
    """Whether the lexical words are the given subtitle (what ``prepare`` encoded)."""
    return data.get("origin") == "given"


def head_probs(
    head: Lazy[EmotionHead | None] | None, vector: np.ndarray
) -> dict[str, float] | None:
    if head is None:
        return None
    loaded = head.get()
    return None if loaded is None else loaded.probs_dict(vector)


def given_or_cached(
    cache: FeatureCache,
    slot: EncoderSlot,
    clip_id: str,
    source: SourceStamp | None,
    compute: Callable[[], np.ndarray],
    given: Encoded,
) -> tuple[np.ndarray, str]:
    """The clip's vector: the cache's, else ``given`` (a batched encode's), else ``compute()``.

    A given error is raised here, so the caller reports it exactly as a batch-1 failure.
    """
    if isinstance(given, BaseException):
        raise given
    if given is not None:
        vector = np.asarray(given, dtype=np.float32)
        compute = lambda: vector  # noqa: E731 - the cache still wins when it has a vector
    return cached_or_computed(
        cache, slot.feature, clip_id, compute, source=source, recipe=slot.recipe
    )


@dataclass(frozen=True)
class SlotOutcome:
    """What a tool's encoder slot gave for one clip."""

    probs: dict[str, float] | None = None
    #: The vector's cache file, set once the vector exists (even if the head then failed).
    feature_ref: str | None = None
    #: The per-clip encoder failure, as the clue reports it.
    error: str | None = None


@dataclass
class EncoderSlot:
    """An embedding model for one modality, the feature name it writes, and an optional head."""

    model: Lazy[Any]
    feature: str
    model_id: str
    head: Lazy[EmotionHead | None] | None = None
    #: What the cache folder records as its producer (default: the model id alone).
    recipe: FeatureRecipe | None = None

    def __post_init__(self) -> None:
        if self.recipe is None:
            self.recipe = FeatureRecipe(self.model_id)


class EncoderTool(SlotEncoding):
    """A modality tool's encoder slot as ``finish`` uses it for one clip."""

    def encoded(
        self,
        clip: Clip,
        encode: Callable[[Any], np.ndarray],
        given: Encoded,
        *,
        text: str | None = None,
        with_head: bool = True,
    ) -> SlotOutcome:
        """The clip's vector (see ``given_or_cached``) and its head's probabilities.

        ``encode(model)`` makes the vector when neither the cache nor ``given`` has it;
        ``text``: the encoded words (lexical), the vector's source instead of the clip's media.
        A per-clip failure becomes the outcome's error; a model that cannot load propagates.
        """
        slot = self._slot()
        source = encoder_source(self.modality, clip, text)
        feature_ref: str | None = None
        try:
            embedding, feature_ref = given_or_cached(
                self.cache, slot, clip.id, source, lambda: encode(slot.model.get()), given
            )
            probs = head_probs(slot.head, embedding) if with_head else None
        except ModelLoadError:
            raise
        except CLIP_ERRORS as exc:
            return SlotOutcome(None, feature_ref, f"{slot.model_id}: {exc}")
        return SlotOutcome(probs, feature_ref)


@dataclass
class AcousticTool(EncoderTool):
    """Prosody clue (always, when enabled) + speech-encoder embedding and head probabilities."""

    cache: FeatureCache
    encoder: EncoderSlot | None = None
    prosody: bool = True
    name: str = "acoustic"
    modality: str = "acoustic"

    def prepare(self, clip: Clip, media: DecodedMedia) -> EncoderInput | None:
        if self.encoder is None or not media.has_audio or media.audio is None:
            return None
        payload = (media.audio, int(media.sample_rate))
        return EncoderInput(clip.id, payload, SourceStamp.of_clip(clip))

    def analyze(self, clip: Clip, media: DecodedMedia) -> Clue:
        return self.finish(clip, media)

    def finish(self, clip: Clip, media: DecodedMedia, vector: Encoded = None) -> Clue:
        if not media.has_audio or media.audio is None:
            return Clue.unavailable(Modality.ACOUSTIC, self.name, "clip has no audio track")
        if not self.prosody and self.encoder is None:
            return Clue.unavailable(Modality.ACOUSTIC, self.name, "no acoustic model configured")
        audio = media.audio
        texts: list[str] = []
        data: dict[str, Any] = {}
        flags: list[str] = []
        feature_ref: str | None = None
        probs: dict[str, float] | None = None
        error: str | None = None
        if self.prosody:
            features = extract_prosody(audio, media.sample_rate)
            texts.append("voice: " + describe_prosody(features))
            data["prosody"] = features.as_dict()
            _, feature_ref = cached_or_computed(
                self.cache,
                PROSODY_FEATURE,
                clip.id,
                features.as_vector,
                source=SourceStamp.of_clip(clip),
                recipe=prosody_recipe(media.sample_rate),
            )
            data["prosody_ref"] = feature_ref
            if features.silent:
                flags.append("silent")
        if self.encoder is not None:
            outcome = self.encoded(
                clip, lambda model: model.encode(audio, media.sample_rate), vector
            )
            probs, error = outcome.probs, outcome.error
            feature_ref = outcome.feature_ref or feature_ref
            if error is not None:
                flags.append(ENCODER_FAILED)
            if probs:
                texts.append("speech-emotion model: " + format_probs(probs))
        return Clue(
            modality=Modality.ACOUSTIC,
            source=self.name,
            text="; ".join(texts) if texts else "",
            probs=probs,
            data=data,
            flags=flags,
            feature_ref=feature_ref,
            model_id=self.encoder.model_id if self.encoder else "prosody",
            error=error,
        )


@dataclass
class VisualTool(EncoderTool):
    """Face crops → facial-expression probabilities and/or a CLIP embedding (+ head)."""

    cache: FeatureCache
    detector: Lazy[Any]
    encoder: EncoderSlot | None = None
    expression: Lazy[Any] | None = None
    name: str = "visual"
    expression_recipe: FeatureRecipe | None = None
    modality: str = "visual"

    def prepare(self, clip: Clip, media: DecodedMedia) -> EncoderInput | None:
        """The clip's face crops (centre crops when no face is found), as ``finish`` makes them."""
        from meragent.tools.faces import crop_faces

        if self.encoder is None or not media.has_video or media.frames is None:
            return None
        faces = crop_faces(media.frames, self.detector.get())
        return EncoderInput(clip.id, faces.crops, SourceStamp.of_clip(clip))

    def analyze(self, clip: Clip, media: DecodedMedia) -> Clue:
        return self.finish(clip, media)

    def finish(self, clip: Clip, media: DecodedMedia, vector: Encoded = None) -> Clue:
        from meragent.tools.faces import crop_faces

        if not media.has_video or media.frames is None:
            return Clue.unavailable(Modality.VISUAL, self.name, "clip has no video frames")
        if self.encoder is None and self.expression is None:
            return Clue.unavailable(Modality.VISUAL, self.name, "no visual model configured")
        frames = media.frames
        faces = crop_faces(frames, self.detector.get())
        flags = list(faces.flags)
        data: dict[str, Any] = {
            "faces_found": len(faces.frame_indices) if faces.found_faces else 0,
            "n_frames": faces.n_frames,
            "frame_indices": faces.frame_indices,
        }
        texts = [self._face_text(faces.found_faces, len(faces.frame_indices), faces.n_frames)]
        probs: dict[str, float] | None = None
        feature_ref: str | None = None
        errors: list[str] = []
        if self.expression is not None:
            try:
                probs, feature_ref = self._expressions(clip, frames, faces, data)
                texts.append("facial expression: " + format_probs(probs))
            except CLIP_ERRORS as exc:
                errors.append(f"facial expression: {exc}")
        if self.encoder is not None:
            outcome = self.encoded(clip, lambda model: model.encode_clip(faces.crops), vector)
            feature_ref = outcome.feature_ref or feature_ref
            if outcome.error is not None:
                errors.append(outcome.error)
                flags.append(ENCODER_FAILED)
            encoded_probs = outcome.probs
            if encoded_probs:
                data["expression_probs"] = probs
                probs = encoded_probs
                texts.append("visual emotion model: " + format_probs(encoded_probs))
        return Clue(
            modality=Modality.VISUAL,
            source=self.name,
            text="; ".join(texts),
            probs=probs,
            data=data,
            flags=flags,
            feature_ref=feature_ref,
            model_id=self.encoder.model_id if self.encoder else "fer",
            error="; ".join(errors) or None,
        )

    @staticmethod
    def _face_text(found: bool, n_faces: int, n_frames: int) -> str:
        if not found:
            return f"no face found in {n_frames} frames (centre crops used)"
        return f"face found in {n_faces}/{n_frames} frames"

    def _expressions(
        self, clip: Clip, frames: np.ndarray, faces: Any, data: dict[str, Any]
    ) -> tuple[dict[str, float], str]:
        from meragent.tools.facial_expression import summarize_expressions

        classifier = self.expression.get() if self.expression is not None else None
        if classifier is None:
            raise DataError("facial expression model missing")
        if faces.found_faces:
            probs7 = classifier.classify(frames[faces.frame_indices], faces.boxes)
        else:
            probs7 = classifier.classify(faces.crops, [None] * len(faces.crops))
        result = summarize_expressions(probs7)
        data["frame_probs"] = [[round(float(p), 4) for p in row] for row in result.frame_probs]
        data["frame_labels"] = [EMOTIONS[int(np.argmax(row))] for row in result.frame_probs]
        path = self.cache.save(
            FER_FEATURE,
            clip.id,
            probs7.mean(axis=0),
            source=SourceStamp.of_clip(clip),
            recipe=self.expression_recipe or fer_recipe(None, None, "unspecified"),
        )
        return result.clip_probs, str(path)


@dataclass
class LexicalTool(EncoderTool):
    """Subtitle (given, or transcribed) → text clue + text embedding (+ head)."""

    cache: FeatureCache
    asr: Lazy[Any] | None = None
    encoder: EncoderSlot | None = None
    name: str = "lexical"
    modality: str = "lexical"

    def prepare(self, clip: Clip, media: DecodedMedia) -> EncoderInput | None:
        """The given subtitle; None without one (``finish`` transcribes and encodes alone)."""
        text = (clip.subtitle or "").strip()
        if self.encoder is None or not text:
            return None
        return EncoderInput(clip.id, text, SourceStamp.of_text(text))

    def analyze(self, clip: Clip, media: DecodedMedia) -> Clue:
        return self.finish(clip, media)

    def finish(self, clip: Clip, media: DecodedMedia, vector: Encoded = None) -> Clue:
        heard = self._subtitle(clip, media)
        if isinstance(heard, Clue):
            return heard
        subtitle, data, flags = heard
        outcome = SlotOutcome()
        if self.encoder is not None:
            outcome = self.encoded(
                clip,
                lambda model: model.encode([subtitle])[0],
                vector if heard_given(data) else None,
                text=subtitle,
                with_head=bool(subtitle),
            )
            if outcome.error is not None:
                flags.append(ENCODER_FAILED)
        probs, feature_ref, error = outcome.probs, outcome.feature_ref, outcome.error
        text = self._text(subtitle, data)
        if probs:
            text += "; text emotion model: " + format_probs(probs)
        return Clue(
            modality=Modality.LEXICAL,
            source=self.name,
            text=text,
            probs=probs,
            data=data,
            flags=flags,
            feature_ref=feature_ref,
            model_id=self.encoder.model_id if self.encoder else None,
            error=error,
        )

    def _subtitle(
        self, clip: Clip, media: DecodedMedia
    ) -> tuple[str, dict[str, Any], list[str]] | Clue:
        """The clip's words and where they came from, or an unavailable clue."""
        if clip.subtitle and clip.subtitle.strip():
            data = {"subtitle": clip.subtitle.strip(), "origin": "given", "language": clip.language}
            return clip.subtitle.strip(), data, []
        if self.asr is None:
            return Clue.unavailable(Modality.LEXICAL, self.name, "no subtitle and ASR is disabled")
        if not media.has_audio or media.audio is None:
            return Clue.unavailable(Modality.LEXICAL, self.name, "no subtitle and no audio track")
        try:
            transcript = self.asr.get().transcribe(
                media.audio, media.sample_rate, language=clip.language
            )
        except ModelLoadError:
            raise
        except CLIP_ERRORS as exc:
            return Clue.unavailable(
                Modality.LEXICAL, self.name, f"speech recognition failed: {exc}"
            )
        data = {
            "subtitle": transcript.text,
            "origin": "asr",
            "language": transcript.language,
            "language_prob": transcript.language_prob,
        }
        flags = [ASR_FLAG]
        if transcript.no_speech:
            flags.append(NO_SPEECH)
        return transcript.text, data, flags

    @staticmethod
    def _text(subtitle: str, data: dict[str, Any]) -> str:
        if not subtitle:
            return "no speech detected"
        origin = "transcribed" if data.get("origin") == "asr" else "subtitle"
        language = data.get("language")
        if language and data.get("language_prob") is not None:
            origin += f", language {language} ({data['language_prob']:.2f})"
        elif language:
            origin += f", language {language}"
        return f'{origin}: "{subtitle}"'
