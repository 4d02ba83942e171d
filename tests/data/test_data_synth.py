"""Synthetic clips: shipped speech assets, the dataset round trip, and the manifest writer."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from meragent.data.manifest import load_manifest
from meragent.data.media import decode_media
from meragent.data.synth import (
    SPEECH_SCRIPT,
    face_frames,
    load_speech_samples,
    make_synthetic_dataset,
    speech_asset_dir,
    write_manifest,
)
from meragent.schema import EMOTIONS


def test_speech_assets_are_small_16k_and_described() -> None:
    folder = speech_asset_dir()
    files = sorted(folder.glob("*.flac"))
    assert 3 <= len(files) <= 5
    assert sum(f.stat().st_size for f in files) < 400_000
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    assert [entry["file"] for entry in index] == [entry["file"] for entry in SPEECH_SCRIPT]
    assert {entry["language"] for entry in index} == {"en", "zh"}
    samples = load_speech_samples()
    for sample, entry in zip(samples, index, strict=True):
        assert sample.text == entry["text"] and sample.discrete in EMOTIONS
        assert sample.audio.dtype == np.float32
        assert 1.0 < len(sample.audio) / 16000 < 4.0
        assert np.abs(sample.audio).max() == pytest.approx(0.5, abs=0.01)


def test_synthetic_dataset_round_trip(synth_dataset: Path) -> None:
    load = load_manifest(synth_dataset)
    assert load.layout == "csv" and load.errors == []
    samples = load_speech_samples()
    assert [clip.id for clip in load.clips] == ["synth_000", "synth_001", "synth_002", "synth_003"]
    for i, clip in enumerate(load.clips):
        sample = samples[i]
        assert clip.subtitle == sample.text and clip.language == sample.language
        assert clip.discrete == sample.discrete and clip.valence == sample.valence
        assert clip.openset == list(sample.openset)
        assert clip.video is not None
        media = decode_media(clip.video, clip_id=clip.id)
        assert media.flags == []
        assert media.frames is not None and media.frames.shape == (8, 224, 224, 3)
        # The clip grows to hold the sentence: speech starts at 0.1 s, 0.2 s of margin.
        speech_s = len(sample.audio) / 16000
        assert media.duration == pytest.approx(max(2.0, speech_s + 0.2), abs=0.05)
        assert media.audio is not None
        start = int(0.1 * 16000)
        spoken = media.audio[start : start + len(sample.audio)]
        correlation = np.corrcoef(spoken[: len(sample.audio)], sample.audio[: len(spoken)])[0, 1]
        assert correlation > 0.9  # AAC round trip keeps the waveform


def test_face_frames_move_but_stay_the_same_picture() -> None:
    frames = list(face_frames(10, 96, seed=3))
    assert all(f.shape == (96, 96, 3) and f.dtype == np.uint8 for f in frames)
    differences = [
        np.abs(a.astype(int) - b.astype(int)).mean() for a, b in itertools.pairwise(frames)
    ]
    assert all(0 < d < 20 for d in differences)
    again = list(face_frames(10, 96, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))


def test_tone_dataset_and_seed_change_the_pixels(tmp_path: Path) -> None:
    first = make_synthetic_dataset(tmp_path / "a", 1, seed=1, audio="tone", size=64)
    second = make_synthetic_dataset(tmp_path / "b", 1, seed=2, audio="tone", size=64)
    media_a = decode_media(first.parent / "video" / "synth_000.mp4", clip_id="a")
    media_b = decode_media(second.parent / "video" / "synth_000.mp4", clip_id="b")
    assert media_a.duration == pytest.approx(2.0, abs=0.01)
    assert media_a.frames is not None and media_b.frames is not None
    assert not np.array_equal(media_a.frames, media_b.frames)
    with pytest.raises(ValueError, match="n must be >= 1"):
        make_synthetic_dataset(tmp_path / "c", 0)


def test_write_manifest_quotes_fields_and_encodes_rows(tmp_path: Path) -> None:
    rows = [
        {"name": "a", "video": "a.mp4", "subtitle": 'he said "hi", then left'},
        {"name": "b", "video": "b.mp4", "subtitle": "生气"},
    ]
    path = write_manifest(tmp_path / "m.csv", rows, row_encodings={"b": "gbk"})
    raw = path.read_bytes()
    assert raw.startswith(b"name,video,subtitle,language,discrete,valence,openset\n")
    assert "生气".encode("gbk") in raw and "生气".encode() not in raw
    first = raw.split(b"\n")[1].decode("utf-8")
    assert next(csv.reader([first])) == ["a", "a.mp4", 'he said "hi", then left', "", "", "", ""]
