"""Decode a clip once: 16 kHz mono float32 audio and N uniformly sampled RGB frames (PyAV only).

PyAV's wheels carry FFmpeg, so no system ``ffmpeg`` binary is needed. Memory stays bounded on
very long clips: only the N chosen frames are ever converted to arrays, and clips longer than
``SEEK_THRESHOLD_S`` are sampled by seeking to each target time instead of decoding through the
whole file. Broken input becomes either a ``MediaError`` (nothing usable) or a flag on the result
(``no_audio``, ``no_video``, ``very_short``, ``truncated``) so callers keep what exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from meragent.data.media_types import DecodedMedia
from meragent.errors import MediaError

if TYPE_CHECKING:
    from fractions import Fraction

    import av.container
    import av.video.frame
    import av.video.stream

#: File name endings read as videos when a folder is scanned.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv")
#: Clips shorter than this are flagged ``very_short`` (too little signal for most encoders).
VERY_SHORT_S = 0.5
#: Above this duration frames are sampled by seeking; below it one streaming pass is cheaper,
#: because MER clips (2-16 s) often hold one keyframe only and every seek would re-decode it.
SEEK_THRESHOLD_S = 30.0


@dataclass
class _SampledFrames:
    frames: np.ndarray
    times: np.ndarray
    truncated: bool


def decode_media(
    path: Path,
    *,
    clip_id: str,
    num_frames: int = 8,
    sample_rate: int = 16000,
    audio_path: Path | None = None,
    max_audio_s: float | None = None,
) -> DecodedMedia:
    """Decode ``path`` into audio (``sample_rate`` Hz mono float32) and ``num_frames`` RGB frames.

    ``audio_path`` (e.g. MER2024's ``audio/<name>.wav``) replaces the video's own audio track;
    if it cannot be read the video's track is used and the flag ``audio_file_unreadable`` is set.
    ``max_audio_s`` caps how much audio is decoded (memory on very long clips).
    Raises ``MediaError`` naming the clip when the file is missing, empty, unreadable or has no
    audio or video stream.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    path = Path(path)
    _check_readable_file(path, clip_id)
    has_video, has_audio, container_duration = _probe_streams(path, clip_id)
    flags: list[str] = []
    frames, frame_times, fps, video_duration = _decode_frames(
        path, clip_id, has_video, num_frames, flags
    )
    audio, audio_truncated, audio_flags = _decode_clip_audio(
        path, clip_id, has_audio, audio_path, sample_rate, max_audio_s
    )
    flags.extend(audio_flags)
    if audio_truncated and "truncated" not in flags:
        flags.append("truncated")
    if frames is None and audio is None:
        raise _media_error(clip_id, path, "no decodable audio or video (corrupt or cut-off file)")

    audio_duration = 0.0 if audio is None else len(audio) / sample_rate
    duration = video_duration or container_duration or audio_duration
    if duration < VERY_SHORT_S:
        flags.append("very_short")
    return DecodedMedia(
        clip_id=clip_id,
        sample_rate=sample_rate,
        duration=float(duration),
        audio=audio,
        frames=frames,
        frame_times=frame_times,
        fps=fps,
        flags=flags,
    )


def _decode_frames(
    path: Path, clip_id: str, has_video: bool, num_frames: int, flags: list[str]
) -> tuple[np.ndarray | None, np.ndarray | None, float | None, float]:
    """(frames, frame_times, fps, video duration) of ``path``; appends its flags to ``flags``."""
    if not has_video:
        flags.append("no_video")
        return None, None, None, 0.0
    sampled, fps, video_duration = _sample_video(path, clip_id, num_frames)
    if sampled is None:
        # A video stream whose data is gone (cut-off file): keep whatever audio there is.
        flags.extend(["no_video", "truncated"])
        return None, None, fps, video_duration
    if sampled.truncated:
        flags.append("truncated")
    return sampled.frames, sampled.times, fps, video_duration


def read_audio(
    path: Path, *, clip_id: str, sample_rate: int = 16000, max_s: float | None = None
) -> np.ndarray:
    """Decode the first audio stream of ``path`` to mono float32 at ``sample_rate`` Hz.

    Raises ``MediaError`` when the file is missing, empty, unreadable or has no audio stream.
    """
    path = Path(path)
    _check_readable_file(path, clip_id)
    _, has_audio, _ = _probe_streams(path, clip_id)
    if not has_audio:
        raise _media_error(clip_id, path, "no audio stream")
    audio, _ = _decode_audio(path, sample_rate, max_s)
    if audio is None:
        raise _media_error(clip_id, path, "audio stream holds no decodable samples")
    return audio


class MediaProbe(NamedTuple):
    """What a file's header says, without decoding anything."""

    has_video: bool
    has_audio: bool
    duration: float


def probe_media(path: Path, *, clip_id: str) -> MediaProbe:
    """Open ``path``'s header: which streams exist and how long it is (0 when unknown).

    Raises ``MediaError`` naming the clip when the file is missing, empty, unreadable or has
    no audio or video stream.
    """
    path = Path(path)
    _check_readable_file(path, clip_id)
    return MediaProbe(*_probe_streams(path, clip_id))


def describe_media(media: DecodedMedia) -> str:
    """One line for humans: duration, fps, frames, audio length and loudness, flags."""
    parts = [f"{media.clip_id}: {media.duration:.2f} s"]
    if media.has_video and media.frames is not None:
        n, height, width = media.frames.shape[:3]
        fps = f"{media.fps:.1f} fps, " if media.fps else ""
        parts.append(f"video {fps}{n} frames {width}x{height}")
    else:
        parts.append("no video")
    if media.has_audio and media.audio is not None:
        rms = float(np.sqrt(np.mean(np.square(media.audio, dtype=np.float64))))
        seconds = len(media.audio) / media.sample_rate
        parts.append(f"audio {seconds:.2f} s @ {media.sample_rate} Hz, rms {rms:.3f}")
    else:
        parts.append("no audio")
    if media.flags:
        parts.append("flags: " + ",".join(media.flags))
    return " | ".join(parts)


# ---------------------------------------------------------------------------- file checks


def _media_error(clip_id: str, path: Path, reason: str) -> MediaError:
    # One line, always naming the clip first, whatever FFmpeg put in the reason.
    reason = " ".join(str(reason).split())
    return MediaError(f"clip {clip_id!r}: {reason} ({path})")


def _check_readable_file(path: Path, clip_id: str) -> None:
    if not path.exists():
        raise _media_error(clip_id, path, "file not found")
    if not path.is_file():
        raise _media_error(clip_id, path, "not a regular file")
    if path.stat().st_size == 0:
        raise _media_error(clip_id, path, "file is empty (0 bytes)")


def _open(path: Path, clip_id: str) -> av.container.InputContainer:
    import av

    try:
        # Metadata in MER files is sometimes GBK: never let a title tag stop the decode.
        return av.open(str(path), mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as exc:
        reason = (
            f"cannot open media (corrupt, truncated or not a media file): {_ffmpeg_reason(exc)}"
        )
        raise _media_error(clip_id, path, reason) from exc


def _ffmpeg_reason(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)
    return str(strerror or exc)


def _probe_streams(path: Path, clip_id: str) -> tuple[bool, bool, float]:
    """Which streams exist, and the container's duration in seconds (0 when unknown)."""
    with _open(path, clip_id) as container:
        has_video = len(container.streams.video) > 0
        has_audio = len(container.streams.audio) > 0
        duration = container.duration / 1_000_000 if container.duration else 0.0
    if not has_video and not has_audio:
        raise _media_error(clip_id, path, "no audio or video stream")
    return has_video, has_audio, float(duration)


# ---------------------------------------------------------------------------- video


def _sample_video(
    path: Path, clip_id: str, num_frames: int
) -> tuple[_SampledFrames | None, float, float]:
    """Pick ``num_frames`` frames at the centres of equal segments; return (frames, fps, dur).

    The frames are None when the stream holds no decodable frame.
    """
    import av

    with _open(path, clip_id) as container:
        stream = container.streams.video[0]
        # Let FFmpeg use its own threads: decoding is the slow part on long clips.
        stream.thread_type = "AUTO"
        fps = float(stream.guessed_rate or stream.average_rate or 0.0)
        start = _seconds(stream.start_time, stream.time_base)
        duration = _video_duration(container, stream, fps)
        if duration <= 0.0:
            duration = _duration_from_packets(path, clip_id) - start
        targets = start + (np.arange(num_frames) + 0.5) * max(duration, 0.0) / num_frames
        tolerance = max(3.0 / fps if fps else 0.12, 0.2)
        try:
            if duration > SEEK_THRESHOLD_S:
                sampled = _frames_by_seeking(container, stream, targets, tolerance)
            else:
                sampled = _frames_by_streaming(container, stream, targets, start + duration)
        except av.error.FFmpegError:
            sampled = None  # errors past the first frames are caught inside; this is total loss
    if sampled is not None:
        sampled.times = sampled.times - start
    return sampled, fps, float(duration)


def _video_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float
) -> float:
    if stream.duration:
        return _seconds(stream.duration, stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    if stream.frames and fps:
        return stream.frames / fps
    return 0.0


def _duration_from_packets(path: Path, clip_id: str) -> float:
    """Last presentation time of the video stream, read from packets only (no decoding)."""
    end = 0.0
    with _open(path, clip_id) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is not None:
                end = max(end, _seconds(packet.pts + (packet.duration or 0), packet.time_base))
    return end


def _seconds(value: int | None, time_base: Fraction | None) -> float:
    """A stream timestamp in seconds (0 when either part is unknown)."""
    return float(value * time_base) if value and time_base else 0.0


def _decoded_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[tuple[av.video.frame.VideoFrame, float]]:
    """Yield (frame, time) until the stream ends or the data breaks off (corrupt/truncated)."""
    import av

    fps = float(stream.guessed_rate or 25)
    count = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = stream.decode(packet)
            except av.error.InvalidDataError:
                continue  # one corrupt packet: skip it, later keyframes still decode
            for frame in frames:
                time = frame.time if frame.time is not None else count / fps
                count += 1
                yield frame, float(time)
    except av.error.FFmpegError:
        return


def _frames_by_streaming(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    targets: np.ndarray,
    end_time: float,
) -> _SampledFrames | None:
    """One pass over the stream keeping, for each target time, the nearest decoded frame."""
    chosen: list[np.ndarray] = []
    times: list[float] = []
    previous: tuple[av.video.frame.VideoFrame, float] | None = None
    last_time = -1.0
    for frame, time in _decoded_frames(container, stream):
        last_time = time
        while len(chosen) < len(targets) and targets[len(chosen)] <= time:
            target = targets[len(chosen)]
            best = frame, time
            if previous is not None and target - previous[1] < time - target:
                best = previous
            chosen.append(best[0].to_ndarray(format="rgb24"))
            times.append(best[1])
        previous = frame, time
        if len(chosen) == len(targets):
            break
    if previous is None:
        return None
    frame_interval = 1.0 / float(stream.guessed_rate or 25)
    truncated = len(chosen) < len(targets) and last_time < end_time - 3 * frame_interval - 0.1
    if len(chosen) < len(targets):
        # The remaining targets lie past the last frame: repeat it so the shape stays (N, H, W, 3).
        last = previous[0].to_ndarray(format="rgb24")
        while len(chosen) < len(targets):
            chosen.append(last)
            times.append(previous[1])
    return _SampledFrames(np.stack(chosen), np.asarray(times, dtype=np.float64), truncated)


def _frames_by_seeking(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    targets: np.ndarray,
    tolerance: float,
) -> _SampledFrames | None:
    """Seek to the keyframe before each target; decode forward to it (bounded work, memory)."""
    import av

    chosen: list[np.ndarray] = []
    times: list[float] = []
    truncated = False
    time_base = float(stream.time_base or 1)
    for target in targets:
        try:
            container.seek(int(target / time_base), stream=stream, backward=True)
        except av.error.FFmpegError:
            truncated = True
            break
        picked: tuple[av.video.frame.VideoFrame, float] | None = None
        for frame, time in _decoded_frames(container, stream):
            if time >= target:
                if picked is None or time - target <= target - picked[1]:
                    picked = frame, time
                break
            picked = frame, time
        if picked is None or picked[1] < target - tolerance:
            truncated = True
        if picked is None:
            break
        chosen.append(picked[0].to_ndarray(format="rgb24"))
        times.append(picked[1])
    if not chosen:
        return None
    while len(chosen) < len(targets):
        chosen.append(chosen[-1])
        times.append(times[-1])
    return _SampledFrames(np.stack(chosen), np.asarray(times, dtype=np.float64), truncated)


# ---------------------------------------------------------------------------- audio


def _decode_clip_audio(
    path: Path,
    clip_id: str,
    has_audio: bool,
    audio_path: Path | None,
    sample_rate: int,
    max_audio_s: float | None,
) -> tuple[np.ndarray | None, bool, list[str]]:
    """Audio from ``audio_path`` when given and readable, else from the clip's own track."""
    flags: list[str] = []
    if audio_path is not None:
        try:
            external = read_audio(
                audio_path, clip_id=clip_id, sample_rate=sample_rate, max_s=max_audio_s
            )
            return external, False, flags
        except MediaError:
            flags.append("audio_file_unreadable")
    if not has_audio:
        return None, False, [*flags, "no_audio"]
    audio, truncated = _decode_audio(path, sample_rate, max_audio_s)
    if audio is None:
        flags.append("no_audio")
    return audio, truncated, flags


def _decode_audio(
    path: Path, sample_rate: int, max_s: float | None
) -> tuple[np.ndarray | None, bool]:
    """Resample the first audio stream to mono float32; True when the data broke off early."""
    import av

    limit = None if max_s is None else max(int(max_s * sample_rate), 1)
    chunks: list[np.ndarray] = []
    total = 0
    truncated = False
    with av.open(str(path), mode="r", metadata_errors="replace") as container:
        stream = container.streams.audio[0]
        expected = _seconds(stream.duration, stream.time_base) or None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for packet in container.demux(stream):
                try:
                    decoded = stream.decode(packet)
                except av.error.InvalidDataError:
                    truncated = True
                    continue
                for frame in decoded:
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))
                        total += chunks[-1].size
                if limit is not None and total >= limit:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError:
            truncated = True
    if not chunks:
        return None, truncated
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    if expected is not None:
        # AAC pads its last frame; trim to the stream's declared length.
        audio = audio[: round(expected * sample_rate)]
        if limit is None and len(audio) < (expected - 0.25) * sample_rate:
            truncated = True
    if limit is not None:
        audio = audio[:limit]
    if audio.size == 0:
        return None, truncated
    return np.ascontiguousarray(audio), truncated
