"""``meragent demo`` end to end with the real bundled models (FER, MiniLM, SmolLM2), offline."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from meragent.cli import app
from meragent.graphs.trace import read_trace
from meragent.schema import EMOTIONS

ALL_NODES = {
    "load_media", "acoustic", "visual", "lexical", "reasoning", "fusion", "labeler", "answer",
    "evaluator",
}  # fmt: skip


@pytest.mark.slow
def test_demo_runs_the_full_graph_offline_on_two_clips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("MERAGENT_HOME", str(home))
    monkeypatch.setenv("MERAGENT_DEVICE", "cpu")
    monkeypatch.delenv("MERAGENT_PROFILE", raising=False)  # the default profile, real models
    result = CliRunner().invoke(app, ["demo", "--clips", "2"])
    assert result.exit_code == 0, result.output
    assert "run demo: 2 ok, 0 degraded, 0 failed" in result.output

    run_dir = home / "runs" / "demo"
    with (run_dir / "discrete.csv").open(encoding="utf-8") as handle:
        discrete = list(csv.DictReader(handle))
    assert [row["name"] for row in discrete] == ["synth_000", "synth_001"]
    assert all(row["discrete"] in EMOTIONS for row in discrete)
    with (run_dir / "openset.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            labels = ast.literal_eval(row["openset"])
            assert isinstance(labels, list) and all(isinstance(x, str) for x in labels)
    assert len(pd.read_parquet(run_dir / "results.parquet")) == 2
    assert (run_dir / "trace.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")

    with read_trace(run_dir) as store:
        run = store.get_run("demo")
        assert run is not None and run.status == "finished" and run.profile == "offline"
        assert run.usage is not None
        assert run.usage["reasoning"]["calls"] == 2 and run.usage["labeler"]["calls"] == 2
        assert run.usage["reasoning"]["output_tokens"] <= 2 * 64  # the demo's token cap
        for clip in ("synth_000", "synth_001"):
            steps = {s.node: s for s in store.steps("demo", clip)}
            assert set(steps) == ALL_NODES
            assert all(s.error is None for s in steps.values()), clip
            reasoning = steps["reasoning"]
            assert reasoning.model_id == "bundled:smollm2-135m"
            assert [m["role"] for m in reasoning.prompt] == ["system", "user"]
            assert isinstance(reasoning.raw_output, str)
            assert steps["visual"].parsed_output["available"] is True
            assert steps["lexical"].parsed_output["data"]["subtitle"]
            assert set(steps["evaluator"].parsed_output) == {
                "discrete_correct", "ov_accuracy", "ov_recall", "grouper",
            }  # fmt: skip
            # The offline profile's grouper, not exact matching (issue 11, defect 10).
            assert steps["evaluator"].model_id == "embedding(tau=0.46, scope=sample)"
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["ov"]["grouping"] == "embedding" and metrics["ov"]["grouper"]["tau"] == 0.46
