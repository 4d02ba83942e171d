"""The video half of MER-NOISE and the file writer: blurred frames plus the noisy audio track.

Frames are decoded, blurred (``blur_frame``) and encoded one at a time, so memory stays one
frame deep; the output is H.264 + AAC written with PyAV under a temporary name, then renamed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from meragent.errors import MediaError

if TYPE_CHECKING:
    import av.container
    import av.video.stream

#: Bit rate of the AAC track: high enough that coding error stays ~30 dB below the noise.
AUDIO_BIT_RATE = 96_000


def blur_frame(frame: np.ndarray, factor: int) -> np.ndarray:
    """``log2(factor)`` pyrDown rounds then as many pyrUp rounds, cropped back to the input size.

    ``factor`` 1 returns the frame itself. (pyrUp of an odd-sized image overshoots by a pixel,
    hence the crop.)
    """
    import cv2

    rounds = round(math.log2(factor))
    if rounds <= 0:
        return frame
    height, width = frame.shape[:2]
    out = frame
    for _ in range(rounds):
        out = cv2.pyrDown(out)
    for _ in range(rounds):
        out = cv2.pyrUp(out)
    return np.ascontiguousarray(out[:height, :width])


def write_corrupted(
    video: Path | None,
    out_path: Path,
    factor: int,
    audio: np.ndarray | None,
    sample_rate: int,
    crf: int,
    flags: list[str],
) -> int:
    """Stream the blurred frames and the noisy audio into ``out_path``; returns the frame count.

    Written to a hidden temporary name first and renamed, so a crash never leaves half a file.
    """
    import av

    frames = 0
    tmp = out_path.with_name(f".{out_path.stem}.tmp{out_path.suffix}")
    try:
        with av.open(str(tmp), mode="w") as output:
            source = (
                av.open(str(video), mode="r", metadata_errors="replace")
                if video is not None
                else None
            )
            try:
                # Every stream must exist before the first packet is muxed (header written then).
                video_stream = _add_video_stream(source, output, crf, flags) if source else None
                audio_stream = None
                if audio is not None:
                    audio_stream = output.add_stream("aac", rate=sample_rate, layout="mono")
                    audio_stream.bit_rate = AUDIO_BIT_RATE
                if source is not None and video_stream is not None:
                    frames = _copy_blurred(source, output, video_stream, factor, flags)
            finally:
                if source is not None:
                    source.close()
            if frames == 0 and "no_video" not in flags:
                flags.append("no_video")
            if audio_stream is not None and audio is not None:
                _encode_audio(output, audio_stream, audio, sample_rate)
            elif frames == 0:
                raise MediaError(f"{video}: no decodable frame and no audio to write")
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return frames


def _add_video_stream(
    source: av.container.InputContainer,
    output: av.container.OutputContainer,
    crf: int,
    flags: list[str],
) -> av.video.stream.VideoStream | None:
    in_stream = source.streams.video[0]
    width, height = in_stream.codec_context.width, in_stream.codec_context.height
    if not width or not height:
        return None
    # H.264 in yuv420p needs even sides: an odd last row/column is dropped.
    even_width, even_height = width // 2 * 2, height // 2 * 2
    if (even_width, even_height) != (width, height):
        flags.append("cropped_to_even_size")
    rate = in_stream.average_rate or in_stream.guessed_rate or 25
    stream = output.add_stream("libx264", rate=rate)
    stream.width, stream.height = even_width, even_height
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": str(crf), "preset": "veryfast"}
    return stream


def _copy_blurred(
    source: av.container.InputContainer,
    output: av.container.OutputContainer,
    stream: av.video.stream.VideoStream,
    factor: int,
    flags: list[str],
) -> int:
    """Decode, blur and encode one frame at a time (memory stays one frame deep)."""
    import av

    in_stream = source.streams.video[0]
    in_stream.thread_type = "AUTO"
    count = 0
    try:
        for frame in source.decode(in_stream):
            image = frame.to_ndarray(format="rgb24")
            blurred = blur_frame(image, factor)[: stream.height, : stream.width]
            out = av.VideoFrame.from_ndarray(np.ascontiguousarray(blurred), format="rgb24")
            output.mux(stream.encode(out))
            count += 1
    except av.error.FFmpegError:
        flags.append("truncated")
    output.mux(stream.encode(None))
    return count


def _encode_audio(
    output: av.container.OutputContainer, stream: object, audio: np.ndarray, sample_rate: int
) -> None:
    import av

    encode = stream.encode  # type: ignore[attr-defined]
    chunk = 1024 * 8
    for start in range(0, audio.size, chunk):
        piece = np.ascontiguousarray(audio[None, start : start + chunk], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        output.mux(encode(frame))
    output.mux(encode(None))
