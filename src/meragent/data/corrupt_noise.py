"""The audio half of MER-NOISE: noise drawn from a pool and mixed in at a signal-to-noise ratio.

Noise clips (MUSAN speech files, or the other clips' own speech as babble) are decoded on
demand, concatenated until longer than the clip and cropped at a random offset; the mix is
computed in int16 units like the organisers' script, rescaled as a whole when it would clip.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meragent.data.media import VIDEO_EXTENSIONS, read_audio
from meragent.errors import DataError, MediaError
from meragent.schema import Clip

#: Audio files accepted in a noise folder (MUSAN ships .wav), videos too (their audio is used).
NOISE_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")
INT16_MAX = 32767.0
INT16_MIN = -32768.0
#: Decoded noise clips kept in memory (babble reuses the same few clips often).
NOISE_CACHE_SIZE = 64


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
