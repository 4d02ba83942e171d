"""The batch runner on fakes: outputs, resume, locking, per-clip fault isolation, secrets."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from graph_helpers import write_manifest
from meragent_fakes import ScriptedChatModel, fake_run_deps, scripted_reply

from meragent.agents.chat import CallPolicy, RoleChat
from meragent.config import Settings, load_settings
from meragent.errors import ConfigError
from meragent.graphs.batch import BatchOptions, RunLockedError, run_batch, run_lock
from meragent.graphs.runtime import RunDeps
from meragent.graphs.trace import read_trace
from meragent.schema import EMOTIONS


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    return load_settings()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _options(**kwargs: Any) -> BatchOptions:
    return BatchOptions(progress=False, **kwargs)


def _with_reasoning(reply: Any, *, retries: int = 2) -> RunDeps:
    runtime = fake_run_deps()
    model = ScriptedChatModel(reply=reply, model_id="flaky")
    policy = CallPolicy(max_retries=retries, backoff_s=0.0)
    runtime.chat_models["reasoning"] = RoleChat(
        "reasoning", model, policy=policy, tally=runtime.tally
    )
    return runtime


def test_batch_writes_submission_files_results_and_errors(
    tmp_path: Path, settings: Settings
) -> None:
    manifest = write_manifest(tmp_path / "data", 12, bad_rows=1)
    summary = run_batch(settings, manifest, "b1", _options(concurrency=4), runtime=fake_run_deps())
    assert (summary.n_clips, summary.n_ok, summary.n_failed, summary.n_row_errors) == (12, 12, 0, 1)
    run_dir = settings.runs_dir / "b1"
    names = [f"clip_{i:03d}" for i in range(12)]

    discrete = _rows(run_dir / "discrete.csv")
    assert list(discrete[0]) == ["name", "discrete"]
    assert [r["name"] for r in discrete] == names
    assert all(r["discrete"] in EMOTIONS for r in discrete)
    openset = _rows(run_dir / "openset.csv")
    assert list(openset[0]) == ["name", "openset"]
    assert [r["name"] for r in openset] == names
    assert all(isinstance(ast.literal_eval(r["openset"]), list) for r in openset)

    errors = _rows(run_dir / "errors.csv")
    assert [(e["name"], e["stage"]) for e in errors] == [("missing_0", "manifest")]
    assert "file not found" in errors[0]["reason"]

    frame = pd.read_parquet(run_dir / "results.parquet")
    assert frame["name"].tolist() == names
    for column in ("discrete", "openset", "description", "prob_happy", "clues_json", "flags"):
        assert column in frame.columns
    assert frame["gt_discrete"].tolist() == [EMOTIONS[i % 6] for i in range(12)]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["six_class"]["n_samples"] == 12
    assert metrics["ov"]["n_samples"] == 12

    with read_trace(run_dir) as store:
        run = store.get_run("b1")
        assert run is not None and run.status == "finished" and run.n_ok == 12
        assert run.usage is not None and run.usage["reasoning"]["calls"] == 12
        assert store.step_count("b1") == 12 * 9  # load_media, 3 tools, reasoning, fusion,
        #                                          labeler, answer, evaluator
    with read_trace(run_dir) as store:
        assert {s.node for s in store.steps("b1", "clip_000")} >= {"reasoning", "labeler"}
    checkpoints = run_dir / "checkpoints.sqlite"
    import sqlite3

    with sqlite3.connect(checkpoints) as conn:
        assert conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0


def test_ov_track_writes_only_the_openset_csv(tmp_path: Path, settings: Settings) -> None:
    manifest = write_manifest(tmp_path / "data", 3)
    run_batch(settings, manifest, "ov1", _options(track="ov"), runtime=fake_run_deps())
    run_dir = settings.runs_dir / "ov1"
    assert not (run_dir / "discrete.csv").exists()
    assert len(_rows(run_dir / "openset.csv")) == 3
    assert "six_class" not in json.loads((run_dir / "metrics.json").read_text())


def test_resume_skips_finished_clips_and_each_clip_appears_once(
    tmp_path: Path, settings: Settings
) -> None:
    manifest = write_manifest(tmp_path / "data", 8)
    first = run_batch(settings, manifest, "r", _options(limit=3), runtime=fake_run_deps())
    assert first.n_ok == 3
    with pytest.raises(ConfigError, match=r"already has 3 clip results .* pass --resume"):
        run_batch(settings, manifest, "r", _options(), runtime=fake_run_deps())
    runtime = fake_run_deps()
    second = run_batch(settings, manifest, "r", _options(resume=True), runtime=runtime)
    assert (second.n_skipped, second.n_ok) == (3, 5)
    reasoning = runtime.chat_models["reasoning"]
    assert reasoning is not None and reasoning.model.calls == 5  # type: ignore[attr-defined]
    names = [r["name"] for r in _rows(settings.runs_dir / "r" / "discrete.csv")]
    assert names == [f"clip_{i:03d}" for i in range(8)]


def test_resume_with_another_track_is_refused(tmp_path: Path, settings: Settings) -> None:
    manifest = write_manifest(tmp_path / "data", 2)
    run_batch(settings, manifest, "t", _options(track="ov"), runtime=fake_run_deps())
    with pytest.raises(ConfigError, match="started with --track ov"):
        run_batch(settings, manifest, "t", _options(track="semi", resume=True))


def test_a_second_batch_with_the_same_name_is_refused(tmp_path: Path, settings: Settings) -> None:
    manifest = write_manifest(tmp_path / "data", 2)
    run_dir = settings.runs_dir / "busy"
    with run_lock(run_dir, "busy"), pytest.raises(RunLockedError) as caught:
        run_batch(settings, manifest, "busy", _options(), runtime=fake_run_deps())
    assert "run 'busy' is already running (pid " in str(caught.value)
    assert "choose another --run name" in str(caught.value)
    # Once the holder is gone the name is free again.
    assert run_batch(settings, manifest, "busy", _options(), runtime=fake_run_deps()).n_ok == 2


def test_llm_server_down_for_some_clips_fails_only_those(
    tmp_path: Path, settings: Settings
) -> None:
    manifest = write_manifest(tmp_path / "data", 6, subtitles={1: "DOWN", 4: "DOWN"})

    def reply(messages: Any) -> str:
        if "DOWN" in str(messages[-1].content):
            raise ConnectionError("connection refused")
        return scripted_reply(messages)

    summary = run_batch(
        settings, manifest, "down", _options(concurrency=3), runtime=_with_reasoning(reply)
    )
    assert (summary.n_ok, summary.n_failed) == (4, 2)
    run_dir = settings.runs_dir / "down"
    errors = _rows(run_dir / "errors.csv")
    assert [(e["name"], e["stage"]) for e in errors] == [("clip_001", "llm"), ("clip_004", "llm")]
    assert "failed after 3 attempt(s): ConnectionError: connection refused" in errors[0]["reason"]
    with read_trace(run_dir) as store:
        step = next(s for s in store.steps("down", "clip_001") if s.node == "reasoning")
        assert step.retries == 2 and "ConnectionError" in (step.error or "")
    assert len(_rows(run_dir / "discrete.csv")) == 4

    # The server is back: resume redoes only the failed clips.
    healed = run_batch(settings, manifest, "down", _options(resume=True), runtime=fake_run_deps())
    assert (healed.n_skipped, healed.n_ok, healed.n_failed) == (4, 2, 0)
    assert _rows(run_dir / "errors.csv") == []
    assert len(_rows(run_dir / "discrete.csv")) == 6


def test_an_llm_that_times_out_becomes_a_per_clip_error(tmp_path: Path, settings: Settings) -> None:
    # A real server on 127.0.0.1 that sleeps on one clip's request; the client's own timeout
    # (ChatOpenAI(timeout=...)) ends each attempt, no thread is left waiting for the answer.
    from http_double import scripted_server

    from meragent.agents.chat import make_chat_model
    from meragent.config import RoleConfig

    manifest = write_manifest(tmp_path / "data", 2, subtitles={0: "SLOW"})
    with scripted_server("slow_if:SLOW:5") as server:
        llm = load_settings(llm_base_url=server.url, llm_timeout_s=0.3)
        model = make_chat_model(RoleConfig(backend="openai", model="m"), llm)
        runtime = fake_run_deps()
        runtime.chat_models["reasoning"] = RoleChat(
            "reasoning", model, policy=CallPolicy(max_retries=1, backoff_s=0.0), tally=runtime.tally
        )
        summary = run_batch(settings, manifest, "slow", _options(track="semi"), runtime=runtime)
        slow = [r for r in server.requests if "SLOW" in json.dumps(r["body"])]
    assert (summary.n_ok, summary.n_failed) == (1, 1)
    assert summary.failures[0].clip_id == "clip_000"
    assert "timed out" in summary.failures[0].reason
    assert len(slow) == 2  # one retry, then the clip fails
    assert summary.usage["reasoning"]["retries"] == 1


def test_garbage_llm_output_is_answered_best_effort_and_kept_raw(
    tmp_path: Path, settings: Settings
) -> None:
    manifest = write_manifest(tmp_path / "data", 1)
    runtime = _with_reasoning(lambda _: "%%%% lorem ipsum ####")
    run_batch(settings, manifest, "junk", _options(), runtime=runtime)
    with read_trace(settings.runs_dir / "junk") as store:
        record = store.results("junk")[0]
        step = next(s for s in store.steps("junk", "clip_000") if s.node == "reasoning")
    assert record.status == "ok"
    assert record.discrete in EMOTIONS  # the tools' scores still decide
    assert step.raw_output == "%%%% lorem ipsum ####"
    assert step.parsed_output["flags"] == ["no_answer_line", "no_six_class_choice"]
    flags = (record.result or {})["prediction"]["flags"]
    assert "reasoning:no_six_class_choice" in flags


def test_secrets_never_reach_the_trace_store(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MERAGENT_LLM_API_KEY", "sk-live-0123456789")
    keyed = load_settings()
    manifest = write_manifest(tmp_path / "data", 1)
    runtime = _with_reasoning(lambda _: "my key is sk-live-0123456789\nAnswer: sad")
    runtime.secrets = ["sk-live-0123456789"]
    run_batch(keyed, manifest, "sec", _options(), runtime=runtime)
    run_dir = keyed.runs_dir / "sec"
    stored = b"".join(p.read_bytes() for p in run_dir.iterdir() if p.is_file())
    assert b"sk-live-0123456789" not in stored
    with read_trace(run_dir) as store:
        run = store.get_run("sec")
        assert run is not None and run.config is not None
        assert run.config["llm_api_key"] == "********"
        step = next(s for s in store.steps("sec", "clip_000") if s.node == "reasoning")
        assert step.raw_output == "my key is ********\nAnswer: sad"
