"""What a synthetic clip shows and says: the moving face crop, the shipped sentences, tones.

The sentences are small FLAC files in ``meragent/data/assets/speech`` that the project rendered
once with espeak-ng (``render_speech_assets``), so nothing needs espeak at runtime. The face is
``skimage.data.astronaut()`` (public domain), cropped around the face and gently moving.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from meragent.data.media import read_audio

SAMPLE_RATE = 16000
#: The sentences behind the shipped speech files: our own wording, one clear emotion each.
SPEECH_SCRIPT: tuple[dict[str, Any], ...] = (
    {
        "file": "en_happy.flac",
        "language": "en",
        "voice": "en-us",
        "rate": 170,
        "text": "That is wonderful news, I am so happy!",
        "discrete": "happy",
        "valence": 3.0,
        "openset": ["happy", "excited"],
    },
    {
        "file": "zh_happy.flac",
        "language": "zh",
        "voice": "cmn-latn-pinyin",
        "rate": 170,
        "text": "太好了，我今天真开心！",
        "discrete": "happy",
        "valence": 3.5,
        "openset": ["happy", "delighted"],
    },
    {
        "file": "en_worried.flac",
        "language": "en",
        "voice": "en-us",
        "rate": 170,
        "text": "I am really worried about tomorrow.",
        "discrete": "worried",
        "valence": -2.0,
        "openset": ["worried", "anxious"],
    },
    {
        "file": "zh_angry.flac",
        "language": "zh",
        "voice": "cmn-latn-pinyin",
        "rate": 170,
        "text": "你怎么又迟到了！",
        "discrete": "angry",
        "valence": -3.0,
        "openset": ["angry", "annoyed"],
    },
    {
        "file": "en_surprise.flac",
        "language": "en",
        "voice": "en-us",
        "rate": 170,
        "text": "Wow, I did not expect that!",
        "discrete": "surprise",
        "valence": 1.0,
        "openset": ["surprised", "amazed"],
    },
)
#: Crop of astronaut() around the face (x0, y0, side) in the 512x512 photo.
_FACE_BOX = (95, 0, 270)


@dataclass(frozen=True)
class SpeechSample:
    """One shipped sentence: its audio (16 kHz mono float32) and what it says."""

    name: str
    text: str
    language: str
    discrete: str
    valence: float
    openset: tuple[str, ...]
    audio: np.ndarray


# ---------------------------------------------------------------------------- speech assets


def speech_asset_dir() -> Path:
    """The folder of shipped speech FLAC files and their ``index.json``."""
    return Path(str(resources.files("meragent.data") / "assets" / "speech"))


def render_speech_assets(out_dir: Path | None = None, *, espeak: str = "espeak-ng") -> Path:
    """Maintainer tool: synthesise ``SPEECH_SCRIPT`` with espeak-ng into 16 kHz FLAC files.

    Writes ``<file>.flac`` per sentence and ``index.json`` (text, language, labels) into
    ``out_dir`` (default: the package's asset folder). Needs the ``espeak-ng`` program; the
    rest of the project only reads the result.
    """
    import soundfile

    if shutil.which(espeak) is None:
        raise FileNotFoundError(f"{espeak} is not installed (apt-get install espeak-ng)")
    out_dir = Path(out_dir) if out_dir is not None else speech_asset_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    with tempfile.TemporaryDirectory() as tmp:
        for entry in SPEECH_SCRIPT:
            wav = Path(tmp) / "speech.wav"
            subprocess.run(
                [
                    espeak,
                    "-v",
                    entry["voice"],
                    "-s",
                    str(entry["rate"]),
                    "-w",
                    str(wav),
                    entry["text"],
                ],
                check=True,
                capture_output=True,
            )
            audio = _trim_silence(read_audio(wav, clip_id=entry["file"], sample_rate=SAMPLE_RATE))
            audio = (0.5 * audio / max(float(np.abs(audio).max()), 1e-6)).astype(np.float32)
            soundfile.write(out_dir / entry["file"], audio, SAMPLE_RATE, subtype="PCM_16")
            index.append({k: v for k, v in entry.items() if k not in ("voice", "rate")})
    index_path = out_dir / "index.json"
    index_path.write_text(json.dumps(index, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return index_path


def _trim_silence(audio: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    pad = SAMPLE_RATE // 20
    return audio[max(loud[0] - pad, 0) : loud[-1] + pad]


def load_speech_samples() -> list[SpeechSample]:
    """Read the shipped sentences (audio decoded with PyAV)."""
    folder = speech_asset_dir()
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    samples = []
    for entry in index:
        audio = read_audio(folder / entry["file"], clip_id=entry["file"], sample_rate=SAMPLE_RATE)
        samples.append(
            SpeechSample(
                name=Path(entry["file"]).stem,
                text=entry["text"],
                language=entry["language"],
                discrete=entry["discrete"],
                valence=float(entry["valence"]),
                openset=tuple(entry["openset"]),
                audio=audio,
            )
        )
    return samples


# ---------------------------------------------------------------------------- signals


def face_frames(
    n_frames: int, size: int = 224, *, seed: int = 0, motion: bool = True
) -> Iterator[np.ndarray]:
    """Yield ``n_frames`` RGB uint8 (size, size, 3) crops of the astronaut's face.

    The crop drifts by a few pixels and zooms by a few percent (smoothly, phase set by ``seed``)
    so consecutive frames differ the way a talking head does, while the face stays detectable.
    """
    import cv2
    from skimage import data as skdata

    photo = skdata.astronaut()
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    gain = rng.uniform(0.95, 1.05)
    x0, y0, side = _FACE_BOX
    for i in range(n_frames):
        t = i / 25.0
        wobble = np.sin(2 * np.pi * 0.5 * t + phase) if motion else np.zeros(3)
        crop_side = side * (1.0 - 0.04 * (1 + wobble[2]) / 2)
        height, width = photo.shape[:2]
        left = float(np.clip(x0 + (side - crop_side) / 2 + 6 * wobble[0], 0, width - crop_side))
        top = float(np.clip(y0 + (side - crop_side) / 2 + 4 * wobble[1], 0, height - crop_side))
        # Sub-pixel affine crop: every frame moves a little, as a filmed head does.
        scale = size / crop_side
        matrix = np.array([[scale, 0.0, -left * scale], [0.0, scale, -top * scale]])
        frame = cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_LINEAR)
        yield np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def flat_frames(n_frames: int, size: int = 64) -> Iterator[np.ndarray]:
    """Cheap frames for very long clips: a grey level ramp (frame i is brightness i % 256)."""
    for i in range(n_frames):
        yield np.full((size, size, 3), i % 256, dtype=np.uint8)


def tone_track(duration_s: float, *, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A speech-like tone: harmonics of a gliding 120-220 Hz pitch, pulsed at syllable rate."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    f0 = 170 + 50 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, np.pi))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 5))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t))
    return (0.2 * voice * envelope).astype(np.float32)


def speech_track(
    sample: SpeechSample, duration_s: float, *, seed: int = 0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Place a sentence 0.1 s into a track of ``duration_s`` (faint noise elsewhere)."""
    rng = np.random.default_rng(seed)
    n = round(duration_s * sample_rate)
    track = (0.002 * rng.standard_normal(n)).astype(np.float32)
    start = int(0.1 * sample_rate)
    speech = sample.audio[: max(n - start, 0)]
    track[start : start + speech.size] += speech
    return track
