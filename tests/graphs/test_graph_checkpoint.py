"""Checkpointing: small state of references, resume at the unfinished super-step, pruning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graph_helpers import decoder, fixed_tools
from langchain_core.language_models import GenericFakeChatModel
from meragent_fakes import ScriptedChatModel

from meragent.agents.chat import CallPolicy, ChatCallError, RoleChat
from meragent.graphs.batch import invoke_clip, open_checkpointer, thread_id
from meragent.graphs.builder import build_graph
from meragent.graphs.context import graph_context
from meragent.schema import Clip


def _walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _walk(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _walk(v)]
    if hasattr(value, "model_dump"):
        return _walk(value.model_dump())
    return [value]


def _labeler() -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter(["['happy']"] * 3))


def test_a_clip_whose_llm_was_down_resumes_without_rerunning_the_tools(
    tmp_path: Path, clip: Clip
) -> None:
    path = tmp_path / "checkpoints.sqlite"
    tools = fixed_tools()
    down = RoleChat(
        "reasoning",
        ScriptedChatModel(fail_first=100),
        policy=CallPolicy(max_retries=1, backoff_s=0),
    )
    graph = build_graph(checkpointer=open_checkpointer(path))
    context = graph_context(tools, {"reasoning": down, "labeler": _labeler()}, decoder=decoder())
    with pytest.raises(ChatCallError):
        invoke_clip(graph, "r1", clip, checkpointed=True, context=context)
    config = {"configurable": {"thread_id": thread_id("r1", clip.id)}}
    assert graph.get_state(config).next == ("reasoning",)
    graph.checkpointer.close()  # the process ends: what it queued is committed

    # A fresh process: new graph and connection on the same file, a working model.
    working = GenericFakeChatModel(messages=iter(["Glad.\nAnswer: happy"]))
    resumed = build_graph(checkpointer=open_checkpointer(path))
    context = graph_context(tools, {"reasoning": working, "labeler": _labeler()}, decoder=decoder())
    out = invoke_clip(resumed, "r1", clip, checkpointed=True, context=context)
    assert out["prediction"].discrete == "happy"
    assert out["prediction"].openset == ["happy"]
    assert tools.acoustic.calls == ["c1"]  # the tool super-step was not repeated
    assert len(out["clues"]) == 3


def test_checkpointed_state_holds_only_small_values(tmp_path: Path, clip: Clip) -> None:
    saver = open_checkpointer(tmp_path / "checkpoints.sqlite")
    models = {
        "reasoning": GenericFakeChatModel(messages=iter(["Glad.\nAnswer: happy"])),
        "labeler": _labeler(),
    }
    graph = build_graph(checkpointer=saver)
    context = graph_context(fixed_tools(), models, decoder=decoder())
    invoke_clip(graph, "r1", clip, checkpointed=True, context=context)
    values = graph.get_state({"configurable": {"thread_id": thread_id("r1", "c1")}}).values
    leaves = _walk(values)
    assert not any(isinstance(v, np.ndarray | bytes) for v in leaves)
    sizes = [row[0] for row in saver.conn.execute("SELECT length(checkpoint) FROM checkpoints")]
    assert sizes and max(sizes) < 8_000
    # The batch runner prunes a finished thread.
    saver.delete_thread(thread_id("r1", "c1"))
    saver.flush()  # writes are group-committed: a direct read of the file waits for them
    assert saver.conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0


def test_a_finished_but_unrecorded_clip_is_not_run_again(tmp_path: Path, clip: Clip) -> None:
    saver = open_checkpointer(tmp_path / "checkpoints.sqlite")
    tools = fixed_tools()
    models = {
        "reasoning": GenericFakeChatModel(messages=iter(["Glad.\nAnswer: happy"])),
        "labeler": _labeler(),
    }
    graph = build_graph(checkpointer=saver)
    context = graph_context(tools, models, decoder=decoder())
    first = invoke_clip(graph, "r1", clip, checkpointed=True, context=context)
    again = invoke_clip(graph, "r1", clip, checkpointed=True, context=context)
    assert again["prediction"] == first["prediction"]
    assert tools.visual.calls == ["c1"]
