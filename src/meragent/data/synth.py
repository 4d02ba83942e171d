"""Synthetic clips for tests and the demo, plus makers of deliberately broken media files.

A synthetic clip is an H.264/AAC mp4 of a real face photo (``skimage.data.astronaut()``, public
domain, cropped around the face and gently moving) with a spoken sentence in the audio track
(``synth_speech``: the shipped sentences and the frames; ``av_writer``: the PyAV encoder).

The ``write_*`` / ``truncate_file`` functions make the bad inputs of the data layer's tests
(empty, truncated, audio-only, video-only, very short, very long, mixed-encoding manifests).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from meragent.data.av_writer import write_clip
from meragent.data.synth_speech import (
    SAMPLE_RATE,
    SPEECH_SCRIPT,
    SpeechSample,
    face_frames,
    flat_frames,
    load_speech_samples,
    render_speech_assets,
    speech_asset_dir,
    speech_track,
    tone_track,
)

#: Re-exported: tests and the demo import the clip makers from here.
__all__ = [
    "MANIFEST_COLUMNS",
    "SAMPLE_RATE",
    "SPEECH_SCRIPT",
    "SpeechSample",
    "face_frames",
    "load_speech_samples",
    "make_synthetic_dataset",
    "render_speech_assets",
    "speech_asset_dir",
    "speech_track",
    "tone_track",
    "truncate_file",
    "write_audio_only",
    "write_clip",
    "write_empty_file",
    "write_face_clip",
    "write_garbage_file",
    "write_long_clip",
    "write_manifest",
    "write_short_clip",
    "write_video_only",
]

#: Column order of the CSV manifests this module writes (the ``csv`` layout of ``load_manifest``).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "name",
    "video",
    "subtitle",
    "language",
    "discrete",
    "valence",
    "openset",
)


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
