"""The in-memory result of decoding one clip (arrays stay in-process, never in graph state)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DecodedMedia:
    """Audio and sampled frames of one clip, decoded once and shared by every tool.

    ``audio``: float32 mono at ``sample_rate`` (None when the file has no audio stream).
    ``frames``: uint8 RGB, shape (N, H, W, 3) (None when the file has no video stream).
    ``frame_times``: seconds of each sampled frame, shape (N,).
    ``flags``: what was odd about the file ("no_audio", "no_video", "very_short", "truncated").
    """

    clip_id: str
    sample_rate: int
    duration: float
    audio: np.ndarray | None = None
    frames: np.ndarray | None = None
    frame_times: np.ndarray | None = None
    fps: float | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def has_audio(self) -> bool:
        return self.audio is not None and self.audio.size > 0

    @property
    def has_video(self) -> bool:
        return self.frames is not None and len(self.frames) > 0
