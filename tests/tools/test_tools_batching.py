"""The tools' two-phase API (prepare → encode_batch → finish) and the encoder stage functions.

Tiny random HuBERT / CLIP / BERT models (tests/tools/conftest.py): a batch of clips encoded
together gives the vectors a batch-1 run gives (fp32, within 1e-5), the tool nodes then reuse
them from the feature cache, and an encoder's per-clip failure reads the same either way.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meragent.data.media_types import DecodedMedia
from meragent.errors import DataError, ModelLoadError
from meragent.schema import Clip
from meragent.tools.base import BatchableTool
from meragent.tools.encoding import encode_clips, encode_items
from meragent.tools.feature_cache import FeatureCache
from meragent.tools.lazy import Lazy, shared
from meragent.tools.modality_tools import (
    ENCODER_FAILED,
    AcousticTool,
    EncoderSlot,
    LexicalTool,
    VisualTool,
)
from meragent.tools.registry import ToolSet

RATE = 16000


class Counting:
    """Wraps a loaded encoder and counts the calls of each method that reached it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return counted


def clips_and_media(n: int) -> list[tuple[Clip, DecodedMedia]]:
    """Clips of different lengths with speech-like noise, face frames and a subtitle each."""
    from meragent.data.synth import face_frames

    rng = np.random.default_rng(0)
    frames = np.stack(list(face_frames(2)))
    items = []
    for i in range(n):
        audio = (0.1 * rng.standard_normal(RATE // 2 + 1600 * i)).astype(np.float32)
        media = DecodedMedia(
            clip_id=f"c{i}", sample_rate=RATE, duration=len(audio) / RATE, audio=audio,
            frames=frames[:, :, i:],  # different crops per clip
        )  # fmt: skip
        items.append((Clip(id=f"c{i}", subtitle=f"hello number {i} " * (i + 1)), media))
    return items


def toolset(cache: FeatureCache, hubert: Path, clip: Path, bert: Path) -> ToolSet:
    from meragent.tools.acoustic_encoder import load_acoustic_encoder
    from meragent.tools.clip_encoder import load_clip_encoder
    from meragent.tools.faces import load_face_detector
    from meragent.tools.text_encoder import load_hf_text_encoder

    def slot(loader: Any, name: str) -> EncoderSlot:
        return EncoderSlot(Lazy(lambda: Counting(loader())), name, name)

    return ToolSet(
        acoustic=AcousticTool(
            cache=cache,
            encoder=slot(lambda: load_acoustic_encoder(str(hubert), layers=2), "a-UTT"),
            prosody=False,
        ),
        visual=VisualTool(
            cache=cache,
            detector=Lazy(load_face_detector),
            encoder=slot(lambda: load_clip_encoder(str(clip)), "v-UTT"),
        ),
        lexical=LexicalTool(
            cache=cache, encoder=slot(lambda: load_hf_text_encoder(str(bert), layers=2), "t-UTT")
        ),
    )


def model_of(tool: Any) -> Counting:
    model: Counting = tool.encoder.model.get()
    return model


def test_batched_vectors_equal_batch_one_and_the_tool_nodes_reuse_them(
    tmp_path: Path, tiny_hubert: Path, tiny_clip: Path, tiny_bert: Path
) -> None:
    items = clips_and_media(4)
    single = toolset(FeatureCache(tmp_path / "one"), tiny_hubert, tiny_clip, tiny_bert)
    reference = {
        (name, clip.id): getattr(single, name).analyze(clip, media)
        for clip, media in items
        for name in ("acoustic", "visual", "lexical")
    }
    cache = FeatureCache(tmp_path / "batched")
    tools = toolset(cache, tiny_hubert, tiny_clip, tiny_bert)
    report = encode_clips(tools, items, batch_size=3)
    assert report.encoded == {"acoustic": 4, "visual": 4, "lexical": 4}
    assert report.left == {"acoustic": 0, "visual": 0, "lexical": 0}
    # Two forward passes per encoder (3 + 1 clips), not four.
    assert model_of(tools.acoustic).calls == {"encode_many": 2}
    assert model_of(tools.visual).calls == {"encode_many": 2}
    assert model_of(tools.lexical).calls == {"encode": 2}
    by_id = {clip.id: (clip, media) for clip, media in items}
    for (name, clip_id), expected in reference.items():
        clue = getattr(tools, name).analyze(*by_id[clip_id])
        feature = getattr(tools, name).encoder.feature
        np.testing.assert_allclose(
            cache.load(feature, clip_id),
            FeatureCache(tmp_path / "one").load(feature, clip_id),
            rtol=1e-5,
            atol=1e-5,
        )
        assert (clue.text, clue.flags, clue.error) == (expected.text, expected.flags, None)
        assert clue.feature_ref == str(cache.path(feature, clip_id))
    # The tool nodes found every vector in the cache: no encoder ran again.
    assert model_of(tools.acoustic).calls == {"encode_many": 2}
    assert "encode_clip" not in model_of(tools.visual).calls
    assert model_of(tools.lexical).calls == {"encode": 2}
    again = encode_clips(tools, items, batch_size=3)
    assert again.cached == {"acoustic": 4, "visual": 4, "lexical": 4}
    assert again.encoded == {"acoustic": 0, "visual": 0, "lexical": 0}


class Flaky:
    """A speech encoder that fails on any batch holding a clip shorter than ``min_samples``."""

    def __init__(self, min_samples: int) -> None:
        self.min_samples = min_samples
        self.batches: list[int] = []

    def encode_many(self, audios: list[np.ndarray], **_: Any) -> list[np.ndarray]:
        self.batches.append(len(audios))
        if any(len(a) < self.min_samples for a in audios):
            raise DataError("audio is too short")
        return [np.full(3, len(a), dtype=np.float32) for a in audios]

    def encode(self, audio: np.ndarray, sample_rate: int = RATE) -> np.ndarray:
        return self.encode_many([audio])[0]


def test_one_bad_clip_fails_alone_and_reads_as_a_batch_one_failure(tmp_path: Path) -> None:
    encoder = Flaky(min_samples=1000)
    tool = AcousticTool(
        cache=FeatureCache(tmp_path),
        encoder=EncoderSlot(Lazy(lambda: encoder), "f-UTT", "flaky"),
        prosody=False,
    )
    assert isinstance(tool, BatchableTool)
    lengths = [2000, 10, 3000]
    items = [
        (Clip(id=f"c{i}"), DecodedMedia(clip_id=f"c{i}", sample_rate=RATE, duration=1.0,
                                        audio=np.zeros(n, np.float32)))
        for i, n in enumerate(lengths)
    ]  # fmt: skip
    outcomes = encode_items(tool, items, batch_size=8)
    assert encoder.batches == [3, 1, 1, 1]  # the whole batch, then clip by clip
    assert isinstance(outcomes[1], DataError)
    assert [float(np.asarray(outcomes[i])[0]) for i in (0, 2)] == [2000.0, 3000.0]
    staged = tool.finish(items[1][0], items[1][1], outcomes[1])
    alone = AcousticTool(
        cache=FeatureCache(tmp_path / "alone"),
        encoder=EncoderSlot(Lazy(lambda: Flaky(1000)), "f-UTT", "flaky"),
        prosody=False,
    ).analyze(*items[1])
    assert staged.error == alone.error == "flaky: audio is too short"
    assert ENCODER_FAILED in staged.flags and staged.flags == alone.flags
    others = VisualTool(FeatureCache(tmp_path), Lazy(object)), LexicalTool(FeatureCache(tmp_path))
    report = encode_clips(ToolSet(tool, *others), items, batch_size=8)
    # encode_items only returns vectors; encode_clips saves the two good ones.
    assert (report.encoded["acoustic"], report.left["acoustic"]) == (2, 1)
    assert tool.cached(tool.prepare(*items[0])) is not None  # type: ignore[arg-type]
    assert tool.cached(tool.prepare(*items[1])) is None  # type: ignore[arg-type]


def test_a_model_that_cannot_load_is_every_pending_clips_error(tmp_path: Path) -> None:
    def fail() -> Any:
        raise ModelLoadError("text_encoder", "/nowhere", "path does not exist")

    tool = LexicalTool(cache=FeatureCache(tmp_path), encoder=EncoderSlot(Lazy(fail), "t", "t"))
    items = [(Clip(id=f"c{i}", subtitle="words"), None) for i in range(3)]
    media = DecodedMedia(clip_id="x", sample_rate=RATE, duration=1.0)
    outcomes = encode_items(tool, [(c, media) for c, _ in items], batch_size=2)
    assert all(isinstance(o, ModelLoadError) for o in outcomes)
    with pytest.raises(ModelLoadError):  # the tool node raises it, as in a batch-1 run
        tool.finish(items[0][0], media, outcomes[0])
    report = encode_clips(
        ToolSet(AcousticTool(FeatureCache(tmp_path)), VisualTool(FeatureCache(tmp_path),
                Lazy(object)), tool), [(c, media) for c, _ in items], batch_size=2,
    )  # fmt: skip
    assert report.left["lexical"] == 3 and report.encoded["lexical"] == 0


def test_clips_without_the_modality_or_a_subtitle_are_not_prepared(tmp_path: Path) -> None:
    slot = EncoderSlot(Lazy(object), "x", "x")
    cache = FeatureCache(tmp_path)
    silent = DecodedMedia(clip_id="c", sample_rate=RATE, duration=1.0)
    assert AcousticTool(cache, encoder=slot).prepare(Clip(id="c"), silent) is None
    assert VisualTool(cache, Lazy(object), encoder=slot).prepare(Clip(id="c"), silent) is None
    lexical = LexicalTool(cache, encoder=slot)
    assert lexical.prepare(Clip(id="c", subtitle="  "), silent) is None  # ASR at finish
    prepared = lexical.prepare(Clip(id="c", subtitle=" hi there "), silent)
    assert prepared is not None and prepared.payload == "hi there"
    assert LexicalTool(cache).prepare(Clip(id="c", subtitle="hi"), silent) is None


# ------------------------------------------------------------------------------- Lazy holders


def test_lazy_keeps_a_legitimately_absent_value() -> None:
    calls = []

    def no_head() -> None:
        calls.append(1)

    holder: Lazy[None] = Lazy(no_head)
    assert not holder.loaded
    assert holder.get() is None and holder.get() is None
    assert holder.loaded and calls == [1]  # the old holder looked again on every clip


def test_lazy_failed_load_is_retried() -> None:
    attempts = []

    def flaky() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise ModelLoadError("x", "y", "not yet")
        return 7

    holder = Lazy(flaky)
    with pytest.raises(ModelLoadError):
        holder.get()
    assert holder.get() == 7 and len(attempts) == 2


def test_loads_of_different_models_do_not_wait_for_each_other() -> None:
    """Model A's loader waits until model B has loaded: a process-wide lock would deadlock."""
    b_loaded = threading.Event()
    a = shared(("test-a", id(b_loaded)), lambda: b_loaded.wait(timeout=5) and "a")
    b = shared(("test-b", id(b_loaded)), lambda: b_loaded.set() or "b")
    results: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: results.setdefault("a", a.get()))
    thread.start()
    assert b.get() == "b"
    thread.join(timeout=10)
    assert results == {"a": "a"}


def test_holders_of_one_key_share_one_load() -> None:
    loads = []
    key = ("test-same", object())
    first = shared(key, lambda: loads.append(1) or "model")
    second = shared(key, lambda: loads.append(2) or "other")
    threads = [threading.Thread(target=holder.get) for holder in (first, second) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert first.get() == second.get() and len(loads) == 1
