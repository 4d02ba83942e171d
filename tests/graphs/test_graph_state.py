"""Whole-final-state tests of the clip graph with fake chat models and fixed-clue tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graph_helpers import (
    ACOUSTIC_CLUE,
    LEXICAL_CLUE,
    VISUAL_CLUE,
    FixedTool,
    decoder,
    fixed_tools,
    make_clip,
)
from langchain_core.language_models import GenericFakeChatModel
from langgraph.checkpoint.memory import InMemorySaver

from meragent.graphs.builder import build_graph
from meragent.graphs.context import GraphContext, graph_context
from meragent.graphs.trace import TraceStore
from meragent.schema import Clip, Clue, Modality, Prediction

REASONING_REPLY = "A broad smile and a lively voice while sharing good news.\nAnswer: happy"
LABELER_REPLY = "['Happy', 'excited']"


def fakes(reasoning: list[str] | None = None, labeler: list[str] | None = None) -> dict[str, Any]:
    return {
        "reasoning": GenericFakeChatModel(messages=iter(reasoning or [REASONING_REPLY])),
        "labeler": GenericFakeChatModel(messages=iter(labeler or [LABELER_REPLY])),
    }


def compiled(
    tools: Any,
    models: dict[str, Any],
    *,
    track: str = "all",
    checkpointer: Any = None,
    **fields: Any,
) -> tuple[Any, GraphContext]:
    """The track's graph (compiled once) and the context its invokes pass."""
    return build_graph(track, checkpointer=checkpointer), graph_context(tools, models, **fields)


def run(graph: tuple[Any, GraphContext], clip: Clip, run_id: str = "r1") -> dict[str, Any]:
    compiled_graph, context = graph
    config = {"configurable": {"thread_id": clip.id}}
    return dict(compiled_graph.invoke({"run_id": run_id, "clip": clip}, config, context=context))


def step_nodes(store: TraceStore, clip_id: str, run_id: str = "r1") -> list[str]:
    return [s.node for s in store.steps(run_id, clip_id)]


def test_whole_final_state_of_a_full_run(tmp_path: Path, clip: Clip) -> None:
    store = TraceStore(tmp_path / "trace.sqlite")
    graph = compiled(
        fixed_tools(), fakes(), decoder=decoder(), trace=store, checkpointer=InMemorySaver()
    )
    out = run(graph, clip)
    lexical = LEXICAL_CLUE.model_copy(update={"text": "I passed the exam!"})
    probs = {
        "neutral": 0.4 / 3,
        "angry": 0.0,
        "happy": (0.6 + 0.8 + 1.0) / 3,
        "sad": 0.0,
        "worried": 0.0,
        "surprise": 0.2 / 3,
    }
    description = "A broad smile and a lively voice while sharing good news."
    assert out.keys() == {
        "clip", "media", "clues", "transcript", "description", "llm_choice", "fusion",
        "labels", "prediction", "metrics", "flags",
    }  # fmt: skip
    assert out["clip"] == clip
    assert out["media"] == {
        "duration": 2.0, "sample_rate": 16000, "has_audio": True, "has_video": True,
        "n_frames": 4, "flags": [], "error": None,
    }  # fmt: skip
    # Parallel tool writes are applied in a deterministic (node-name) order.
    assert out["clues"] == [ACOUSTIC_CLUE, lexical, VISUAL_CLUE]
    assert out["transcript"] == "I passed the exam!"
    assert out["description"] == description
    assert out["llm_choice"] == "happy"
    assert out["fusion"]["discrete"] == "happy"
    assert out["fusion"]["source"] == "late"
    assert out["fusion"]["inputs"] == ["acoustic", "visual", "llm"]
    assert out["fusion"]["probs"] == pytest.approx(probs)
    assert out["labels"] == ["happy", "excited"]
    assert out["prediction"] == Prediction(
        clip_id="c1",
        discrete="happy",
        probs=out["fusion"]["probs"],
        openset=["happy", "excited"],
        description=description,
        source="late",
        flags=[],
    )
    assert out["metrics"] == {"discrete_correct": True, "ov_accuracy": 0.5, "ov_recall": 0.5}
    assert out["flags"] == []

    nodes = step_nodes(store, "c1")
    assert nodes[0] == "load_media"
    assert sorted(nodes[1:4]) == ["acoustic", "lexical", "visual"]
    assert nodes[4] == "reasoning"
    assert sorted(nodes[5:7]) == ["fusion", "labeler"]
    assert nodes[7:] == ["answer", "evaluator"]
    steps = {s.node: s for s in store.steps("r1", "c1")}
    assert steps["reasoning"].raw_output == REASONING_REPLY
    assert steps["reasoning"].model_id == "GenericFakeChatModel"
    assert steps["reasoning"].prompt[0]["role"] == "system"
    assert 'Words (en): "I passed the exam!"' in steps["reasoning"].prompt[1]["content"]
    assert steps["reasoning"].parsed_output["choice"] == "happy"
    assert steps["labeler"].raw_output == LABELER_REPLY
    assert steps["labeler"].parsed_output == {
        "labels": ["happy", "excited"],
        "flags": [],
        "dropped": [],
    }
    assert steps["acoustic"].model_id == "prosody-v1"
    assert steps["acoustic"].parsed_output["probs"] == {"happy": 0.6, "neutral": 0.4}
    assert steps["fusion"].inputs["llm_choice"] == "happy"
    # The evaluator names the grouper it scored with (none given: exact match, "identity").
    assert steps["evaluator"].parsed_output == {**out["metrics"], "grouper": {"name": "identity"}}
    assert steps["evaluator"].model_id == "identity"
    assert all(s.error is None and s.latency_s >= 0 for s in steps.values())


def test_ov_track_skips_fusion(tmp_path: Path, clip: Clip) -> None:
    store = TraceStore(tmp_path / "trace.sqlite")
    graph = compiled(fixed_tools(), fakes(), track="ov", decoder=decoder(), trace=store)
    out = run(graph, clip)
    assert "fusion" not in out
    assert out["prediction"].discrete is None
    assert out["prediction"].openset == ["happy", "excited"]
    assert out["metrics"] == {"ov_accuracy": 0.5, "ov_recall": 0.5}
    assert "fusion" not in step_nodes(store, "c1")


def test_semi_track_skips_the_labeler(tmp_path: Path, clip: Clip) -> None:
    store = TraceStore(tmp_path / "trace.sqlite")
    models = fakes()
    graph = compiled(fixed_tools(), models, track="semi", decoder=decoder(), trace=store)
    out = run(graph, clip)
    assert out["prediction"].discrete == "happy"
    assert out["prediction"].openset == []
    assert out["metrics"] == {"discrete_correct": True}
    assert "labeler" not in step_nodes(store, "c1")


def test_no_ground_truth_means_no_evaluator(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "trace.sqlite")
    graph = compiled(fixed_tools(), fakes(), decoder=decoder(), trace=store)
    out = run(graph, make_clip("plain"))
    assert "metrics" not in out
    assert step_nodes(store, "plain")[-1] == "answer"


def test_missing_video_routes_around_the_visual_tool(tmp_path: Path, clip: Clip) -> None:
    store = TraceStore(tmp_path / "trace.sqlite")
    tools = fixed_tools()
    graph = compiled(tools, fakes(), decoder=decoder(video=False), trace=store)
    out = run(graph, clip)
    assert tools.visual.calls == []
    visual = [c for c in out["clues"] if c.modality is Modality.VISUAL]
    assert visual == [Clue.unavailable(Modality.VISUAL, "load_media", "no video")]
    assert "visual" not in step_nodes(store, "c1")
    prompt = store.steps("r1", "c1")[3].prompt  # load_media, acoustic, lexical, reasoning
    assert "\nFace and body: not available for this clip (no video);" in prompt[1]["content"]
    assert out["fusion"]["inputs"] == ["acoustic", "llm"]


def test_text_only_clip_runs_on_the_subtitle(tmp_path: Path) -> None:
    graph = compiled(fixed_tools(), fakes(), trace=TraceStore(tmp_path / "t.sqlite"))
    out = run(graph, Clip(id="t1", subtitle="so glad"))
    assert out["media"]["flags"] == ["no_media_file"]
    available = [c.modality for c in out["clues"] if c.available]
    assert available == [Modality.LEXICAL]


def test_a_clip_with_nothing_usable_fails_with_a_clear_error(tmp_path: Path) -> None:
    graph = compiled(fixed_tools(), fakes(), trace=TraceStore(tmp_path / "t.sqlite"))
    with pytest.raises(Exception, match="clip empty: no usable audio, video or subtitle"):
        run(graph, Clip(id="empty"))


def test_a_crashing_tool_becomes_an_unavailable_clue(tmp_path: Path, clip: Clip) -> None:
    store = TraceStore(tmp_path / "trace.sqlite")
    tools = fixed_tools(acoustic=FixedTool(Modality.ACOUSTIC, error=RuntimeError("CUDA OOM")))
    graph = compiled(tools, fakes(), decoder=decoder(), trace=store)
    out = run(graph, clip)
    acoustic = next(c for c in out["clues"] if c.modality is Modality.ACOUSTIC)
    assert (acoustic.available, acoustic.error) == (False, "RuntimeError: CUDA OOM")
    assert "acoustic:unavailable" in out["prediction"].flags
    assert out["prediction"].discrete == "happy"
    step = next(s for s in store.steps("r1", "c1") if s.node == "acoustic")
    assert step.error == "RuntimeError: CUDA OOM"


def _saved_fusion_model(folder: Path) -> Path:
    """A real attention-fusion directory (random weights) over encoders enc-a (4-d), enc-v (3-d)."""
    import torch
    from safetensors.torch import save_file

    from meragent.tools.fusion_model import (
        WEIGHTS_FILE,
        BranchConfig,
        FusionModelConfig,
        expected_shapes,
    )

    config = FusionModelConfig(
        model="attention",
        branches=[
            BranchConfig(name="acoustic", encoders=["enc-a"], dim=4),
            BranchConfig(name="visual", encoders=["enc-v"], dim=3),
        ],
        hidden=8, dropout=0.0, lr=1e-3, weight_decay=0.0, batch_size=4, epochs=1, folds=2, seed=0,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    params = {
        name: torch.randn(shape, generator=generator)
        for name, shape in expected_shapes(config).items()
    }
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config.model_dump_json(), encoding="utf-8")
    save_file(params, str(folder / WEIGHTS_FILE))
    return folder


def test_trained_fusion_answers_six_class_tracks_without_an_llm(tmp_path: Path, clip: Clip) -> None:
    from meragent.tools.feature_cache import FeatureCache
    from meragent.tools.fusion_model import load_fusion_model

    head = load_fusion_model(_saved_fusion_model(tmp_path / "fusion"))
    cache = FeatureCache(tmp_path / "features")
    acoustic_ref = cache.save("enc-a", "c1", np.arange(4, dtype=np.float32))
    cache.save("enc-v", "c1", np.ones(3, dtype=np.float32))  # only in the cache, no clue ref
    with_feature = ACOUSTIC_CLUE.model_copy(update={"feature_ref": str(acoustic_ref)})
    tools = fixed_tools(acoustic=FixedTool(Modality.ACOUSTIC, with_feature))
    store = TraceStore(tmp_path / "trace.sqlite")
    graph = compiled(
        tools,
        fakes(),
        track="semi",
        decoder=decoder(),
        trace=store,
        fusion_model=head,
        features_dir=tmp_path / "features",
    )
    out = run(graph, clip)
    expected = head.predict({"enc-a": np.arange(4, dtype=np.float32), "enc-v": np.ones(3)})
    fusion = out["fusion"]
    assert fusion["source"] == "attention"
    assert fusion["inputs"] == ["enc-a", "enc-v"]
    assert fusion["probs"] == pytest.approx(expected.probs)
    assert fusion["attention"] == pytest.approx(expected.attention)
    assert set(fusion["attention"]) == {"acoustic", "visual"}
    assert out["prediction"].discrete == expected.discrete
    assert "reasoning" not in step_nodes(store, "c1")  # no LLM on a six-class track
    assert next(s for s in store.steps("r1", "c1") if s.node == "fusion").model_id == (
        "fusion:fusion"
    )


def test_describers_run_after_the_tools_and_feed_the_reasoning(tmp_path: Path, clip: Clip) -> None:
    class Describer:
        name = "audio-llm"
        thread_safe = True

        def __init__(self) -> None:
            self.subtitles: list[str] = []

        def describe(self, clip: Clip, media: Any, subtitle: str) -> Clue:
            self.subtitles.append(subtitle)
            return Clue(modality=Modality.ACOUSTIC, source=self.name, text="She sounds elated.")

    describer = Describer()
    tools = fixed_tools()
    tools.audio_describer = describer
    store = TraceStore(tmp_path / "trace.sqlite")
    graph = compiled(tools, fakes(), decoder=decoder(), trace=store)
    out = run(graph, clip)
    assert describer.subtitles == ["I passed the exam!"]  # the lexical node's transcript
    nodes = step_nodes(store, "c1")
    assert nodes.index("audio_llm") > max(nodes.index(n) for n in ("acoustic", "lexical"))
    assert "video_llm" not in nodes
    prompt = next(s for s in store.steps("r1", "c1") if s.node == "reasoning").prompt
    assert "Voice (audio-llm): She sounds elated." in prompt[1]["content"]
    assert "Voice (prosody): raised pitch" in prompt[1]["content"]
    assert len(out["clues"]) == 4


def test_a_lora_labeler_gets_the_prompt_it_was_tuned_on(tmp_path: Path, clip: Clip) -> None:
    from meragent.config import RoleConfig
    from meragent.graphs.runtime import labeler_few_shot

    assert labeler_few_shot(RoleConfig(backend="local", model="m")) is True
    assert labeler_few_shot(RoleConfig(backend="local", model="m", adapter="/lora")) is False
    store = TraceStore(tmp_path / "trace.sqlite")
    graph = compiled(fixed_tools(), fakes(), decoder=decoder(), trace=store, few_shot=False)
    run(graph, clip)
    prompt = next(s for s in store.steps("r1", "c1") if s.node == "labeler").prompt
    assert [m["role"] for m in prompt] == ["system", "user"]


def test_invoking_without_a_context_says_what_is_missing(clip: Clip) -> None:
    with pytest.raises(TypeError, match=r"invoked with context=GraphContext\(...\), not NoneType"):
        build_graph("ov").invoke({"run_id": "r1", "clip": clip})


def test_one_compiled_graph_serves_contexts_with_different_models(tmp_path: Path) -> None:
    # What Ray does with one LLM server per GPU: one graph, a context per server.
    graph = build_graph("ov")
    replies = {}
    for name in ("first", "second"):
        store = TraceStore(tmp_path / f"{name}.sqlite")
        models = fakes(labeler=[f"['{name}']"])
        context = graph_context(fixed_tools(), models, decoder=decoder(), trace=store)
        replies[name] = run((graph, context), make_clip(name))["labels"]
        assert step_nodes(store, name)[0] == "load_media"  # each context's own trace sink
    assert replies == {"first": ["first"], "second": ["second"]}
