"""Build the tool nodes' workers from Settings: one backend per role, loaded lazily.

``build_toolset(settings)`` reads the roles ``acoustic_encoder``, ``visual_encoder``,
``facial_expression``, ``text_encoder``, ``asr``, ``audio_llm`` and ``video_llm`` and returns a
``ToolSet``. Nothing heavy is imported or loaded here: models load on the first clip that needs
them and are shared process-wide (same role, model and options → one copy). Local model paths
are checked at once, so a typo fails before the first clip with the role and the path named.

Role options understood (``[roles.<role>.options]`` in a profile):

* every encoder: ``feature_name`` (cache folder), ``head`` (six-class head folder), ``dtype``;
* ``acoustic_encoder``: ``layers`` (4), ``pooling`` (mean|max), ``chunk_s`` (10), ``prosody``
  (true: add the prosody clue next to the embedding);
* ``visual_encoder`` / ``facial_expression``: ``yunet_onnx`` (YuNet face detector file);
* ``text_encoder``: ``layers`` (4);
* ``asr``: ``compute_type``, ``language``, ``batch_size``;
* ``audio_llm`` / ``video_llm``: ``max_new_tokens`` (256), ``dtype``; ``video_llm``:
  ``max_pixels``, ``frame_max_side``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meragent.config import RoleConfig, Settings, announce_precision
from meragent.errors import ConfigError, ModelLoadError
from meragent.tools.base import Describer, ModalityTool
from meragent.tools.feature_cache import FeatureCache, FeatureRecipe
from meragent.tools.heads import EmotionHead, head_exists, load_head
from meragent.tools.lazy import Lazy, shared
from meragent.tools.modality_tools import (
    PROSODY_FEATURE,
    AcousticTool,
    EncoderSlot,
    LexicalTool,
    VisualTool,
    fer_recipe,
    prosody_recipe,
)
from meragent.tools.model_source import resolve_model_source

ACOUSTIC_BACKENDS = ("prosody", "hubert", "wav2vec2", "none")
VISUAL_BACKENDS = ("clip", "none")
EXPRESSION_BACKENDS = ("fer", "none")
TEXT_BACKENDS = ("hf", "minilm", "none")
ASR_BACKENDS = ("whisperx", "faster-whisper", "none")
LLM_BACKENDS = ("local", "openai", "none")
#: Feature folder names of the bundled models (MERTools names folders after the model).
BUNDLED_FEATURE_NAMES = {"bundled:minilm": "all-MiniLM-L6-v2-UTT"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ToolSet:
    """What the graph's tool nodes call for one clip (the shape of ``tools.base.ToolSet``):
    the run's own tools, or the Ray graph stage's wrappers around them."""

    acoustic: ModalityTool
    visual: ModalityTool
    lexical: ModalityTool
    audio_describer: Describer | None = None
    video_describer: Describer | None = None


def _check_backend(role: str, config: RoleConfig, allowed: tuple[str, ...]) -> str:
    if config.backend not in allowed:
        raise ConfigError(
            f"role {role}: unknown backend {config.backend!r} (choose from {', '.join(allowed)})"
        )
    return config.backend


def _require_model(role: str, config: RoleConfig) -> str:
    if not config.model:
        raise ConfigError(f"role {role}: backend {config.backend!r} needs a model id or path")
    if not config.model.startswith("bundled:"):
        resolve_model_source(role, config.model)  # fail now on a missing local path
    return config.model


def feature_name_for(model: str, *, layers: int = 4, pooling: str = "mean") -> str:
    """MERTools-style cache folder for a model: ``<model basename>-UTT`` (+ non-default recipe).

    Two models with the same basename (``/runs/a/final``, ``/runs/b/final``) get the same name;
    the folder's recorded recipe (see ``feature_cache``) turns the second into a clear error.
    """
    if model in BUNDLED_FEATURE_NAMES:
        return BUNDLED_FEATURE_NAMES[model]
    base = Path(model.rstrip("/\\")).name or model
    name = _UNSAFE.sub("-", base).strip("-.") or "encoder"
    suffix = ""
    if layers != 4:
        suffix += f"-last{layers}"
    if pooling != "mean":
        suffix += f"-{pooling}"
    return f"{name}{suffix}-UTT"


def role_feature_name(config: RoleConfig, model: str, **recipe: Any) -> str:
    return str(config.options.get("feature_name") or feature_name_for(model, **recipe))


def model_identity(role: str, model: str) -> str:
    """What a feature folder records as its model: the hub id, resolved local path or bundle."""
    return model if model.startswith("bundled:") else resolve_model_source(role, model)


def detector_identity(yunet_onnx: str | None) -> str:
    """The face detector that picks the crops: a YuNet file (resolved) or OpenCV's Haar cascade."""
    return str(Path(yunet_onnx).expanduser().resolve()) if yunet_onnx else "haar-cascade"


def with_precision(settings: dict[str, Any], precision: str) -> dict[str, Any]:
    """The recipe settings plus ``precision`` when it is not fp32.

    bf16 vectors differ from fp32 ones, so they never share a folder; fp32 stays unrecorded so
    the folders written before precision existed (all fp32) keep their recipe.
    """
    return settings if precision == "fp32" else {**settings, "precision": precision}


def acoustic_recipe(
    model: str, *, layers: int, pooling: str, chunk_s: float, precision: str = "fp32"
) -> FeatureRecipe:
    """Speech encoders always take 16 kHz audio, so the rate is not part of the recipe."""
    identity = model_identity("acoustic_encoder", model)
    recipe = {"layers": layers, "pooling": pooling, "chunk_s": chunk_s}
    return FeatureRecipe(identity, with_precision(recipe, precision))


def clip_recipe(
    model: str, *, frames: int, detector: str, precision: str = "fp32"
) -> FeatureRecipe:
    identity = model_identity("visual_encoder", model)
    recipe = {"frames": frames, "face_detector": detector}
    return FeatureRecipe(identity, with_precision(recipe, precision))


def text_recipe(backend: str, model: str, *, layers: int, precision: str = "fp32") -> FeatureRecipe:
    settings: dict[str, Any] = {"backend": backend}
    if backend == "hf":  # sentence-transformers models pool their own way, whatever the depth
        settings["layers"] = layers
        settings = with_precision(settings, precision)  # the bundled MiniLM always runs fp32
    return FeatureRecipe(model_identity("text_encoder", model), settings, input="text")


def head_holder(settings: Settings, config: RoleConfig, feature: str) -> Lazy[EmotionHead | None]:
    """The role's head if one was trained (option ``head``, or ``models_dir/heads/<feature>``)."""
    explicit = config.options.get("head")
    folder = Path(explicit).expanduser() if explicit else settings.models_dir / "heads" / feature
    if explicit and not folder.exists():
        raise ModelLoadError("head", str(folder), "path does not exist")

    def load() -> EmotionHead | None:
        return load_head(folder) if head_exists(folder) else None

    return Lazy(load)


def _device(settings: Settings) -> str:
    return settings.resolved_device()


def _precision(settings: Settings) -> str:
    """The settings' resolved precision (what the recipe records; printed at load time)."""
    return settings.resolved_precision()


def _announced_precision(settings: Settings) -> str:
    return announce_precision(settings.precision, settings.resolved_device())


def build_acoustic_tool(settings: Settings, cache: FeatureCache) -> AcousticTool:
    config = settings.role("acoustic_encoder")
    backend = _check_backend("acoustic_encoder", config, ACOUSTIC_BACKENDS)
    if backend in ("prosody", "none"):
        if backend == "prosody":
            cache.check_recipe(PROSODY_FEATURE, prosody_recipe(settings.sample_rate))
        return AcousticTool(cache=cache, encoder=None, prosody=backend == "prosody")
    model = _require_model("acoustic_encoder", config)
    options = config.options
    layers = int(options.get("layers", 4))
    pooling = str(options.get("pooling", "mean"))
    chunk_s = float(options.get("chunk_s", 10.0))
    dtype = str(options.get("dtype", "float32"))
    precision = _precision(settings)
    feature = role_feature_name(config, model, layers=layers, pooling=pooling)
    recipe = acoustic_recipe(
        model, layers=layers, pooling=pooling, chunk_s=chunk_s, precision=precision
    )
    cache.check_recipe(feature, recipe)  # a folder of another model fails now, not per clip
    prosody = bool(options.get("prosody", True))
    if prosody:
        cache.check_recipe(PROSODY_FEATURE, prosody_recipe(settings.sample_rate))

    def load() -> Any:
        from meragent.tools.acoustic_encoder import load_acoustic_encoder

        return load_acoustic_encoder(
            model,
            device=_device(settings),
            layers=layers,
            pooling=pooling,
            chunk_s=chunk_s,
            dtype=dtype,
            precision=_announced_precision(settings),
        )

    key = ("acoustic", model, layers, pooling, chunk_s, dtype, settings.device, precision)
    slot = EncoderSlot(
        shared(key, load), feature, model, head_holder(settings, config, feature), recipe=recipe
    )
    return AcousticTool(cache=cache, encoder=slot, prosody=prosody)


def yunet_path(settings: Settings) -> str | None:
    """The profile's YuNet face-detector file (set on either visual role), if any."""
    for role in ("visual_encoder", "facial_expression"):
        value = settings.role(role).options.get("yunet_onnx")
        if value:
            return str(value)
    return None


def build_visual_tool(settings: Settings, cache: FeatureCache) -> VisualTool:
    visual = settings.role("visual_encoder")
    expression = settings.role("facial_expression")
    _check_backend("visual_encoder", visual, VISUAL_BACKENDS)
    _check_backend("facial_expression", expression, EXPRESSION_BACKENDS)
    yunet = yunet_path(settings)
    if yunet and not Path(yunet).expanduser().is_file():
        raise ModelLoadError("face_detector", yunet, "path does not exist")

    def load_detector() -> Any:
        from meragent.tools.faces import load_face_detector

        return load_face_detector(yunet)

    # YuNet keeps per-instance input-size state, so each tool gets its own detector.
    detector: Lazy[Any] = Lazy(load_detector)
    slot = _clip_slot(settings, visual, yunet, cache) if visual.backend == "clip" else None
    fer: Lazy[Any] | None = None
    expression_recipe: FeatureRecipe | None = None
    if expression.backend == "fer":
        fer, expression_recipe = _fer_classifier(settings, expression, yunet)
    return VisualTool(
        cache=cache,
        detector=detector,
        encoder=slot,
        expression=fer,
        expression_recipe=expression_recipe,
    )


def _clip_slot(
    settings: Settings, visual: RoleConfig, yunet: str | None, cache: FeatureCache
) -> EncoderSlot:
    """The CLIP image encoder of the visual tool (shared loader, head, checked recipe)."""
    model = _require_model("visual_encoder", visual)
    dtype = str(visual.options.get("dtype", "float32"))
    feature = role_feature_name(visual, model)
    precision = _precision(settings)
    recipe = clip_recipe(
        model,
        frames=settings.num_frames,
        detector=detector_identity(yunet),
        precision=precision,
    )
    cache.check_recipe(feature, recipe)

    def load_clip() -> Any:
        from meragent.tools.clip_encoder import load_clip_encoder

        return load_clip_encoder(
            model,
            device=_device(settings),
            dtype=dtype,
            precision=_announced_precision(settings),
        )

    holder = shared(("clip", model, dtype, settings.device, precision), load_clip)
    head = head_holder(settings, visual, feature)
    return EncoderSlot(holder, feature, model, head, recipe=recipe)


def _fer_classifier(
    settings: Settings, expression: RoleConfig, yunet: str | None
) -> tuple[Lazy[Any], FeatureRecipe]:
    """The facial-expression classifier (shared loader) and its recipe."""
    fer_path = expression.model
    if fer_path and not Path(fer_path).expanduser().is_file():
        raise ModelLoadError("facial_expression", fer_path, "path does not exist")

    def load_fer() -> Any:
        from meragent.tools.facial_expression import load_fer_classifier

        return load_fer_classifier(fer_path)

    recipe = fer_recipe(
        str(Path(fer_path).expanduser().resolve()) if fer_path else None,
        settings.num_frames,
        detector_identity(yunet),
    )
    return shared(("fer", fer_path), load_fer), recipe


def build_lexical_tool(settings: Settings, cache: FeatureCache) -> LexicalTool:
    text = settings.role("text_encoder")
    asr = settings.role("asr")
    text_backend = _check_backend("text_encoder", text, TEXT_BACKENDS)
    asr_backend = _check_backend("asr", asr, ASR_BACKENDS)
    slot: EncoderSlot | None = None
    if text_backend != "none":
        model = text.model or ("bundled:minilm" if text_backend == "minilm" else "")
        if text_backend == "hf" or not model.startswith("bundled:"):
            model = _require_model("text_encoder", RoleConfig(backend=text_backend, model=model))
        layers = int(text.options.get("layers", 4))
        feature = role_feature_name(text, model, layers=layers)
        precision = _precision(settings) if text_backend == "hf" else "fp32"
        recipe = text_recipe(text_backend, model, layers=layers, precision=precision)
        cache.check_recipe(feature, recipe)

        def load_text() -> Any:
            from meragent.tools.text_encoder import load_text_encoder

            return load_text_encoder(
                text_backend,
                model,
                device=_device(settings),
                layers=layers,
                precision=_announced_precision(settings) if text_backend == "hf" else "fp32",
            )

        text_key = ("text", text_backend, model, layers, settings.device, precision)
        holder = shared(text_key, load_text)
        head = head_holder(settings, text, feature)
        slot = EncoderSlot(holder, feature, model, head, recipe=recipe)
    recognizer: Lazy[Any] | None = None
    if asr_backend != "none":
        asr_model = _require_model("asr", asr)
        options = asr.options

        def load_recognizer() -> Any:
            from meragent.tools.asr import load_asr

            return load_asr(
                asr_model,
                models_dir=settings.models_dir,
                device=_device(settings),
                backend=asr_backend,
                compute_type=options.get("compute_type"),
                language=options.get("language"),
                batch_size=int(options.get("batch_size", 8)),
            )

        key = (
            "asr",
            asr_backend,
            asr_model,
            str(settings.models_dir),
            settings.device,
            options.get("compute_type"),
            options.get("language"),
        )
        recognizer = shared(key, load_recognizer)
    return LexicalTool(cache=cache, asr=recognizer, encoder=slot)


def build_describer(settings: Settings, kind: str) -> Describer | None:
    """The audio (``kind="audio"``) or video describer of the profile, or None when disabled."""
    from meragent.tools import describers

    role = "audio_llm" if kind == "audio" else "video_llm"
    config = settings.role(role)
    backend = _check_backend(role, config, LLM_BACKENDS)
    if backend == "none":
        return None
    max_new_tokens = int(config.options.get("max_new_tokens", 256))
    if backend == "openai":
        if not config.model:
            raise ConfigError(f"role {role}: backend 'openai' needs the served model name")
        chat = describers.make_openai_chat(
            config.model,
            base_url=config.options.get("base_url") or settings.llm_base_url,
            api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            max_tokens=max_new_tokens,
        )
        return describers.OpenAIDescriber(
            kind="audio" if kind == "audio" else "video",
            chat_model=chat,
            model_id=config.model,
            frame_max_side=int(config.options.get("frame_max_side", 448)),
        )
    model = _require_model(role, config)
    dtype = str(config.options.get("dtype", "auto"))
    if kind == "audio":

        def load_audio() -> Any:
            return describers.load_audio_llm(model, device=_device(settings), dtype=dtype)

        holder = shared(("audio_llm", model, dtype, settings.device), load_audio)
        return describers.LocalAudioDescriber(holder, model, max_new_tokens=max_new_tokens)
    max_pixels = int(config.options.get("max_pixels", describers.DEFAULT_MAX_PIXELS))

    def load_video() -> Any:
        return describers.load_video_llm(
            model, device=_device(settings), dtype=dtype, max_pixels=max_pixels
        )

    holder = shared(("video_llm", model, dtype, max_pixels, settings.device), load_video)
    return describers.LocalVideoDescriber(holder, model, max_new_tokens=max_new_tokens)


def build_toolset(settings: Settings, cache: FeatureCache | None = None) -> ToolSet:
    """Every tool the graph's tool nodes need, per the settings' profile (nothing loaded yet)."""
    cache = cache or FeatureCache(settings.features_dir)
    return ToolSet(
        acoustic=build_acoustic_tool(settings, cache),
        visual=build_visual_tool(settings, cache),
        lexical=build_lexical_tool(settings, cache),
        audio_describer=build_describer(settings, "audio"),
        video_describer=build_describer(settings, "video"),
    )
