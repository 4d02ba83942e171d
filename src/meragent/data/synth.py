"""Synthetic clips for tests and the demo, plus makers of deliberately broken media files.

A synthetic clip is an H.264/AAC mp4 of a real face photo (``skimage.data.astronaut()``, public
domain, cropped around the face and gently moving) with a spoken sentence in the audio track.
The sentences are small FLAC files shipped in ``meragent/data/assets/speech`` that the project
rendered once with espeak-ng (``render_speech_assets``), so nothing here needs espeak at runtime.
Everything is written with PyAV; no system ffmpeg is involved.

The ``write_*`` / ``truncate_file`` functions make the bad inputs of the data layer's tests
(empty, truncated, audio-only, video-only, very short, very long, mixed-encoding manifests).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from meragent.data.media import read_audio

#: Column order of the CSV manifests this module writes (layout (c) of ``load_manifest``).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "name",
    "video",
    "subtitle",
    "language",
    "discrete",
    "valence",
    "openset",
)
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


# ---------------------------------------------------------------------------- writers


def write_clip(
    path: Path,
    frames: Iterable[np.ndarray] | None,
    *,
    fps: int = 25,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    faststart: bool = False,
    keyframe_every: int | None = None,
    audio_codec: str | None = None,
) -> Path:
    """Encode RGB frames (H.264) and/or mono float32 audio (AAC) into ``path`` with PyAV.

    ``.wav`` gets PCM audio only; ``.avi`` gets MPEG-4 video and PCM audio. ``faststart`` puts
    the mp4 index first (so a truncated copy still opens); ``keyframe_every`` sets the GOP;
    ``audio_codec`` overrides the audio codec (``pcm_s16le`` costs no encoding time).
    Audio is interleaved with the frames, as real recordings are.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    video_codec, default_audio_codec = _codecs_for(suffix)
    audio_codec = audio_codec or default_audio_codec
    frame_iter = iter(frames) if frames is not None else iter(())
    first = next(frame_iter, None)
    if first is None and audio is None:
        raise ValueError("write_clip needs frames, audio, or both")
    if first is not None and video_codec is None:
        raise ValueError(f"{suffix} files cannot hold video")
    options = {"movflags": "faststart"} if faststart and suffix in (".mp4", ".mov") else {}
    samples = None if audio is None else np.asarray(audio, dtype=np.float32).reshape(-1)
    with av.open(str(path), mode="w", options=options) as container:
        video = None
        if first is not None and video_codec is not None:
            video = _add_video_stream(container, video_codec, fps, first.shape, keyframe_every)
        sound = None
        if samples is not None:
            sound = _AudioWriter(container, audio_codec, samples, sample_rate)
        if video is not None and first is not None:
            for index, image in enumerate(_chain(first, frame_iter)):
                if sound is not None:
                    sound.write_until((index + 1) / fps)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
        if sound is not None:
            sound.finish()
    return path


def _add_video_stream(
    container: Any, codec: str, fps: int, shape: tuple[int, ...], keyframe_every: int | None
) -> Any:
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = shape[:2]
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
        # ultrafast: test fixtures must be quick to write on a 2-core machine.
        stream.options = {"preset": "ultrafast", "crf": "23"}
    stream.codec_context.gop_size = keyframe_every or 250
    return stream


class _AudioWriter:
    """Feeds mono float32 samples to an audio stream in 0.1 s frames, on demand."""

    def __init__(self, container: Any, codec: str, samples: np.ndarray, sample_rate: int) -> None:
        self.container = container
        self.stream = container.add_stream(codec, rate=sample_rate, layout="mono")
        self.samples = samples
        self.sample_rate = sample_rate
        self.position = 0

    def write_until(self, seconds: float) -> None:
        import av

        stop = min(int(seconds * self.sample_rate), self.samples.size)
        chunk = self.sample_rate // 10
        while self.position < stop:
            end = min(self.position + chunk, self.samples.size)
            piece = np.ascontiguousarray(self.samples[None, self.position : end])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self.position
            self.container.mux(self.stream.encode(frame))
            self.position = end

    def finish(self) -> None:
        self.write_until(self.samples.size / self.sample_rate)
        self.container.mux(self.stream.encode(None))


def _codecs_for(suffix: str) -> tuple[str | None, str]:
    if suffix in (".mp4", ".mov", ".mkv", ".m4a"):
        return ("libx264" if suffix != ".m4a" else None), "aac"
    if suffix == ".avi":
        return "mpeg4", "pcm_s16le"
    if suffix == ".wav":
        return None, "pcm_s16le"
    raise ValueError(f"cannot write {suffix!r} files (use .mp4, .mov, .mkv, .avi, .m4a or .wav)")


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def write_face_clip(
    path: Path,
    *,
    duration_s: float = 2.0,
    fps: int = 25,
    size: int = 224,
    seed: int = 0,
    audio: Literal["speech", "tone", "none"] = "tone",
    speech: SpeechSample | None = None,
    faststart: bool = False,
) -> Path:
    """One talking-face clip: the moving face crop plus speech, a tone, or no audio track."""
    if audio == "speech":
        if speech is None:
            speech = load_speech_samples()[0]
        # Never cut a sentence: the clip grows to hold it (ASR tests compare the words).
        duration_s = max(duration_s, len(speech.audio) / SAMPLE_RATE + 0.2)
        track = speech_track(speech, duration_s, seed=seed)
    elif audio == "tone":
        track = tone_track(duration_s, seed=seed)
    else:
        track = None
    n_frames = max(round(duration_s * fps), 1)
    return write_clip(
        path,
        face_frames(n_frames, size, seed=seed),
        fps=fps,
        audio=track,
        faststart=faststart,
    )


def make_synthetic_dataset(
    out_dir: Path,
    n: int,
    *,
    seed: int = 0,
    duration_s: float = 2.0,
    fps: int = 25,
    size: int = 224,
    audio: Literal["speech", "tone"] = "speech",
) -> Path:
    """Write ``n`` face clips to ``out_dir/video/`` and return the path of ``out_dir/manifest.csv``.

    Clip ``i`` speaks shipped sentence ``i % 5`` (English and Chinese, one emotion each); its
    subtitle, language, six-class label, valence and open-set labels come from that sentence.
    ``audio="tone"`` replaces the speech by a tone (labels unchanged). Clips are at least
    ``duration_s`` long, longer when the sentence needs it.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    samples = load_speech_samples()
    rows = []
    for i in range(n):
        sample = samples[i % len(samples)]
        name = f"synth_{i:03d}"
        video = Path("video") / f"{name}.mp4"
        write_face_clip(
            out_dir / video,
            duration_s=duration_s,
            fps=fps,
            size=size,
            seed=seed * 1000 + i,
            audio=audio,
            speech=sample,
        )
        rows.append(
            {
                "name": name,
                "video": video.as_posix(),
                "subtitle": sample.text,
                "language": sample.language,
                "discrete": sample.discrete,
                "valence": sample.valence,
                "openset": str(list(sample.openset)),
            }
        )
    return write_manifest(out_dir / "manifest.csv", rows)


def write_manifest(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str] = MANIFEST_COLUMNS,
    row_encodings: Mapping[str, str] | None = None,
) -> Path:
    """Write a CSV manifest; ``row_encodings`` maps a clip name to the encoding of its row.

    Rows are UTF-8 unless named in ``row_encodings`` (e.g. ``{"clip_3": "gbk"}`` makes one
    non-UTF-8 row, as MER transcription files sometimes have).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encodings = row_encodings or {}
    with path.open("wb") as handle:
        handle.write(_csv_line(columns).encode("utf-8"))
        for row in rows:
            values = ["" if row.get(col) is None else str(row.get(col)) for col in columns]
            encoding = encodings.get(str(row.get("name")), "utf-8")
            handle.write(_csv_line(values).encode(encoding))
    return path


def _csv_line(values: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- bad files


def write_empty_file(path: Path) -> Path:
    """A zero-byte file (e.g. an interrupted download)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_garbage_file(path: Path, n_bytes: int = 4096, *, seed: int = 0) -> Path:
    """Random bytes under a media file name (not a container FFmpeg can read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(n_bytes))
    return path


def truncate_file(path: Path, keep_fraction: float = 0.5, *, out: Path | None = None) -> Path:
    """Keep the first ``keep_fraction`` of ``path``'s bytes (in place, or into ``out``)."""
    if not 0.0 <= keep_fraction < 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1), got {keep_fraction}")
    data = Path(path).read_bytes()
    target = Path(out) if out is not None else Path(path)
    target.write_bytes(data[: int(len(data) * keep_fraction)])
    return target


def write_audio_only(path: Path, *, duration_s: float = 2.0, seed: int = 0) -> Path:
    """A file with an audio stream and no video stream (``.mp4``/``.m4a`` AAC or ``.wav``)."""
    return write_clip(path, None, audio=tone_track(duration_s, seed=seed))


def write_video_only(
    path: Path, *, duration_s: float = 2.0, fps: int = 25, size: int = 112, seed: int = 0
) -> Path:
    """A face clip with no audio stream."""
    return write_face_clip(path, duration_s=duration_s, fps=fps, size=size, seed=seed, audio="none")


def write_short_clip(
    path: Path, *, duration_s: float = 0.2, fps: int = 25, size: int = 112, seed: int = 0
) -> Path:
    """A face clip shorter than the ``very_short`` threshold (default 0.2 s, 5 frames)."""
    return write_face_clip(path, duration_s=duration_s, fps=fps, size=size, seed=seed, audio="tone")


def write_long_clip(
    path: Path,
    *,
    duration_s: float = 600.0,
    fps: int = 2,
    size: int = 64,
    with_audio: bool = True,
) -> Path:
    """A long, cheap clip (default 10 min, 64x64 at 2 fps, keyframe every 2 s) for bounded decode.

    Frame ``i`` has brightness ``i % 256``, so a test can tell which frame a sampler picked.
    The audio (a 220 Hz tone) is stored as PCM: AAC-encoding 10 minutes would take ~10 s.
    """
    n_frames = round(duration_s * fps)
    audio = None
    if with_audio:
        t = np.arange(int(duration_s * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE
        audio = (0.1 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    return write_clip(
        path,
        flat_frames(n_frames, size),
        fps=fps,
        audio=audio,
        keyframe_every=2 * fps,
        audio_codec="pcm_s16le",
    )
