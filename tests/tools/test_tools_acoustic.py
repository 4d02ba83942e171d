"""Acoustic encoder (tiny random HuBERT through load_acoustic_encoder) and the prosody clue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meragent.errors import DataError, ModelLoadError
from meragent.tools.acoustic_encoder import load_acoustic_encoder, split_into_chunks
from meragent.tools.prosody import describe_prosody, extract_prosody

SR = 16000


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def manual_embedding(encoder, chunks: list[np.ndarray], layers: int) -> np.ndarray:
    """Reference: run each chunk alone, sum the last ``layers`` states, mean over all frames."""
    import torch

    frames = []
    for chunk in chunks:
        inputs = encoder.feature_extractor(chunk, sampling_rate=SR, return_tensors="pt")
        with torch.inference_mode():
            states = encoder.model(inputs["input_values"], output_hidden_states=True).hidden_states
        frames.append(sum(states[-layers:])[0].numpy())
    return np.concatenate(frames).mean(axis=0)


def test_split_into_chunks_makes_equal_parts() -> None:
    audio = np.arange(25, dtype=np.float32)
    chunks = split_into_chunks(audio, 10)
    assert [len(c) for c in chunks] == [9, 9, 9]
    assert np.array_equal(np.concatenate(chunks)[:25], audio)
    assert np.concatenate(chunks)[25:].tolist() == [0.0, 0.0]


def test_embedding_is_sum_of_last_layers_mean_over_frames(tiny_hubert: Path) -> None:
    encoder = load_acoustic_encoder(str(tiny_hubert), device="cpu", layers=2)
    audio = noise(1.0)
    vector = encoder.encode(audio, SR)
    assert vector.shape == (32,) and vector.dtype == np.float32
    assert np.allclose(vector, manual_embedding(encoder, [audio], layers=2), atol=1e-5)
    # k=1 is a different recipe and must give a different vector.
    last_only = load_acoustic_encoder(str(tiny_hubert), layers=1).encode(audio, SR)
    assert np.allclose(last_only, manual_embedding(encoder, [audio], layers=1), atol=1e-5)
    assert not np.allclose(last_only, vector)


def test_long_audio_runs_as_chunks_pooled_over_all_frames(tiny_hubert: Path) -> None:
    encoder = load_acoustic_encoder(str(tiny_hubert), layers=2, chunk_s=0.5)
    audio = noise(1.3, seed=1)
    chunks = split_into_chunks(audio, SR // 2)
    assert len(chunks) == 3
    expected = manual_embedding(encoder, chunks, layers=2)
    assert np.allclose(encoder.encode(audio, SR), expected, atol=1e-5)


def test_batched_clips_match_one_by_one(tiny_hubert: Path) -> None:
    encoder = load_acoustic_encoder(str(tiny_hubert), layers=2)
    audios = [noise(0.6, seed=2), noise(1.1, seed=3), noise(0.3, seed=4)]
    batched = encoder.encode_many(audios, SR, batch_size=3)
    for audio, vector in zip(audios, batched, strict=True):
        assert np.allclose(vector, encoder.encode(audio, SR), atol=1e-4)


def test_max_pooling_and_bad_inputs(tiny_hubert: Path) -> None:
    encoder = load_acoustic_encoder(str(tiny_hubert), layers=2, pooling="max")
    audio = noise(0.5)
    reference = manual_embedding(encoder, [audio], layers=2)
    assert np.all(encoder.encode(audio, SR) >= reference - 1e-5)
    with pytest.raises(DataError, match="8000 Hz"):
        encoder.encode(audio, 8000)
    with pytest.raises(DataError, match="too short"):
        encoder.encode(np.zeros(20, dtype=np.float32), SR)
    with pytest.raises(ModelLoadError, match="layers=9"):
        load_acoustic_encoder(str(tiny_hubert), layers=9)
    with pytest.raises(ModelLoadError, match="pooling"):
        load_acoustic_encoder(str(tiny_hubert), pooling="median")


def test_missing_model_path_names_role_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-hubert"
    with pytest.raises(ModelLoadError) as info:
        load_acoustic_encoder(str(missing))
    assert "acoustic_encoder" in str(info.value) and str(missing) in str(info.value)
    assert "\n" not in str(info.value)


def voiced(f0_start: float, f0_end: float, seconds: float, amplitude: float) -> np.ndarray:
    """A glottal-like harmonic tone gliding from f0_start to f0_end, with 5 Hz syllable bursts."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = f0_start + (f0_end - f0_start) * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / SR
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 5.0 * t) ** 2
    return (amplitude * tone * syllables / 2.3).astype(np.float32)


def test_prosody_reads_pitch_slope_pause_and_loudness() -> None:
    gap = np.zeros(int(0.5 * SR), dtype=np.float32)
    audio = np.concatenate([voiced(180, 200, 1.0, 0.5), gap, voiced(200, 300, 1.0, 0.5)])
    features = extract_prosody(audio, SR)
    assert 170 < (features.pitch_median_hz or 0) < 260
    assert (features.pitch_slope_st_per_s or 0) > 1.0
    assert features.pause_count == 1
    assert 0.15 < features.pause_ratio < 0.25
    assert features.syllable_rate is not None and 2.0 < features.syllable_rate < 8.0
    text = describe_prosody(features)
    assert "rising" in text and "1 pause" in text
    assert features.as_vector().shape == (11,)
    quiet = extract_prosody(audio * 0.01, SR)
    assert (quiet.energy_mean_db or 0) < (features.energy_mean_db or 0) - 30
    assert "soft" in describe_prosody(quiet)


def test_prosody_of_silence_and_noise() -> None:
    silent = extract_prosody(np.zeros(SR, dtype=np.float32), SR)
    assert silent.silent and describe_prosody(silent) == "silent: no audible speech"
    assert np.all(silent.as_vector()[:4] == 0)
    hiss = extract_prosody(noise(1.0), SR)
    assert hiss.voiced_ratio < 0.2
    assert not hiss.silent
