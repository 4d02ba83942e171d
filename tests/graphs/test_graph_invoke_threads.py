"""One clip's invocation starts a bounded number of threads (LangGraph's per-invoke pool)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from graph_helpers import decoder, fixed_tools
from langchain_core.language_models import GenericFakeChatModel

from meragent.graphs.batch import CLIP_MAX_CONCURRENCY, invoke_clip, open_checkpointer
from meragent.graphs.builder import build_graph
from meragent.graphs.context import graph_context
from meragent.schema import Clip


def test_a_checkpointed_clip_starts_at_most_the_pool_bound_of_threads(
    tmp_path: Path, clip: Clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    original = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        started.append(self.name)
        original(self)

    # The checkpointer's one writer thread starts with it, before the clips.
    graph = build_graph(checkpointer=open_checkpointer(tmp_path / "checkpoints.sqlite"))
    monkeypatch.setattr(threading.Thread, "start", counted)
    n_clips = 5
    for i in range(n_clips):
        models = {
            "reasoning": GenericFakeChatModel(messages=iter(["Glad.\nAnswer: happy"])),
            "labeler": GenericFakeChatModel(messages=iter(["['happy']"])),
        }
        context = graph_context(fixed_tools(), models, decoder=decoder())
        one = clip.model_copy(update={"id": f"c{i}"})
        out = invoke_clip(graph, "r1", one, checkpointed=False, context=context)
        assert out["prediction"].discrete == "happy"
        assert len(out["clues"]) == 3  # the three tools still ran
    # Unbounded, LangGraph started a thread per background write while none was idle (~4-5).
    assert len(started) <= CLIP_MAX_CONCURRENCY * n_clips


def test_a_clip_without_checkpointer_is_answered(clip: Clip) -> None:
    # LangGraph's ``sync`` durability without a checkpointer fails every clip (AttributeError
    # '_put_checkpoint_fut'): invoke_clip must not ask for it then (the Ray graph stage's case).
    models = {
        "reasoning": GenericFakeChatModel(messages=iter(["Glad.\nAnswer: happy"])),
        "labeler": GenericFakeChatModel(messages=iter(["['happy']"])),
    }
    context = graph_context(fixed_tools(), models, decoder=decoder())
    out = invoke_clip(build_graph(), "r1", clip, checkpointed=False, context=context)
    assert out["prediction"].discrete == "happy"
