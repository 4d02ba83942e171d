"""Builders for the fusion and corruption tests (a unique module name across test areas)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from meragent.schema import EMOTIONS, Clip
from meragent.tools.feature_cache import FeatureCache

#: Encoders of the planted feature cache and their widths.
ENCODERS: dict[str, int] = {"audio": 12, "text": 8, "video": 10}


def planted_clips(n: int, *, seed: int = 0, with_valence: bool = False) -> list[Clip]:
    """``n`` clips cycling through the six classes (so every class is present)."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        label = EMOTIONS[i % len(EMOTIONS)]
        valence = float(rng.normal(i % len(EMOTIONS) - 2.5, 0.3)) if with_valence else None
        clips.append(Clip(id=f"clip_{i:04d}", discrete=label, valence=valence))
    return clips


def write_planted_features(
    root: Path,
    clips: Sequence[Clip],
    *,
    seed: int = 0,
    strength: Sequence[float] = (2.0, 1.2, 1.5),
    encoders: dict[str, int] | None = None,
    skip: dict[str, set[str]] | None = None,
    labels: dict[str, str] | None = None,
) -> FeatureCache:
    """Per encoder: class mean (random, scaled by ``strength``) + unit noise, one .npy per clip.

    ``skip`` leaves out some (encoder -> clip ids) files; ``labels`` overrides the class a clip's
    features are drawn from (for unlabelled pools).
    """
    rng = np.random.default_rng(seed)
    cache = FeatureCache(root)
    widths = encoders or ENCODERS
    for (encoder, dim), scale in zip(widths.items(), strength, strict=False):
        means = rng.normal(size=(len(EMOTIONS), dim)) * scale
        for clip in clips:
            if skip and clip.id in skip.get(encoder, set()):
                continue
            name = (labels or {}).get(clip.id) or clip.discrete or EMOTIONS[0]
            vector = means[EMOTIONS.index(name)] + rng.normal(size=dim)
            cache.save(encoder, clip.id, vector.astype(np.float32))
    return cache


def write_csv_manifest(path: Path, clips: Sequence[Clip]) -> Path:
    """A CSV manifest whose rows point at empty placeholder videos (fusion never decodes them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    videos = path.parent / "video"
    videos.mkdir(exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["name", "video", "discrete", "valence"])
        for clip in clips:
            (videos / f"{clip.id}.mp4").touch()
            valence = "" if clip.valence is None else f"{clip.valence:.3f}"
            writer.writerow([clip.id, f"video/{clip.id}.mp4", clip.discrete or "", valence])
    return path


def high_frequency_energy(frame: np.ndarray) -> float:
    """Mean squared horizontal + vertical pixel differences (a blur lowers it)."""
    gray = frame.astype(np.float64).mean(axis=-1)
    return float(np.mean(np.diff(gray, axis=0) ** 2) + np.mean(np.diff(gray, axis=1) ** 2))


def textured_frames(
    count: int, height: int = 48, width: int = 64, seed: int = 0
) -> list[np.ndarray]:
    """Frames full of fine detail (random pixels), so blur has something to remove."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def tone(seconds: float, frequency: float = 220.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
