"""Encoders across clips: the batch half of the modality tools and the encoder stage of a run.

A modality tool is used in two phases (``meragent.tools.base.BatchableTool``): ``prepare`` gives
a clip's :class:`EncoderInput` (waveform, face crops or subtitle, with the source stamp its
vector is checked against), ``encode_batch`` embeds many inputs in shared forward passes, and
``finish(clip, media, vector)`` makes the clue. Executors use this module's two functions:

* :func:`encode_clips` (in-process executor): fills the feature cache for a group of decoded
  clips, ``batch_size`` inputs per forward pass; the graph's tool nodes then find the vectors
  there (reused by recipe and source stamp, as any cached vector). It never raises for a
  clip: a clip it could not encode is left to the tool node, which encodes it alone and
  reports the error exactly as a batch-1 run does.
* :func:`encode_items` (Ray encoder stage): the same, returning each clip's vector (or its
  encoder error, or None) instead of writing it; the graph stage hands it to ``finish``.

A batch that fails as a whole is retried clip by clip, so one bad clip cannot sink the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from meragent.data.media_types import DecodedMedia
from meragent.errors import ConfigError, DataError, ModelLoadError
from meragent.schema import Clip
from meragent.tools.feature_cache import FeatureCache, SourceStamp

if TYPE_CHECKING:
    from meragent.tools.base import BatchableTool, ToolSet
    from meragent.tools.modality_tools import EncoderSlot

#: The toolset attributes whose tools have encoders, in graph order.
MODALITIES: tuple[str, ...] = ("acoustic", "visual", "lexical")
#: What ``finish`` accepts for a clip: the encoder's vector, the error it raised for this clip,
#: or None (look in the cache, else encode the clip alone).
Encoded = np.ndarray | BaseException | None


@dataclass(frozen=True)
class EncoderInput:
    """One clip's input to a modality encoder, and what its vector is computed from."""

    clip_id: str
    #: ``(waveform, sample_rate)`` (acoustic), face crops (N, H, W, 3) (visual) or text (lexical).
    payload: Any
    source: SourceStamp | None


class SlotEncoding:
    """The batch half of a tool (``cached``, ``save``, ``encode_batch``) over its encoder slot."""

    cache: FeatureCache
    encoder: EncoderSlot | None
    #: The modality key of :func:`encode_payloads`.
    modality: str = ""

    def cached(self, item: EncoderInput) -> np.ndarray | None:
        """The item's vector if the cache holds one made from its source by this recipe."""
        slot = self._slot()
        return self.cache.lookup(slot.feature, item.clip_id, source=item.source, recipe=slot.recipe)

    def save(self, item: EncoderInput, vector: np.ndarray) -> str:
        """Write the item's vector with its provenance; returns the file's path."""
        slot = self._slot()
        path = self.cache.save(
            slot.feature, item.clip_id, vector, source=item.source, recipe=slot.recipe
        )
        return str(path)

    def recipe_digest(self) -> str:
        """What the vectors depend on (model, recipe, precision): equal digests, equal vectors."""
        recipe = self._slot().recipe
        assert recipe is not None  # EncoderSlot fills it in
        return recipe.digest

    def encode_batch(self, inputs: list[EncoderInput]) -> list[np.ndarray]:
        """One vector per input, in shared forward passes (loads the model on first use)."""
        if not inputs:
            return []
        model = self._slot().model.get()
        return encode_payloads(self.modality, model, [item.payload for item in inputs])

    def _slot(self) -> EncoderSlot:
        if self.encoder is None:
            raise ConfigError(f"the {self.modality} tool has no encoder")
        return self.encoder


def encode_payloads(modality: str, model: Any, payloads: list[Any]) -> list[np.ndarray]:
    """One loaded encoder's call over a batch (the GPU benchmark times this call too).

    ``payloads``: ``(waveform, sample_rate)`` pairs (acoustic), face-crop stacks (visual) or
    subtitles (lexical); one float32 vector per payload comes back.
    """
    if modality == "acoustic":
        rates = {rate for _, rate in payloads}
        if len(rates) > 1:
            raise DataError(f"mixed sample rates in one encoder batch: {sorted(rates)}")
        audios = [audio for audio, _ in payloads]
        vectors = model.encode_many(audios, sample_rate=rates.pop(), batch_size=len(audios))
    elif modality == "visual":
        vectors = model.encode_many(payloads)
    elif modality == "lexical":
        vectors = model.encode(payloads)
    else:
        raise ConfigError(f"unknown encoder modality {modality!r}")
    return [np.asarray(vector, dtype=np.float32) for vector in vectors]


def encode_isolating(
    encode: Callable[[list[Any]], list[np.ndarray]], items: list[Any]
) -> list[np.ndarray | BaseException]:
    """Encode a batch; when it fails as a whole, retry clip by clip to pin down the bad one.

    ``ModelLoadError`` is not a clip's fault: it propagates at once.
    """
    try:
        return [np.asarray(vector, dtype=np.float32) for vector in encode(items)]
    except ModelLoadError:
        raise
    except Exception as exc:
        if len(items) == 1:
            return [exc]
    results: list[np.ndarray | BaseException] = []
    for item in items:
        results.extend(encode_isolating(encode, [item]))
    return results


def batchable_tools(tools: ToolSet) -> dict[str, BatchableTool]:
    """The toolset's modality tools that take part in batching, by modality."""
    from meragent.tools.base import BatchableTool

    found: dict[str, BatchableTool] = {}
    for modality in MODALITIES:
        tool = getattr(tools, modality, None)
        if isinstance(tool, BatchableTool):
            found[modality] = tool
    return found


def _pending(
    tool: BatchableTool, items: Sequence[tuple[Clip, DecodedMedia | None]]
) -> tuple[list[Encoded], list[tuple[int, EncoderInput]]]:
    """Per clip: the cached vector (or None), and the inputs still to encode, by position.

    A clip whose input or cache lookup fails is left to the tool node (None): it meets the
    same error there and reports it as it always does.
    """
    results: list[Encoded] = [None] * len(items)
    pending: list[tuple[int, EncoderInput]] = []
    for index, (clip, media) in enumerate(items):
        if media is None:
            continue
        try:
            item = tool.prepare(clip, media)
            if item is None:
                continue
            cached = tool.cached(item)
        except Exception:  # handed to the tool node, which reports it
            continue
        if cached is not None:
            results[index] = cached
        else:
            pending.append((index, item))
    return results, pending


def encode_items(
    tool: BatchableTool,
    items: Sequence[tuple[Clip, DecodedMedia | None]],
    batch_size: int,
) -> list[Encoded]:
    """Each clip's vector (cached or encoded now), its encoder error, or None (not prepared).

    A clip whose media is None (decode failed) gets None. ``ModelLoadError`` becomes every
    pending clip's error, as the tool node would raise it for each of them.
    """
    results, pending = _pending(tool, items)
    size = max(1, int(batch_size))
    for start in range(0, len(pending), size):
        group = pending[start : start + size]
        try:
            encoded = encode_isolating(tool.encode_batch, [item for _, item in group])
        except ModelLoadError as exc:
            encoded = [exc] * len(group)
        for (index, _), outcome in zip(group, encoded, strict=True):
            results[index] = outcome
    return results


@dataclass
class EncodeReport:
    """What :func:`encode_clips` did, per modality."""

    encoded: dict[str, int] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    #: Clips left to the tool node (encoder error, model not loadable, or unsaved).
    left: dict[str, int] = field(default_factory=dict)


def encode_clips(
    tools: ToolSet,
    items: Sequence[tuple[Clip, DecodedMedia | None]],
    batch_size: int,
) -> EncodeReport:
    """Fill the feature cache for these decoded clips, ``batch_size`` inputs per forward pass.

    Vectors already cached (same recipe, same source) are not recomputed. Never raises for a
    clip or a model: what it could not do, the graph's tool node does at batch 1.
    """
    report = EncodeReport()
    for modality, tool in batchable_tools(tools).items():
        known, pending = _pending(tool, items)
        encoded = left = 0
        size = max(1, int(batch_size))
        for start in range(0, len(pending), size):
            group = [item for _, item in pending[start : start + size]]
            try:
                outcomes = encode_isolating(tool.encode_batch, group)
            except ModelLoadError:
                left += len(group)
                continue
            for item, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, BaseException) or not _saved(tool, item, outcome):
                    left += 1
                else:
                    encoded += 1
        report.encoded[modality] = encoded
        report.left[modality] = left
        report.cached[modality] = sum(1 for vector in known if vector is not None)
    return report


def _saved(tool: BatchableTool, item: EncoderInput, vector: np.ndarray) -> bool:
    try:
        tool.save(item, vector)
    except Exception:  # the tool node meets the same error and reports it
        return False
    return True
