"""metrics.json scores open-set labels with the profile's grouper, the same as ``meragent eval ov``.

The per-clip evaluator node and ``metrics.json`` use the grouper the profile names, say which
(with its tau), and equal ``meragent eval ov`` run on the run's ``openset.csv`` against the
manifest: exactly, failed clips included (a missing prediction on both sides). The fast test uses
the ``cached`` grouper; the slow one the offline profile's ``embedding`` grouper (bundled MiniLM).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from graph_helpers import write_manifest
from meragent_fakes import ScriptedChatModel, fake_run_deps, scripted_reply
from typer.testing import CliRunner

from meragent.agents.chat import CallPolicy, RoleChat
from meragent.cli import app
from meragent.config import Settings, load_settings
from meragent.graphs.batch import BatchOptions, run_batch
from meragent.graphs.runtime import RunDeps, profile_grouper
from meragent.graphs.trace import read_trace
from meragent.schema import EMOTIONS

runner = CliRunner()
N_CLIPS = 6


def _runtime_with_profile_grouper(settings: Settings) -> RunDeps:
    """Fake tools and LLMs (clip_002's reasoning server is down), the profile's real grouper."""
    runtime = fake_run_deps()

    def reply(messages: Any) -> str:
        if "DOWN" in str(messages[-1].content):
            raise ConnectionError("connection refused")
        return scripted_reply(messages)

    model = ScriptedChatModel(reply=reply, model_id="scripted-reasoning")
    policy = CallPolicy(max_retries=0, backoff_s=0.0)
    runtime.chat_models["reasoning"] = RoleChat(
        "reasoning", model, policy=policy, tally=runtime.tally
    )
    runtime.grouper = profile_grouper(settings)
    return runtime


def _run(tmp_path: Path, settings: Settings) -> tuple[Path, Path, dict[str, Any]]:
    manifest = write_manifest(tmp_path / "data", N_CLIPS, subtitles={2: "DOWN"})
    runtime = _runtime_with_profile_grouper(settings)
    summary = run_batch(settings, manifest, "m", BatchOptions(progress=False), runtime=runtime)
    assert (summary.n_ok, summary.n_failed) == (N_CLIPS - 1, 1)
    run_dir = settings.runs_dir / "m"
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return manifest, run_dir, metrics


def _eval_ov(manifest: Path, run_dir: Path, *extra: str) -> dict[str, Any]:
    args = ["eval", "ov", "--gt", str(manifest), "--pred", str(run_dir / "openset.csv"), "--json"]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 1, result.output  # clip_002 failed: one missing prediction
    return dict(json.loads(result.stdout))


def _groups_file(path: Path) -> Path:
    """Per-clip groups that make the fake labeler's 'tense' a synonym of the true emotion."""
    groups = {f"clip_{i:03d}": [[EMOTIONS[i % 6], "tense"]] for i in range(N_CLIPS)}
    path.write_text(json.dumps(groups), encoding="utf-8")
    return path


def test_metrics_json_uses_the_profile_grouper_and_equals_eval_ov(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups = _groups_file(tmp_path / "groups.json")
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MERAGENT_MODELS__GROUPER__BACKEND", "cached")
    monkeypatch.setenv("MERAGENT_MODELS__GROUPER__MODEL", str(groups))
    settings = load_settings()
    manifest, run_dir, metrics = _run(tmp_path, settings)

    ov = metrics["ov"]
    assert ov["grouping"] == "cached"
    assert ov["grouper"] == {"name": "cached", "path": str(groups)}
    assert (ov["n_samples"], ov["n_missing_predictions"]) == (N_CLIPS, 1)
    scored = {k: v for k, v in ov.items() if k != "grouper"}
    assert scored == _eval_ov(manifest, run_dir, "--grouping", "cached", "--groups", str(groups))
    assert scored == _eval_ov(manifest, run_dir)  # eval's default: the same profile grouper
    # Every answered clip has 'tense', a synonym of its truth here: grouping changed the score.
    assert scored != _eval_ov(manifest, run_dir, "--grouping", "identity")
    assert ov["recall"] == pytest.approx((N_CLIPS - 1) / N_CLIPS)

    with read_trace(run_dir) as store:
        step = next(s for s in store.steps("m", "clip_000") if s.node == "evaluator")
    assert step.model_id == f"cached(path={groups})"
    assert step.parsed_output["grouper"] == {"name": "cached", "path": str(groups)}
    assert step.parsed_output["ov_recall"] == 1.0


@pytest.mark.slow
def test_offline_embedding_grouper_scores_metrics_json_like_eval_ov(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meragent.eval.embedding_grouper import DEFAULT_TAU

    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    settings = load_settings(profile="offline")
    assert settings.role("grouper").backend == "embedding"
    manifest, run_dir, metrics = _run(tmp_path, settings)

    ov = metrics["ov"]
    assert ov["grouping"] == "embedding"
    assert ov["grouper"] == {
        "name": "embedding",
        "encoder": "bundled:minilm",
        "tau": DEFAULT_TAU,
        "scope": "sample",
        "word_forms": None,
    }
    scored = {k: v for k, v in ov.items() if k != "grouper"}
    assert scored == _eval_ov(manifest, run_dir, "--grouping", "embedding")
    assert scored == _eval_ov(manifest, run_dir, "--profile", "offline")
    with read_trace(run_dir) as store:
        step = next(s for s in store.steps("m", "clip_000") if s.node == "evaluator")
    assert step.model_id == f"embedding(tau={DEFAULT_TAU}, scope=sample)"
