"""MER-NOISE corruption, following the organisers' recipe (MER2024 §2.2, MERTools main-noise.py).

Per clip, drawn from a generator seeded by (seed, clip id):

* **audio**: a signal-to-noise ratio (by default an integer 5-10 dB, as the organisers) and noise
  made of noise clips concatenated until longer than the clip, then cropped at a random offset;
  the noise is scaled so that ``rms_noise = rms_clean / 10^(snr/20)``; if the sum leaves the int16
  range, the whole mix is rescaled so its peak fits (clipping would change the SNR).
* **video**: a factor r (1, 2 or 4): every frame goes through ``log2(r)`` rounds of
  ``cv2.pyrDown`` and as many of ``cv2.pyrUp`` (r = 1 leaves frames untouched).

The organisers drew noise from MUSAN's *speech* subset (music and noise may carry emotion).
Without ``noise_dir`` the offline stand-in is babble from the other clips' own speech.

Outputs: ``OUT/video/<clip>.mp4`` (H.264 + AAC, written with PyAV, frames streamed one at a time
so memory stays bounded) and ``OUT/manifest.csv`` (the input's columns plus ``snr_db``, ``blur``,
``noise`` and ``flags``), readable by :func:`meragent.data.manifest.load_manifest`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, field_validator

from meragent.data.corrupt_noise import (
    NoisePool,
    babble_sources,
    mix_at_snr,
    noise_sources_from_dir,
    rms,
)
from meragent.data.corrupt_video import blur_frame, write_corrupted
from meragent.data.media import probe_media, read_audio
from meragent.data.synth import MANIFEST_COLUMNS, write_manifest
from meragent.errors import DataError, MediaError, one_line
from meragent.schema import Clip, ClipFailure

#: Re-exported: the recipe's parts are imported from here by callers and tests.
__all__ = [
    "ClipCorruption",
    "CorruptConfig",
    "CorruptReport",
    "NoisePool",
    "SnrSpec",
    "blur_frame",
    "corrupt_clip",
    "corrupt_dataset",
    "mix_at_snr",
    "noise_sources_from_dir",
    "parse_blur",
    "parse_snr",
]

CORRUPT_COLUMNS: tuple[str, ...] = (*MANIFEST_COLUMNS, "snr_db", "blur", "noise", "flags")


@dataclass(frozen=True)
class SnrSpec:
    """Either a set of values drawn uniformly (``choices``) or a continuous range."""

    choices: tuple[float, ...] = ()
    low: float = 0.0
    high: float = 0.0

    def draw(self, rng: np.random.Generator) -> float:
        if self.choices:
            return float(self.choices[int(rng.integers(len(self.choices)))])
        return float(rng.uniform(self.low, self.high))

    def describe(self) -> str:
        if self.choices:
            return ",".join(f"{v:g}" for v in self.choices)
        return f"{self.low:g}:{self.high:g}"


def parse_snr(text: str) -> SnrSpec:
    """``"5:10"`` (integers 5..10, as the organisers; ``"5.5:9"`` a continuous range),
    ``"5,7.5,10"`` (those values) or ``"8"``."""
    value = text.strip()
    try:
        if ":" in value:
            low_text, high_text = value.split(":", 1)
            low, high = float(low_text), float(high_text)
            if low > high:
                raise DataError(f"--snr {text!r}: the low end is above the high end")
            if low.is_integer() and high.is_integer():
                return SnrSpec(choices=tuple(float(v) for v in range(int(low), int(high) + 1)))
            return SnrSpec(low=low, high=high)
        values = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise DataError(
            f"--snr {text!r}: expected A:B, a list like 5,7,10, or one number"
        ) from None
    if not values:
        raise DataError(f"--snr {text!r}: no value given")
    return SnrSpec(choices=values)


def parse_blur(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4); every factor must be a power of two."""
    try:
        factors = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise DataError(f"--blur {text!r}: expected integers like 1,2,4") from None
    if not factors:
        raise DataError(f"--blur {text!r}: no factor given")
    bad = [f for f in factors if f < 1 or f & (f - 1)]
    if bad:
        raise DataError(f"--blur: factors must be powers of two (1, 2, 4, ...), got {bad}")
    return factors


class CorruptConfig(BaseModel):
    """How to corrupt a dataset (validated on construction)."""

    snr: str = "5:10"
    blur: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
    seed: int = 0
    noise_dir: Path | None = None
    sample_rate: int = Field(default=16000, ge=8000)
    crf: int = Field(default=18, ge=0, le=51)

    @field_validator("snr")
    @classmethod
    def _valid_snr(cls, value: str) -> str:
        parse_snr(value)
        return value

    @field_validator("blur")
    @classmethod
    def _valid_blur(cls, value: list[int]) -> list[int]:
        parse_blur(",".join(str(v) for v in value))
        return value


# ---------------------------------------------------------------------------- one clip


class ClipCorruption(BaseModel):
    """What was done to one clip."""

    clip_id: str
    video: Path
    snr_db: float | None
    blur: int
    noise: list[str] = Field(default_factory=list)
    gain: float = 1.0
    frames: int = 0
    flags: list[str] = Field(default_factory=list)


def clip_rng(seed: int, clip_id: str) -> np.random.Generator:
    """The clip's own generator: its draws do not depend on the order or number of clips."""
    return np.random.default_rng([seed, zlib.crc32(clip_id.encode("utf-8"))])


def _mix_noise(
    clip_id: str,
    clean: np.ndarray | None,
    noise: NoisePool,
    rng: np.random.Generator,
    snr_db: float,
    flags: list[str],
) -> tuple[np.ndarray | None, list[str], float]:
    """(noisy audio or None, noise files used, gain) for ``clean``; appends its flags."""
    if clean is None or not clean.size:
        return None, [], 1.0
    segment, used = noise.segment(clean.size, rng, exclude=clip_id)
    result = mix_at_snr(clean, segment, snr_db)
    if rms(clean) == 0.0:
        flags.append("silent_audio")
    if result.gain < 1.0:
        flags.append("rescaled")
    return result.audio, used, result.gain


def corrupt_clip(
    clip: Clip,
    out_path: Path,
    *,
    snr: SnrSpec,
    blur_factors: Sequence[int],
    noise: NoisePool,
    seed: int,
    sample_rate: int = 16000,
    crf: int = 18,
) -> ClipCorruption:
    """Write a corrupted copy of ``clip`` to ``out_path`` (mp4). MediaError if nothing is usable."""
    if clip.video is None and clip.audio is None:
        raise MediaError(f"clip {clip.id!r}: no video or audio file")
    rng = clip_rng(seed, clip.id)
    snr_db = snr.draw(rng)
    factor = int(blur_factors[int(rng.integers(len(blur_factors)))])
    flags: list[str] = []
    has_video = False
    if clip.video is not None:
        has_video = probe_media(Path(clip.video), clip_id=clip.id).has_video
    audio_source = clip.audio or clip.video
    assert audio_source is not None
    try:
        clean = read_audio(Path(audio_source), clip_id=clip.id, sample_rate=sample_rate)
    except MediaError:
        if not has_video:
            raise
        clean = None
        flags.append("no_audio")
    mixed, used, gain = _mix_noise(clip.id, clean, noise, rng, snr_db, flags)
    if not has_video:
        flags.append("no_video")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frames = write_corrupted(
        Path(clip.video) if has_video and clip.video is not None else None,
        out_path,
        factor,
        mixed,
        sample_rate,
        crf,
        flags,
    )
    return ClipCorruption(
        clip_id=clip.id,
        video=out_path,
        snr_db=snr_db if mixed is not None else None,
        blur=factor,
        noise=used,
        gain=gain,
        frames=frames,
        flags=flags,
    )


# ---------------------------------------------------------------------------- a dataset


@dataclass
class CorruptReport:
    """The corrupted copies written, the clips that failed, and the output manifest."""

    manifest: Path
    written: list[ClipCorruption] = field(default_factory=list)
    failures: list[ClipFailure] = field(default_factory=list)
    noise_unreadable: list[str] = field(default_factory=list)


def _manifest_row(clip: Clip, done: ClipCorruption, out_dir: Path) -> dict[str, object]:
    return {
        "name": clip.id,
        "video": done.video.relative_to(out_dir).as_posix(),
        "subtitle": clip.subtitle,
        "language": clip.language,
        "discrete": clip.discrete,
        "valence": clip.valence,
        "openset": None if clip.openset is None else str(list(clip.openset)),
        "snr_db": None if done.snr_db is None else f"{done.snr_db:g}",
        "blur": done.blur,
        "noise": ";".join(done.noise),
        "flags": ";".join(done.flags),
    }


def corrupt_dataset(
    clips: Sequence[Clip],
    out_dir: Path,
    config: CorruptConfig,
    progress: Callable[[str], None] | None = None,
) -> CorruptReport:
    """Corrupt every clip into ``out_dir`` (see the module docstring); bad clips are reported."""
    out_dir = Path(out_dir)
    snr = parse_snr(config.snr)
    factors = parse_blur(",".join(str(v) for v in config.blur))
    if config.noise_dir is not None:
        sources = noise_sources_from_dir(config.noise_dir)
    else:
        sources = babble_sources(clips)
    pool = NoisePool(sources, config.sample_rate)
    report = CorruptReport(manifest=out_dir / "manifest.csv")
    rows = []
    for number, clip in enumerate(clips, start=1):
        target = out_dir / "video" / f"{clip.id}.mp4"
        try:
            done = corrupt_clip(
                clip,
                target,
                snr=snr,
                blur_factors=factors,
                noise=pool,
                seed=config.seed,
                sample_rate=config.sample_rate,
                crf=config.crf,
            )
        except (MediaError, OSError) as exc:
            failure = ClipFailure(clip_id=clip.id, stage="corrupt", reason=one_line(exc))
            report.failures.append(failure)
            continue
        report.written.append(done)
        rows.append(_manifest_row(clip, done, out_dir))
        if progress is not None:
            snr_text = "no audio" if done.snr_db is None else f"SNR {done.snr_db:g} dB"
            progress(f"[{number}/{len(clips)}] {clip.id}: {snr_text}, blur r={done.blur}")
    write_manifest(report.manifest, rows, columns=CORRUPT_COLUMNS)
    report.noise_unreadable = sorted(pool.unreadable)
    settings = {
        "snr": snr.describe(),
        "blur": list(factors),
        "seed": config.seed,
        "noise": str(config.noise_dir) if config.noise_dir else "babble (other clips' speech)",
        "written": len(report.written),
        "failed": [f.model_dump() for f in report.failures],
        "noise_unreadable": report.noise_unreadable,
    }
    (out_dir / "corrupt.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return report
