"""Helpers shared by the graph tests: fixed-clue tools, decoders with or without streams, clips."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from meragent_fakes import FakeToolSet

from meragent.data.media_types import DecodedMedia
from meragent.schema import Clip, Clue, Modality


@dataclass
class FixedTool:
    """Returns a copy of one clue (or raises), counting its calls."""

    modality: Modality
    clue: Clue | None = None
    error: Exception | None = None
    name: str = "fixed"
    calls: list[str] = field(default_factory=list)
    thread_safe: bool = True

    def analyze(self, clip: Clip, media: DecodedMedia) -> Clue:
        self.calls.append(clip.id)
        if self.error is not None:
            raise self.error
        assert self.clue is not None
        text = clip.subtitle or "" if self.modality is Modality.LEXICAL else self.clue.text
        return self.clue.model_copy(update={"text": text})


ACOUSTIC_CLUE = Clue(
    modality=Modality.ACOUSTIC,
    source="prosody",
    text="raised pitch, lively pace",
    probs={"happy": 0.6, "neutral": 0.4},
    model_id="prosody-v1",
)
VISUAL_CLUE = Clue(
    modality=Modality.VISUAL,
    source="fer",
    text="broad smile",
    probs={"happy": 0.8, "surprise": 0.2},
    model_id="fer-tflite",
)
LEXICAL_CLUE = Clue(
    modality=Modality.LEXICAL,
    source="subtitle",
    text="",
    data={"language": "en"},
    model_id="subtitle",
)


def fixed_tools(**overrides: Any) -> FakeToolSet:
    tools = {
        "acoustic": FixedTool(Modality.ACOUSTIC, ACOUSTIC_CLUE),
        "visual": FixedTool(Modality.VISUAL, VISUAL_CLUE),
        "lexical": FixedTool(Modality.LEXICAL, LEXICAL_CLUE),
    }
    tools.update(overrides)
    return FakeToolSet(**tools)


def decoder(*, audio: bool = True, video: bool = True) -> Callable[[Clip], DecodedMedia]:
    def decode(clip: Clip) -> DecodedMedia:
        return DecodedMedia(
            clip_id=clip.id,
            sample_rate=16000,
            duration=2.0,
            audio=np.zeros(32000, dtype=np.float32) if audio else None,
            frames=np.zeros((4, 8, 8, 3), dtype=np.uint8) if video else None,
            flags=[] if audio else ["no_audio"],
        )

    return decode


def make_clip(clip_id: str = "c1", **kwargs: Any) -> Clip:
    values: dict[str, Any] = {
        "video": Path(f"/data/{clip_id}.mp4"),
        "subtitle": "I passed the exam!",
    }
    values.update(kwargs)
    return Clip(id=clip_id, **values)


def write_manifest(
    folder: Path, n: int, *, bad_rows: int = 0, subtitles: dict[int, str] | None = None
) -> Path:
    """A CSV manifest of ``n`` clips with labels, backed by empty placeholder video files."""
    import csv

    from meragent.schema import EMOTIONS

    (folder / "video").mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    with manifest.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "video", "subtitle", "discrete", "openset"])
        for i in range(n):
            name = f"clip_{i:03d}"
            (folder / "video" / f"{name}.mp4").write_bytes(b"\0")
            subtitle = (subtitles or {}).get(i, f"sentence number {i}")
            emotion = EMOTIONS[i % len(EMOTIONS)]
            writer.writerow([name, f"video/{name}.mp4", subtitle, emotion, repr([emotion])])
        for j in range(bad_rows):
            writer.writerow([f"missing_{j}", f"video/missing_{j}.mp4", "x", "happy", "[]"])
    return manifest
