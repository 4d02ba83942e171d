"""Speech recognition: bundled whisper assembly, whisperx transcription, silence, bad paths."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from meragent.data.media_types import DecodedMedia
from meragent.errors import ModelLoadError
from meragent.schema import Clip
from meragent.tools.asr import SpeechRecognizer, assemble_bundled_whisper, load_asr
from meragent.tools.feature_cache import FeatureCache
from meragent.tools.lazy import Lazy
from meragent.tools.modality_tools import NO_SPEECH, LexicalTool


def words(text: str) -> list[str]:
    text = text.lower().replace("i'm", "i am").replace("n't", " not")
    return re.findall(r"[a-z']+", text)


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(len(ref), 1)


def test_word_error_rate_helper() -> None:
    assert word_error_rate("I am really worried", "I'm really worried.") == 0.0
    assert word_error_rate("a b c d", "a x c") == pytest.approx(0.5)


def test_silence_needs_no_model() -> None:
    # Digital silence is answered before the model is touched (model=None proves it).
    recognizer = SpeechRecognizer(model=None, backend="whisperx", model_id="unused")
    transcript = recognizer.transcribe(np.zeros(16000, dtype=np.float32), 16000)
    assert transcript.text == "" and transcript.no_speech and transcript.language is None


def test_bad_asr_configuration(tmp_path: Path) -> None:
    missing = tmp_path / "whisper-large"
    with pytest.raises(ModelLoadError) as info:
        load_asr(str(missing), models_dir=tmp_path)
    assert "asr" in str(info.value) and str(missing) in str(info.value)
    with pytest.raises(ModelLoadError, match="backend"):
        load_asr("bundled:whisper-base", models_dir=tmp_path, backend="vosk")


def test_lexical_tool_without_subtitle_or_audio(tmp_path: Path) -> None:
    tool = LexicalTool(cache=FeatureCache(tmp_path), asr=None)
    media = DecodedMedia(clip_id="c", sample_rate=16000, duration=1.0)
    clue = tool.analyze(Clip(id="c"), media)
    assert not clue.available and "ASR is disabled" in (clue.error or "")
    silent = SpeechRecognizer(model=None, backend="whisperx", model_id="unused")
    tool = LexicalTool(cache=FeatureCache(tmp_path), asr=Lazy(lambda: silent))
    assert not tool.analyze(Clip(id="c"), media).available  # no audio track to transcribe
    quiet = DecodedMedia("c", 16000, 1.0, audio=np.zeros(16000, dtype=np.float32))
    clue = tool.analyze(Clip(id="c"), quiet)
    assert clue.available and NO_SPEECH in clue.flags and clue.data["subtitle"] == ""
    given = tool.analyze(Clip(id="c", subtitle=" hello ", language="en"), quiet)
    assert given.data == {"subtitle": "hello", "origin": "given", "language": "en"}
    assert given.text == 'subtitle, language en: "hello"'


@pytest.mark.slow
def test_bundled_whisper_assembles_once_and_transcribes_speech(tmp_path: Path) -> None:
    from meragent.data.synth import load_speech_samples

    folder = assemble_bundled_whisper(tmp_path / "models")
    assert {p.name for p in folder.iterdir()} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.json",
    }
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert assemble_bundled_whisper(tmp_path / "models") == folder
    assert (folder / "model.bin").stat().st_mtime_ns == stamp
    assert not list((tmp_path / "models").glob(".whisper-base.*"))

    recognizer = load_asr("bundled:whisper-base", models_dir=tmp_path / "models")
    sample = next(s for s in load_speech_samples() if s.name == "en_worried")
    media = DecodedMedia("w", 16000, len(sample.audio) / 16000, audio=sample.audio)
    tool = LexicalTool(cache=FeatureCache(tmp_path / "features"), asr=Lazy(lambda: recognizer))
    clue = tool.analyze(Clip(id="w"), media)
    assert clue.available and clue.flags == ["asr"]
    assert clue.data["language"] == "en" and clue.data["language_prob"] > 0.5
    assert word_error_rate(sample.text, clue.data["subtitle"]) <= 0.25
    assert "transcribed, language en" in clue.text
