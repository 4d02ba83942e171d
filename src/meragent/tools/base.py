"""Protocols the graph's tool nodes rely on; backends in this package implement them.

A tool never raises for a missing modality: it returns ``Clue.unavailable(...)``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from meragent.data.media_types import DecodedMedia
from meragent.schema import Clip, Clue


@runtime_checkable
class ModalityTool(Protocol):
    """Turns one modality of a decoded clip into a Clue (text + optional probs + feature ref)."""

    name: str

    def analyze(self, clip: Clip, media: DecodedMedia) -> Clue: ...


@runtime_checkable
class Describer(Protocol):
    """An audio or video LLM that writes a free-text emotion description of the clip."""

    name: str

    def describe(self, clip: Clip, media: DecodedMedia, subtitle: str) -> Clue: ...
