"""Write RGB frames and mono audio into a media file with PyAV (no system ffmpeg).

``write_clip`` interleaves the audio with the frames, as real recordings are; it backs the
synthetic clips and the deliberately odd files of the data layer's tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from meragent.data.synth_speech import SAMPLE_RATE


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
