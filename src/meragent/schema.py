"""Pydantic types that cross boundaries: clips, clues, predictions, OV results and trace steps.

The six MER classes live here, once, in MERTools' order.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: The six MER2023/MER2024 classes in MERTools' order (index = class id everywhere).
EMOTIONS: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")
EMOTION_TO_ID: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}
#: Spellings met in MER files and LLM answers that mean one of the six classes.
EMOTION_ALIASES: dict[str, str] = {"surprised": "surprise", "worry": "worried"}
#: MER2023 writes a missing valence as -10.
MISSING_VALENCE = -10.0


def normalize_emotion(name: str) -> str:
    """Return the canonical six-class name for ``name`` or raise ``ValueError``."""
    key = name.strip().lower()
    key = EMOTION_ALIASES.get(key, key)
    if key not in EMOTION_TO_ID:
        raise ValueError(f"unknown emotion label {name!r} (expected one of {', '.join(EMOTIONS)})")
    return key


class Modality(StrEnum):
    """The three input modalities of a clip."""

    ACOUSTIC = "acoustic"
    VISUAL = "visual"
    LEXICAL = "lexical"


class Clip(BaseModel):
    """One video clip and whatever labels are known for it."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1)
    video: Path | None = None
    audio: Path | None = None
    subtitle: str | None = None
    language: str | None = None
    #: Every transcript the source holds for this clip, by language (MER transcriptions carry
    #: Chinese and English): how a text feature extracted from another language than
    #: ``subtitle``'s is still recognised as this clip's.
    transcripts: dict[str, str] = Field(default_factory=dict)
    discrete: str | None = None
    valence: float | None = None
    openset: list[str] | None = None

    @field_validator("discrete")
    @classmethod
    def _known_class(cls, value: str | None) -> str | None:
        return None if value is None or value == "" else normalize_emotion(value)

    @field_validator("valence")
    @classmethod
    def _missing_valence(cls, value: float | None) -> float | None:
        if value is None or math.isnan(value) or value == MISSING_VALENCE:
            return None
        return value

    @field_validator("openset")
    @classmethod
    def _clean_openset(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        seen: dict[str, None] = {}
        for label in value:
            key = label.strip().lower()
            if key:
                seen.setdefault(key, None)
        return list(seen)

    @property
    def has_ground_truth(self) -> bool:
        return self.discrete is not None or self.openset is not None


class Clue(BaseModel):
    """What one tool found in one modality of a clip (possibly: that the modality is missing)."""

    modality: Modality
    source: str
    available: bool = True
    text: str = ""
    probs: dict[str, float] | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)
    feature_ref: str | None = None
    model_id: str | None = None
    error: str | None = None

    @classmethod
    def unavailable(cls, modality: Modality, source: str, reason: str) -> Clue:
        return cls(modality=modality, source=source, available=False, text="", error=reason)


class Prediction(BaseModel):
    """The answer for one clip: six-class and/or open-vocabulary."""

    clip_id: str
    discrete: str | None = None
    probs: dict[str, float] | None = None
    valence: float | None = None
    openset: list[str] = Field(default_factory=list)
    description: str | None = None
    source: str = ""
    flags: list[str] = Field(default_factory=list)


class OVScores(BaseModel):
    """Set-level accuracy and recall of MER-OV (MER2024 Eq. 6-8), averaged over samples."""

    accuracy: float
    recall: float
    average: float
    n_samples: int
    n_skipped: int = 0
    n_missing_predictions: int = 0


class TraceStep(BaseModel):
    """One node execution, as stored in the trace store."""

    run_id: str
    clip_id: str
    node: str
    model_id: str | None = None
    prompt: list[dict[str, str]] | str | None = None
    raw_output: str | None = None
    parsed_output: Any = None
    latency_s: float = 0.0
    error: str | None = None
    retries: int = 0
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


#: How bad a clip's problem is: ``failed`` (no answer) or ``degraded`` (answered from the
#: modalities that remained, e.g. a corrupt video with a subtitle).
Severity = Literal["failed", "degraded"]


class ClipFailure(BaseModel):
    """A clip that could not be processed (or only in part), with the stage and the reason."""

    clip_id: str
    stage: str
    reason: str
    severity: Severity = "failed"
