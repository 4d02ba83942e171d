"""LangGraph state of one clip: references and small values only, never arrays.

Decoded audio/frames live in a process-local media cache keyed by clip id; embeddings live in the
feature cache on disk and are referenced by path (``Clue.feature_ref``). The state therefore
checkpoints in a few kilobytes and a resumed run in a new process re-decodes only if a tool
still has to run.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from typing_extensions import TypedDict

from meragent.schema import Clip, Clue, Prediction

Track = Literal["ov", "semi", "noise", "all"]
TRACKS: tuple[str, ...] = ("ov", "semi", "noise", "all")


class MediaInfo(TypedDict, total=False):
    """What decoding found, without the decoded arrays."""

    duration: float
    sample_rate: int
    has_audio: bool
    has_video: bool
    n_frames: int
    flags: list[str]
    error: str | None


class FusionInfo(TypedDict, total=False):
    """The six-class decision and where it came from."""

    discrete: str | None
    probs: dict[str, float]
    valence: float | None
    source: str
    inputs: list[str]
    attention: dict[str, float] | None


class ClipInput(TypedDict):
    """What a caller passes in: the clip and the run it belongs to (the track is the graph's)."""

    run_id: str
    clip: Clip


class ClipOutput(TypedDict, total=False):
    """What a finished run returns."""

    clip: Clip
    media: MediaInfo
    # The three tool nodes (and the describers) write in the same super-step: lists concatenate.
    # (The output schema carries the same reducers as the state: one channel per key.)
    clues: Annotated[list[Clue], operator.add]
    transcript: str
    description: str
    llm_choice: str | None
    fusion: FusionInfo
    labels: list[str]
    prediction: Prediction
    metrics: dict[str, Any]
    flags: Annotated[list[str], operator.add]


class ClipState(ClipOutput, total=False):
    """Everything the nodes read and write for one clip: the output and the run it is part of."""

    run_id: str
