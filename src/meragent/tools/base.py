"""Protocols the graph's tool nodes and the executors rely on; this package implements them.

A tool never raises for a missing modality: it returns ``Clue.unavailable(...)``.

``ToolSet`` is the one shape of "the tools of a run" (``tools.registry.build_toolset`` builds
it; the Ray graph stage wraps one). A modality tool that is also a :class:`BatchableTool` lets an
executor run its encoder across clips (``tools.encoding``): ``prepare`` → ``encode_batch`` →
``finish``; ``analyze`` is ``finish`` without a vector (cache, else a batch-1 encode).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from meragent.data.media_types import DecodedMedia
from meragent.schema import Clip, Clue

if TYPE_CHECKING:
    from meragent.tools.encoding import Encoded, EncoderInput


@runtime_checkable
class ModalityTool(Protocol):
    """Turns one modality of a decoded clip into a Clue (text + optional probs + feature ref)."""

    @property
    def name(self) -> str: ...

    def analyze(self, clip: Clip, media: DecodedMedia) -> Clue: ...


@runtime_checkable
class BatchableTool(ModalityTool, Protocol):
    """A modality tool whose encoder can run over many clips at once.

    ``prepare`` returns None when the tool would not run its encoder for this clip (no such
    modality, no encoder, no subtitle to encode yet). ``finish`` with a vector uses it (the
    cache still wins when it holds one for this source and recipe), with an exception reports
    it as that clip's encoder failure, and with None behaves as ``analyze``.
    """

    def prepare(self, clip: Clip, media: DecodedMedia) -> EncoderInput | None: ...

    def encode_batch(self, inputs: list[EncoderInput]) -> list[np.ndarray]: ...

    def finish(self, clip: Clip, media: DecodedMedia, vector: Encoded = None) -> Clue: ...

    def cached(self, item: EncoderInput) -> np.ndarray | None: ...

    def save(self, item: EncoderInput, vector: np.ndarray) -> str: ...

    def recipe_digest(self) -> str: ...


@runtime_checkable
class Describer(Protocol):
    """An audio or video LLM that writes a free-text emotion description of the clip."""

    @property
    def name(self) -> str: ...

    def describe(self, clip: Clip, media: DecodedMedia, subtitle: str) -> Clue: ...


class ToolSet(Protocol):
    """What the graph's tool nodes call for one clip: three modality tools and two describers."""

    @property
    def acoustic(self) -> ModalityTool: ...

    @property
    def visual(self) -> ModalityTool: ...

    @property
    def lexical(self) -> ModalityTool: ...

    @property
    def audio_describer(self) -> Describer | None: ...

    @property
    def video_describer(self) -> Describer | None: ...
