"""Prosody clue without weights: pitch, loudness, speaking rate and pauses from the waveform.

Pitch comes from YIN (librosa) with a voicing decision from the normalised autocorrelation at the
detected period: pYIN is more accurate but costs tens of seconds per clip on a small CPU, which a
per-clip tool node cannot afford. Speaking rate is approximated by syllable nuclei, counted as
peaks of the energy envelope inside voiced stretches. The numbers stay in the clue's data; the
text is a short factual rendering such as ``"high, rising pitch; loud; fast"``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

FRAME_LENGTH = 1024  # 64 ms at 16 kHz: two periods of a 65 Hz voice
HOP_LENGTH = 320  # 20 ms
FMIN_HZ = 65.0
FMAX_HZ = 500.0
#: Below this RMS (about -80 dBFS) the clip is treated as digital silence.
SILENCE_RMS = 1e-4
#: Normalised autocorrelation at the pitch period above which a frame counts as voiced.
VOICING_THRESHOLD = 0.6
#: A gap between speech stretches at least this long counts as a pause.
MIN_PAUSE_S = 0.2

#: Order of the numbers in the cached prosody vector (missing values stored as 0).
VECTOR_FIELDS: tuple[str, ...] = (
    "pitch_median_hz",
    "pitch_range_st",
    "pitch_std_st",
    "pitch_slope_st_per_s",
    "voiced_ratio",
    "energy_mean_db",
    "energy_std_db",
    "syllable_rate",
    "pause_count",
    "pause_ratio",
    "speech_s",
)


@dataclass
class ProsodyFeatures:
    """Numbers behind the prosody clue (None where the clip has no voiced speech)."""

    duration_s: float
    speech_s: float
    silent: bool
    voiced_ratio: float
    pitch_median_hz: float | None
    pitch_range_st: float | None
    pitch_std_st: float | None
    pitch_slope_st_per_s: float | None
    energy_mean_db: float | None
    energy_std_db: float | None
    syllable_rate: float | None
    pause_count: int
    pause_ratio: float

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {key: _rounded(value) for key, value in asdict(self).items()}

    def as_vector(self) -> np.ndarray:
        values = asdict(self)
        return np.array([float(values[name] or 0.0) for name in VECTOR_FIELDS], dtype=np.float32)


def _rounded(value: float | int | bool | None) -> float | int | bool | None:
    if isinstance(value, float):
        return round(value, 3)
    return value


def _semitones(f0_hz: np.ndarray, reference_hz: float) -> np.ndarray:
    return 12.0 * np.log2(f0_hz / reference_hz)


def voicing_strength(frames: np.ndarray, periods: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation of each frame (columns of ``frames``) at its own period."""
    strength = np.zeros(frames.shape[1], dtype=np.float32)
    for i, period in enumerate(periods):
        lag = int(period)
        if lag <= 0 or lag >= frames.shape[0]:
            continue
        head, tail = frames[:-lag, i], frames[lag:, i]
        denominator = math.sqrt(float(head @ head) * float(tail @ tail))
        if denominator > 0:
            strength[i] = float(head @ tail) / denominator
    return strength


def speech_intervals(audio: np.ndarray, top_db: float = 35.0) -> np.ndarray:
    """Sample intervals (start, end) of non-silent stretches, shape (K, 2)."""
    import librosa

    return np.asarray(
        librosa.effects.split(
            audio, top_db=top_db, frame_length=FRAME_LENGTH, hop_length=HOP_LENGTH
        )
    ).reshape(-1, 2)


def count_pauses(intervals: np.ndarray, sample_rate: int) -> tuple[int, float]:
    """Number and total seconds of gaps of at least ``MIN_PAUSE_S`` between speech stretches."""
    if len(intervals) < 2:
        return 0, 0.0
    gaps = (intervals[1:, 0] - intervals[:-1, 1]) / sample_rate
    long_gaps = gaps[gaps >= MIN_PAUSE_S]
    return len(long_gaps), float(long_gaps.sum())


def count_syllable_nuclei(energy_db: np.ndarray, voiced: np.ndarray, hop_s: float) -> int:
    """Energy peaks inside voiced frames, at least 100 ms apart and 2 dB above their valleys."""
    from scipy.signal import find_peaks

    envelope = np.where(voiced, energy_db, energy_db.min(initial=-100.0) - 10.0)
    peaks, _ = find_peaks(envelope, distance=max(1, int(0.1 / hop_s)), prominence=2.0)
    return int(np.count_nonzero(voiced[peaks])) if len(peaks) else 0


def extract_prosody(audio: np.ndarray, sample_rate: int) -> ProsodyFeatures:
    """Measure pitch, energy, rate and pauses of a mono float32 waveform."""
    import librosa

    audio = np.asarray(audio, dtype=np.float32)
    duration = len(audio) / sample_rate
    if len(audio) < FRAME_LENGTH or float(np.sqrt(np.mean(audio**2))) < SILENCE_RMS:
        return _silent_features(duration)

    hop_s = HOP_LENGTH / sample_rate
    f0 = librosa.yin(
        audio,
        fmin=FMIN_HZ,
        fmax=FMAX_HZ,
        sr=sample_rate,
        frame_length=FRAME_LENGTH,
        hop_length=HOP_LENGTH,
    )
    padded = np.pad(audio, FRAME_LENGTH // 2)  # yin frames are centred, match them
    frames = librosa.util.frame(padded, frame_length=FRAME_LENGTH, hop_length=HOP_LENGTH)
    n = min(frames.shape[1], len(f0))
    frames, f0 = frames[:, :n], f0[:n]
    rms = np.sqrt(np.mean(frames**2, axis=0))
    energy_db = 20.0 * np.log10(np.maximum(rms, 1e-10))
    loud_enough = energy_db > energy_db.max() - 35.0
    strength = voicing_strength(frames, np.round(sample_rate / f0))
    voiced = (strength > VOICING_THRESHOLD) & loud_enough

    intervals = speech_intervals(audio)
    speech_s = (
        float((intervals[:, 1] - intervals[:, 0]).sum() / sample_rate) if len(intervals) else 0.0
    )
    pause_count, pause_s = count_pauses(intervals, sample_rate)
    speech_energy = energy_db[loud_enough]
    features = ProsodyFeatures(
        duration_s=duration,
        speech_s=speech_s,
        silent=False,
        voiced_ratio=float(voiced.mean()) if n else 0.0,
        pitch_median_hz=None,
        pitch_range_st=None,
        pitch_std_st=None,
        pitch_slope_st_per_s=None,
        energy_mean_db=float(speech_energy.mean()),
        energy_std_db=float(speech_energy.std()),
        syllable_rate=None,
        pause_count=pause_count,
        pause_ratio=pause_s / duration if duration > 0 else 0.0,
    )
    if voiced.sum() >= 3:
        _add_pitch(features, f0[voiced], np.flatnonzero(voiced) * hop_s)
        if speech_s > 0:
            nuclei = count_syllable_nuclei(energy_db, voiced, hop_s)
            features.syllable_rate = nuclei / speech_s
    return features


def _add_pitch(features: ProsodyFeatures, f0: np.ndarray, times: np.ndarray) -> None:
    median = float(np.median(f0))
    semitones = _semitones(f0, median)
    features.pitch_median_hz = median
    features.pitch_range_st = float(np.percentile(semitones, 90) - np.percentile(semitones, 10))
    features.pitch_std_st = float(semitones.std())
    span = float(times[-1] - times[0])
    if span > 0.2:
        features.pitch_slope_st_per_s = float(np.polyfit(times, semitones, 1)[0])


def _silent_features(duration: float) -> ProsodyFeatures:
    return ProsodyFeatures(
        duration_s=duration,
        speech_s=0.0,
        silent=True,
        voiced_ratio=0.0,
        pitch_median_hz=None,
        pitch_range_st=None,
        pitch_std_st=None,
        pitch_slope_st_per_s=None,
        energy_mean_db=None,
        energy_std_db=None,
        syllable_rate=None,
        pause_count=0,
        pause_ratio=1.0 if duration > 0 else 0.0,
    )


def pitch_words(features: ProsodyFeatures) -> str | None:
    """``"high, rising pitch"``-style words, or None when nothing was voiced."""
    if features.pitch_median_hz is None:
        return None
    median = features.pitch_median_hz
    level = "low" if median < 120 else "high" if median > 240 else "medium"
    words = [level]
    slope = features.pitch_slope_st_per_s
    if slope is not None and abs(slope) >= 1.0:
        words.append("rising" if slope > 0 else "falling")
    spread = features.pitch_std_st or 0.0
    if spread < 1.5:
        words.append("monotone")
    elif spread > 4.0:
        words.append("highly varied")
    return ", ".join(words) + " pitch"


def loudness_word(features: ProsodyFeatures) -> str | None:
    if features.energy_mean_db is None:
        return None
    level = features.energy_mean_db
    return "loud" if level > -18 else "soft" if level < -32 else "moderate loudness"


def rate_word(features: ProsodyFeatures) -> str | None:
    if features.syllable_rate is None:
        return None
    rate = features.syllable_rate
    return "fast" if rate > 5.5 else "slow" if rate < 3.0 else "moderate pace"


def pause_words(features: ProsodyFeatures) -> str:
    if features.pause_count == 0:
        return "no pauses"
    plural = "s" if features.pause_count > 1 else ""
    return f"{features.pause_count} pause{plural} ({features.pause_ratio:.0%} of the clip)"


def describe_prosody(features: ProsodyFeatures) -> str:
    """Render the features as a short factual clue, e.g. ``"high, rising pitch; loud; fast"``."""
    if features.silent:
        return "silent: no audible speech"
    parts = [pitch_words(features), loudness_word(features), rate_word(features)]
    text = [part for part in parts if part]
    if features.pitch_median_hz is None:
        text.insert(0, "no voiced speech")
    text.append(pause_words(features))
    return "; ".join(text)
