"""build_toolset: backends chosen from the profile, lazy loading, cache use, heads, bad config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meragent.config import load_settings
from meragent.data.media_types import DecodedMedia
from meragent.errors import ConfigError, ModelLoadError
from meragent.schema import Clip, Modality
from meragent.tools.base import ModalityTool
from meragent.tools.describers import OpenAIDescriber
from meragent.tools.feature_cache import FeatureCache
from meragent.tools.heads import HeadConfig, build_head_module, load_head, save_head
from meragent.tools.modality_tools import PROSODY_FEATURE, AcousticTool, LexicalTool, VisualTool
from meragent.tools.registry import build_toolset, feature_name_for

SR = 16000


def speechlike(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 160 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(
        np.float32
    )


def test_offline_profile_builds_without_loading_anything(tmp_path: Path) -> None:
    tools = build_toolset(load_settings(profile="offline", home=tmp_path))
    assert isinstance(tools.acoustic, AcousticTool) and tools.acoustic.encoder is None
    assert isinstance(tools.visual, VisualTool) and tools.visual.expression is not None
    assert isinstance(tools.lexical, LexicalTool) and tools.lexical.encoder is not None
    for tool in (tools.acoustic, tools.visual, tools.lexical):
        assert isinstance(tool, ModalityTool)
    assert tools.lexical.asr is not None and not tools.lexical.asr.loaded
    assert tools.lexical.encoder.feature == "all-MiniLM-L6-v2-UTT"
    assert tools.audio_describer is None and tools.video_describer is None


def test_full_profile_uses_openai_describers(tmp_path: Path) -> None:
    settings = load_settings(profile="full", home=tmp_path, llm_base_url="http://127.0.0.1:9/v1")
    tools = build_toolset(settings)
    assert isinstance(tools.audio_describer, OpenAIDescriber)
    assert isinstance(tools.video_describer, OpenAIDescriber)
    assert tools.video_describer.kind == "video"
    assert tools.acoustic.encoder.feature == "chinese-hubert-large-UTT"


def test_prosody_tool_clue_and_missing_audio(tmp_path: Path) -> None:
    tools = build_toolset(load_settings(profile="offline", home=tmp_path))
    media = DecodedMedia("a", SR, 1.0, audio=speechlike())
    clue = tools.acoustic.analyze(Clip(id="a"), media)
    assert clue.available and clue.modality is Modality.ACOUSTIC
    assert clue.text.startswith("voice: ") and "pitch" in clue.text
    assert clue.data["prosody"]["pitch_median_hz"] == pytest.approx(160, rel=0.05)
    assert clue.feature_ref == str(tmp_path / "features" / PROSODY_FEATURE / "a.npy")
    assert np.load(clue.feature_ref, allow_pickle=False).shape == (11,)
    silent = tools.acoustic.analyze(Clip(id="b"), DecodedMedia("b", SR, 1.0))
    assert not silent.available and silent.error == "clip has no audio track"


def test_bad_configurations_name_the_role(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "hubert"
    settings = load_settings(
        home=tmp_path, models={"acoustic_encoder": {"backend": "hubert", "model": str(missing)}}
    )
    with pytest.raises(ModelLoadError) as info:
        build_toolset(settings)
    assert "acoustic_encoder" in str(info.value) and str(missing) in str(info.value)
    with pytest.raises(ConfigError, match="visual_encoder"):
        build_toolset(load_settings(home=tmp_path, models={"visual_encoder": {"backend": "vit"}}))
    with pytest.raises(ConfigError, match="needs a model"):
        build_toolset(load_settings(home=tmp_path, models={"visual_encoder": {"backend": "clip"}}))
    fer = {"backend": "fer", "model": str(tmp_path / "x.tflite")}
    with pytest.raises(ModelLoadError, match="facial_expression"):
        build_toolset(load_settings(home=tmp_path, models={"facial_expression": fer}))
    head = {"backend": "minilm", "options": {"head": str(tmp_path / "no-head")}}
    with pytest.raises(ModelLoadError, match="cannot load head model"):
        build_toolset(load_settings(home=tmp_path, models={"text_encoder": head}))


def test_feature_names_follow_mertools() -> None:
    assert feature_name_for("TencentGameMate/chinese-hubert-large") == "chinese-hubert-large-UTT"
    assert feature_name_for("/models/clip-vit-large-patch14/") == "clip-vit-large-patch14-UTT"
    assert feature_name_for("org/m", layers=2, pooling="max") == "m-last2-max-UTT"


def test_hubert_tool_writes_cache_and_uses_a_trained_head(
    tmp_path: Path, tiny_hubert: Path
) -> None:
    import torch

    models = {
        "acoustic_encoder": {
            "backend": "hubert",
            "model": str(tiny_hubert),
            "options": {"layers": 2},
        },
        "text_encoder": {"backend": "none"},
        "asr": {"backend": "none"},
    }
    settings = load_settings(profile="offline", home=tmp_path, device="cpu", models=models)
    media = DecodedMedia("h", SR, 1.0, audio=speechlike())
    clue = build_toolset(settings).acoustic.analyze(Clip(id="h"), media)
    feature = feature_name_for(str(tiny_hubert), layers=2)
    assert feature.endswith("-last2-UTT")
    cache = FeatureCache(settings.features_dir)
    assert clue.feature_ref == str(cache.path(feature, "h"))
    assert cache.load(feature, "h").shape == (32,) and clue.probs is None
    assert clue.data["prosody_ref"].endswith(f"{PROSODY_FEATURE}/h.npy")

    torch.manual_seed(0)
    config = HeadConfig(in_dim=32, hidden_dims=[8], encoder=feature)
    save_head(build_head_module(config).eval(), config, settings.models_dir / "heads" / feature)
    # A cached vector (ours or MERTools') is used as is: the head must score exactly it.
    known = np.linspace(-1, 1, 32, dtype=np.float32)
    cache.save(feature, "h", known)
    scored = build_toolset(settings).acoustic.analyze(Clip(id="h"), media)
    expected = load_head(settings.models_dir / "heads" / feature).probs_dict(known)
    assert scored.probs == pytest.approx(expected)
    assert "speech-emotion model" in scored.text


def test_lexical_tool_with_hf_encoder(tmp_path: Path, tiny_bert: Path) -> None:
    models = {
        "text_encoder": {"backend": "hf", "model": str(tiny_bert), "options": {"layers": 2}},
        "asr": {"backend": "none"},
    }
    settings = load_settings(profile="offline", home=tmp_path, device="cpu", models=models)
    tools = build_toolset(settings)
    media = DecodedMedia("t", SR, 1.0)
    clue = tools.lexical.analyze(Clip(id="t", subtitle="i am so happy"), media)
    assert clue.available and clue.data["origin"] == "given"
    assert clue.feature_ref and np.load(clue.feature_ref, allow_pickle=False).shape == (32,)
    no_words = tools.lexical.analyze(Clip(id="u"), media)
    assert not no_words.available and "ASR is disabled" in (no_words.error or "")


@pytest.mark.slow
def test_offline_toolset_on_a_decoded_synthetic_clip(synth_dataset: Path, tmp_path: Path) -> None:
    from meragent.data.manifest import load_manifest
    from meragent.data.media import decode_media

    clip = load_manifest(synth_dataset).clips[0]
    assert clip.video is not None and clip.subtitle
    media = decode_media(clip.video, clip_id=clip.id, num_frames=4)
    tools = build_toolset(load_settings(profile="offline", home=tmp_path, device="cpu"))
    acoustic = tools.acoustic.analyze(clip, media)
    visual = tools.visual.analyze(clip, media)
    lexical = tools.lexical.analyze(clip, media)
    assert acoustic.available and "pitch" in acoustic.text
    assert visual.available and visual.probs is not None and visual.data["faces_found"] == 4
    assert lexical.available and lexical.data["origin"] == "given"
    assert not tools.lexical.asr.loaded  # the subtitle was given: whisper never loaded
    vectors = [np.load(c.feature_ref, allow_pickle=False) for c in (acoustic, visual, lexical)]
    assert [v.shape for v in vectors] == [(11,), (7,), (384,)]
    for clue in (acoustic, visual, lexical):
        assert clue.model_dump_json()  # JSON-able: safe to put into graph state
