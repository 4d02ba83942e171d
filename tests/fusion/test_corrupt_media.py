"""MER-NOISE corruption: exact SNR mixing, blur, written mp4s, manifest, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fusion_fixtures import high_frequency_energy, textured_frames, tone

from meragent.data.corrupt import (
    CorruptConfig,
    NoisePool,
    blur_frame,
    corrupt_clip,
    corrupt_dataset,
    mix_at_snr,
    parse_blur,
    parse_snr,
)
from meragent.data.manifest import load_manifest
from meragent.data.media import decode_media, read_audio
from meragent.data.synth import write_clip, write_garbage_file
from meragent.errors import DataError
from meragent.schema import Clip


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    residual = noisy.astype(np.float64) - clean
    return float(10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(residual**2)))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    clips = {}
    for i in range(3):
        clips[f"c{i}"] = write_clip(
            root / "src" / f"c{i}.mp4",
            textured_frames(6, seed=i),
            fps=6,
            audio=tone(1.0, 200 + 50 * i),
        )
    noise = (0.2 * rng.standard_normal(16000 * 3)).astype(np.float32)
    clips["noise_dir"] = write_clip(
        root / "noise" / "speech" / "n1.wav", None, audio=noise
    ).parents[1]
    return clips


def test_parse_snr_and_blur() -> None:
    assert parse_snr("5:10").choices == (5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
    continuous = parse_snr("5.5:7")
    assert continuous.choices == () and (continuous.low, continuous.high) == (5.5, 7.0)
    assert parse_snr("6,9").choices == (6.0, 9.0)
    assert parse_blur("1,2,4") == (1, 2, 4)
    with pytest.raises(DataError, match="powers of two"):
        parse_blur("1,3")
    with pytest.raises(DataError, match="--snr 'loud'"):
        parse_snr("loud")
    with pytest.raises(DataError, match="low end is above"):
        parse_snr("10:5")


@pytest.mark.parametrize("snr", [5.0, 7.5, 10.0])
def test_mix_hits_the_snr_exactly(snr: float) -> None:
    rng = np.random.default_rng(1)
    clean = tone(1.0)
    noise = rng.standard_normal(clean.size).astype(np.float32)
    mix = mix_at_snr(clean, noise, snr)
    assert mix.gain == 1.0
    assert _snr_db(clean, mix.audio) == pytest.approx(snr, abs=1e-3)


def test_clipping_is_handled_by_rescaling_not_clipping() -> None:
    clean = tone(0.5, amplitude=0.99)
    noise = np.random.default_rng(2).standard_normal(clean.size).astype(np.float32)
    mix = mix_at_snr(clean, noise, 5.0)
    assert mix.gain < 1.0
    peak = np.max(np.abs(mix.audio * 32768.0))
    assert peak <= 32768.0 + 1e-3
    assert _snr_db(clean * mix.gain, mix.audio) == pytest.approx(5.0, abs=1e-3)


def test_blur_r1_is_identity_and_r4_removes_detail() -> None:
    frame = textured_frames(1, height=45, width=63)[0]
    assert blur_frame(frame, 1) is frame
    blurred2, blurred4 = blur_frame(frame, 2), blur_frame(frame, 4)
    assert blurred4.shape == frame.shape and blurred2.shape == frame.shape
    energy = [high_frequency_energy(f) for f in (frame, blurred2, blurred4)]
    assert energy[0] > energy[1] > energy[2]
    assert energy[2] < 0.2 * energy[0]


def test_noise_pool_concatenates_and_crops(tmp_path: Path) -> None:
    short = write_clip(tmp_path / "a.wav", None, audio=np.full(4000, 0.1, dtype=np.float32))
    pool = NoisePool([("a", short)], 16000)
    segment, used = pool.segment(10000, np.random.default_rng(0))
    assert segment.shape == (10000,) and len(used) >= 3 and set(used) == {"a"}


def test_corrupted_clip_has_requested_snr_and_blur(media: dict[str, Path], tmp_path: Path) -> None:
    from meragent.data.corrupt import noise_sources_from_dir

    pool = NoisePool(noise_sources_from_dir(media["noise_dir"]), 16000)
    clip = Clip(id="c0", video=media["c0"])
    clean = read_audio(media["c0"], clip_id="c0")
    outputs = {}
    for factor in (1, 4):
        done = corrupt_clip(
            clip,
            tmp_path / f"r{factor}.mp4",
            snr=parse_snr("7"),
            blur_factors=[factor],
            noise=pool,
            seed=0,
        )
        assert done.snr_db == 7.0 and done.blur == factor and done.frames == 6
        assert done.noise == ["speech/n1.wav"]
        noisy = read_audio(done.video, clip_id="out")
        assert noisy.shape == clean.shape
        assert _snr_db(clean, noisy / done.gain) == pytest.approx(7.0, abs=0.5)
        outputs[factor] = decode_media(done.video, clip_id="out", num_frames=3)
    original = decode_media(media["c0"], clip_id="c0", num_frames=3)
    assert outputs[4].frames.shape == original.frames.shape
    energy = {k: np.mean([high_frequency_energy(f) for f in m.frames]) for k, m in outputs.items()}
    assert energy[4] < 0.5 * energy[1]


def test_dataset_babble_manifest_and_failures(media: dict[str, Path], tmp_path: Path) -> None:
    bad = write_garbage_file(tmp_path / "bad.mp4")
    clips = [Clip(id=f"c{i}", video=media[f"c{i}"], discrete="happy") for i in range(3)]
    clips.append(Clip(id="broken", video=bad))
    out = tmp_path / "noisy"
    report = corrupt_dataset(clips, out, CorruptConfig(snr="5:10", blur=[1, 2, 4], seed=3))
    assert [f.clip_id for f in report.failures] == ["broken"]
    assert len(report.written) == 3
    for done in report.written:
        assert done.snr_db in {5.0, 6.0, 7.0, 8.0, 9.0, 10.0} and done.blur in (1, 2, 4)
        assert done.noise and done.clip_id not in done.noise  # babble: other clips only
    loaded = load_manifest(report.manifest)
    assert not loaded.errors
    assert [c.id for c in loaded.clips] == ["c0", "c1", "c2"]
    assert all(c.discrete == "happy" and c.video and c.video.is_file() for c in loaded.clips)
    text = report.manifest.read_text()
    assert "snr_db" in text.splitlines()[0] and "blur" in text.splitlines()[0]
    # The draws depend only on the seed and the clip: a second run makes the same choices.
    again = corrupt_dataset(clips[:2], tmp_path / "again", CorruptConfig(seed=3))
    assert (again.written[0].snr_db, again.written[0].blur) == (
        report.written[0].snr_db,
        report.written[0].blur,
    )


def test_noise_dir_errors(tmp_path: Path) -> None:
    clip = Clip(id="x", video=tmp_path / "x.mp4")
    with pytest.raises(DataError, match="noise folder not found"):
        corrupt_dataset([clip], tmp_path / "o", CorruptConfig(noise_dir=tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio files"):
        corrupt_dataset([clip], tmp_path / "o", CorruptConfig(noise_dir=tmp_path / "empty"))
    with pytest.raises(DataError, match="babble noise needs at least two clips"):
        corrupt_dataset([clip], tmp_path / "o", CorruptConfig())
