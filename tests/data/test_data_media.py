"""Decoding clips with PyAV: shapes, dtypes, sample rate, and every broken-file case of issue 2."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from meragent.data import synth
from meragent.data.media import decode_media, describe_media, probe_media, read_audio
from meragent.errors import MediaError


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2.0 s, 25 fps, 112x112 face clip with a tone (exact length, unlike speech clips)."""
    path = tmp_path_factory.mktemp("media") / "face.mp4"
    return synth.write_face_clip(path, duration_s=2.0, fps=25, size=112, audio="tone")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 minutes at 2 fps, 64x64: 1200 frames whose brightness is their index % 256."""
    return synth.write_long_clip(tmp_path_factory.mktemp("long") / "long.mp4", duration_s=600.0)


def _assert_one_line_naming(exc: pytest.ExceptionInfo[MediaError], clip: str, reason: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"clip {clip!r}: ")
    assert reason in message


def test_decode_gives_uniform_rgb_frames_and_16k_mono_float_audio(face_clip: Path) -> None:
    media = decode_media(face_clip, clip_id="face")
    assert media.clip_id == "face"
    assert media.frames is not None and media.frames.shape == (8, 112, 112, 3)
    assert media.frames.dtype == np.uint8
    assert media.audio is not None and media.audio.dtype == np.float32 and media.audio.ndim == 1
    assert media.sample_rate == 16000
    assert len(media.audio) == 32000  # 2.0 s at 16 kHz, AAC padding trimmed
    assert media.duration == pytest.approx(2.0, abs=1e-6)
    assert media.fps == pytest.approx(25.0)
    # Targets are segment centres (i + 0.5) * 2.0 / 8; each pick is the nearest 40 ms frame.
    expected = [0.12, 0.36, 0.64, 0.88, 1.12, 1.36, 1.64, 1.88]
    assert media.frame_times is not None
    np.testing.assert_allclose(media.frame_times, expected, atol=1e-6)
    assert media.flags == []
    assert media.has_audio and media.has_video


def test_num_frames_and_sample_rate_are_configurable(face_clip: Path) -> None:
    media = decode_media(face_clip, clip_id="face", num_frames=16, sample_rate=8000)
    assert media.frames is not None and media.frames.shape == (16, 112, 112, 3)
    assert media.audio is not None and len(media.audio) == 16000
    assert media.sample_rate == 8000
    assert media.frame_times is not None and np.all(np.diff(media.frame_times) > 0)


def test_audio_is_the_tone_that_was_written(face_clip: Path) -> None:
    media = decode_media(face_clip, clip_id="face")
    written = synth.tone_track(2.0, seed=0)
    rms_written = float(np.sqrt(np.mean(written.astype(np.float64) ** 2)))
    assert media.audio is not None
    rms_decoded = float(np.sqrt(np.mean(media.audio.astype(np.float64) ** 2)))
    assert rms_decoded == pytest.approx(rms_written, rel=0.05)


def test_zero_byte_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = synth.write_empty_file(tmp_path / "empty.mp4")
    with pytest.raises(MediaError) as exc:
        decode_media(path, clip_id="empty_clip")
    _assert_one_line_naming(exc, "empty_clip", "file is empty (0 bytes)")


def test_file_that_is_not_media_is_a_one_line_error(tmp_path: Path) -> None:
    path = synth.write_garbage_file(tmp_path / "noise.mp4")
    with pytest.raises(MediaError) as exc:
        decode_media(path, clip_id="noise")
    _assert_one_line_naming(exc, "noise", "cannot open media")


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as exc:
        decode_media(tmp_path / "nope.mp4", clip_id="ghost")
    _assert_one_line_naming(exc, "ghost", "file not found")


def test_truncated_mp4_without_its_index_is_a_one_line_error(tmp_path: Path) -> None:
    full = synth.write_face_clip(tmp_path / "full.mp4", size=64)
    cut = synth.truncate_file(full, 0.5, out=tmp_path / "cut.mp4")
    with pytest.raises(MediaError) as exc:
        decode_media(cut, clip_id="cut")
    _assert_one_line_naming(exc, "cut", "truncated")


def test_truncated_faststart_mp4_keeps_what_decodes_and_flags_it(tmp_path: Path) -> None:
    full = synth.write_face_clip(tmp_path / "full.mp4", size=64, faststart=True)
    cut = synth.truncate_file(full, 0.5, out=tmp_path / "cut.mp4")
    media = decode_media(cut, clip_id="cut")
    assert "truncated" in media.flags
    assert media.frames is not None and media.frames.shape == (8, 64, 64, 3)
    assert media.audio is not None and 0 < len(media.audio) < 32000
    assert media.frame_times is not None and media.frame_times[-1] < 1.5


def test_audio_only_file_decodes_audio_and_flags_no_video(tmp_path: Path) -> None:
    path = synth.write_audio_only(tmp_path / "voice.mp4", duration_s=2.0)
    media = decode_media(path, clip_id="voice")
    assert media.frames is None and media.frame_times is None and not media.has_video
    assert media.flags == ["no_video"]
    assert media.audio is not None and len(media.audio) == 32000
    assert media.duration == pytest.approx(2.0, abs=0.01)


def test_video_only_file_decodes_frames_and_flags_no_audio(tmp_path: Path) -> None:
    path = synth.write_video_only(tmp_path / "silent.mp4", duration_s=1.0, size=64)
    media = decode_media(path, clip_id="silent")
    assert media.audio is None and not media.has_audio
    assert media.flags == ["no_audio"]
    assert media.frames is not None and media.frames.shape == (8, 64, 64, 3)


def test_clip_of_0_2_s_is_flagged_very_short_and_keeps_the_shape(tmp_path: Path) -> None:
    path = synth.write_short_clip(tmp_path / "blink.mp4", duration_s=0.2, fps=25, size=64)
    media = decode_media(path, clip_id="blink")
    assert media.flags == ["very_short"]
    assert media.duration == pytest.approx(0.2, abs=0.01)
    # Only 5 frames exist: 8 picks repeat some of them but the shape stays (8, H, W, 3).
    assert media.frames is not None and media.frames.shape == (8, 64, 64, 3)
    assert media.frame_times is not None and len(np.unique(media.frame_times)) == 5
    assert media.audio is not None and len(media.audio) == 3200


def test_very_long_clip_is_sampled_by_seeking_with_bounded_memory(long_clip: Path) -> None:
    tracemalloc.start()
    try:
        media = decode_media(long_clip, clip_id="movie", max_audio_s=5.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert media.duration == pytest.approx(600.0)
    assert media.frames is not None and media.frames.shape == (8, 64, 64, 3)
    targets = (np.arange(8) + 0.5) * 600.0 / 8  # 37.5, 112.5, ... exactly on 0.5 s frames
    assert media.frame_times is not None
    np.testing.assert_allclose(media.frame_times, targets)
    # Frame i has brightness i % 256 (within YUV rounding): the right frames were picked.
    expected = (np.round(targets * 2).astype(int) % 256).astype(float)
    np.testing.assert_allclose(media.frames[:, 32, 32, 0].astype(float), expected, atol=2)
    assert media.audio is not None and len(media.audio) == 5 * 16000
    # All 1200 frames as arrays would be 14.7 MB and the whole audio 38 MB.
    assert peak < 4_000_000
    assert media.flags == []


def test_audio_path_replaces_the_video_track(face_clip: Path, tmp_path: Path) -> None:
    wav = synth.write_audio_only(tmp_path / "face.wav", duration_s=1.0)
    media = decode_media(face_clip, clip_id="face", audio_path=wav)
    assert media.audio is not None and len(media.audio) == 16000
    assert media.flags == []


def test_unreadable_audio_path_falls_back_to_the_video_track(
    face_clip: Path, tmp_path: Path
) -> None:
    wav = synth.write_empty_file(tmp_path / "face.wav")
    media = decode_media(face_clip, clip_id="face", audio_path=wav)
    assert media.flags == ["audio_file_unreadable"]
    assert media.audio is not None and len(media.audio) == 32000


def test_read_audio_without_audio_stream_is_an_error(tmp_path: Path) -> None:
    path = synth.write_video_only(tmp_path / "silent.mp4", duration_s=0.5, size=64)
    with pytest.raises(MediaError) as exc:
        read_audio(path, clip_id="silent")
    _assert_one_line_naming(exc, "silent", "no audio stream")


def test_probe_reads_streams_without_decoding(face_clip: Path, tmp_path: Path) -> None:
    probe = probe_media(face_clip, clip_id="face")
    assert probe.has_video and probe.has_audio
    assert probe.duration == pytest.approx(2.0, abs=0.01)
    with pytest.raises(MediaError):
        probe_media(synth.write_empty_file(tmp_path / "e.mp4"), clip_id="e")


def test_describe_media_is_one_line_with_the_essentials(face_clip: Path) -> None:
    line = describe_media(decode_media(face_clip, clip_id="face"))
    assert "\n" not in line
    assert line.startswith("face: 2.00 s")
    assert "25.0 fps, 8 frames 112x112" in line
    assert "audio 2.00 s @ 16000 Hz" in line


def test_describe_media_names_missing_streams_and_flags(tmp_path: Path) -> None:
    path = synth.write_audio_only(tmp_path / "voice.mp4", duration_s=0.3)
    line = describe_media(decode_media(path, clip_id="voice"))
    assert "no video" in line
    assert "flags: no_video,very_short" in line


@pytest.mark.parametrize("suffix", [".mkv", ".avi", ".mov"])
def test_other_containers_decode_the_same_way(tmp_path: Path, suffix: str) -> None:
    path = synth.write_face_clip(tmp_path / f"clip{suffix}", duration_s=1.0, size=64)
    media = decode_media(path, clip_id="clip")
    assert media.frames is not None and media.frames.shape == (8, 64, 64, 3)
    assert media.audio is not None and len(media.audio) == pytest.approx(16000, abs=1024)
    assert media.flags == []
