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
import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field, field_validator

from meragent.data.media import VIDEO_EXTENSIONS, probe_media, read_audio
from meragent.data.synth import MANIFEST_COLUMNS, write_manifest
from meragent.errors import DataError, MediaError
from meragent.schema import Clip, ClipFailure

if TYPE_CHECKING:
    import av.container
    import av.video.stream

#: Audio files accepted in a noise folder (MUSAN ships .wav), videos too (their audio is used).
NOISE_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")
CORRUPT_COLUMNS: tuple[str, ...] = (*MANIFEST_COLUMNS, "snr_db", "blur", "noise", "flags")
INT16_MAX = 32767.0
INT16_MIN = -32768.0
#: Decoded noise clips kept in memory (babble reuses the same few clips often).
NOISE_CACHE_SIZE = 64
#: Bit rate of the AAC track: high enough that coding error stays ~30 dB below the noise.
AUDIO_BIT_RATE = 96_000


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


# ---------------------------------------------------------------------------- the recipe


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


def rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) if signal.size else 0.0


@dataclass
class Mix:
    """A noisy track (float32 in [-1, 1)) and how it was made."""

    audio: np.ndarray
    gain: float
    noise_rms_ratio: float


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> Mix:
    """Add ``noise`` scaled to ``snr_db`` below ``clean`` (both float in [-1, 1], same length).

    Works in int16 units like the organisers: when the sum leaves [-32768, 32767] the whole mix
    is scaled down so that its largest excursion just fits (``gain`` < 1), which keeps the SNR.
    """
    if clean.shape != noise.shape:
        raise ValueError(f"clean has {clean.shape} samples, noise {noise.shape}")
    clean_amp = clean.astype(np.float64) * 32768.0
    noise_amp = noise.astype(np.float64) * 32768.0
    clean_rms, noise_rms = rms(clean_amp), rms(noise_amp)
    target = clean_rms / (10.0 ** (snr_db / 20.0))
    scale = target / noise_rms if noise_rms > 0 else 0.0
    mixed = clean_amp + noise_amp * scale
    gain = 1.0
    high, low = float(mixed.max(initial=0.0)), float(mixed.min(initial=0.0))
    if high > INT16_MAX or low < INT16_MIN:
        gain = INT16_MAX / high if high >= abs(low) else INT16_MIN / low
        mixed = mixed * gain
    return Mix((mixed / 32768.0).astype(np.float32), gain, scale)


class NoisePool:
    """Noise sources (files, or other clips for babble), decoded on demand and cached."""

    def __init__(self, sources: Sequence[tuple[str, Path]], sample_rate: int) -> None:
        self.sources = list(sources)
        self.sample_rate = sample_rate
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.unreadable: set[str] = set()

    def __len__(self) -> int:
        return len(self.sources)

    def _audio(self, name: str, path: Path) -> np.ndarray | None:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        try:
            audio = read_audio(path, clip_id=name, sample_rate=self.sample_rate)
        except MediaError:
            self.unreadable.add(name)
            return None
        if audio.size == 0:
            self.unreadable.add(name)
            return None
        self._cache[name] = audio
        if len(self._cache) > NOISE_CACHE_SIZE:
            self._cache.popitem(last=False)
        return audio

    def segment(
        self, length: int, rng: np.random.Generator, exclude: str | None = None
    ) -> tuple[np.ndarray, list[str]]:
        """Noise clips drawn at random and concatenated past ``length``, then randomly cropped."""
        candidates = [s for s in self.sources if s[0] != exclude]
        pieces: list[np.ndarray] = []
        used: list[str] = []
        total = 0
        while total <= length:
            usable = [s for s in candidates if s[0] not in self.unreadable]
            if not usable:
                raise DataError("no readable noise source left (all noise files failed to decode)")
            name, path = usable[int(rng.integers(len(usable)))]
            audio = self._audio(name, path)
            if audio is None:
                continue
            pieces.append(audio)
            used.append(name)
            total += audio.size
        noise = np.concatenate(pieces)
        start = int(rng.integers(0, noise.size - length + 1))
        return noise[start : start + length], used


def noise_sources_from_dir(noise_dir: Path) -> list[tuple[str, Path]]:
    """Every audio (or video) file below ``noise_dir``, sorted, named by relative path."""
    folder = Path(noise_dir)
    if not folder.is_dir():
        raise DataError(f"noise folder not found: {folder}")
    endings = NOISE_EXTENSIONS + VIDEO_EXTENSIONS
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in endings)
    if not files:
        raise DataError(f"no audio files ({', '.join(NOISE_EXTENSIONS)}) found in {folder}")
    return [(p.relative_to(folder).as_posix(), p) for p in files]


def babble_sources(clips: Sequence[Clip]) -> list[tuple[str, Path]]:
    """Other clips' speech as noise (the offline stand-in for MUSAN speech)."""
    sources = []
    for clip in clips:
        path = clip.audio or clip.video
        if path is not None:
            sources.append((clip.id, Path(path)))
    if len(sources) < 2:
        raise DataError(
            "babble noise needs at least two clips with audio; give --noise-dir (e.g. MUSAN speech)"
        )
    return sources


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
    mixed: np.ndarray | None = None
    used: list[str] = []
    gain = 1.0
    if clean is not None and clean.size:
        segment, used = noise.segment(clean.size, rng, exclude=clip.id)
        result = mix_at_snr(clean, segment, snr_db)
        mixed, gain = result.audio, result.gain
        if rms(clean) == 0.0:
            flags.append("silent_audio")
        if gain < 1.0:
            flags.append("rescaled")
    if not has_video:
        flags.append("no_video")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frames = _write_corrupted(
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


def _write_corrupted(
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
            report.failures.append(ClipFailure(clip_id=clip.id, stage="corrupt", reason=str(exc)))
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
