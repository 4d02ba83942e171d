"""A run's lifecycle on fakes (issue 11): degraded clips, exit codes, resume rules, the final write.

The runtime is passed explicitly (``runtime=``); CLI tests hand the same runtime to the command
by replacing ``load_run_deps`` where the command looks it up, so no environment switch is needed.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from graph_helpers import write_manifest
from meragent_fakes import ScriptedChatModel, fake_decoder, fake_run_deps, scripted_reply
from typer.testing import CliRunner

from meragent.agents.chat import CallPolicy, RoleChat
from meragent.cli import app
from meragent.config import Settings, load_settings
from meragent.data.media_types import DecodedMedia
from meragent.errors import ConfigError
from meragent.graphs.batch import BatchOptions, run_batch
from meragent.graphs.media_cache import default_decoder
from meragent.graphs.runtime import RunDeps
from meragent.graphs.trace import read_trace
from meragent.schema import Clip

runner = CliRunner()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    return load_settings()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _options(**kwargs: Any) -> BatchOptions:
    return BatchOptions(progress=False, **kwargs)


def real_decoder_for_empty_files() -> Callable[[Clip], DecodedMedia]:
    """The project's real decoder on empty files (it raises MediaError), the fake one otherwise."""
    real, fake = default_decoder(), fake_decoder()

    def decode(clip: Clip) -> DecodedMedia:
        assert clip.video is not None
        return real(clip) if clip.video.stat().st_size == 0 else fake(clip)

    return decode


def corrupt_video_runtime() -> RunDeps:
    runtime = fake_run_deps()
    runtime.decoder = real_decoder_for_empty_files()
    return runtime


def reasoning_down_runtime(marker: str = "") -> RunDeps:
    """Fake runtime whose reasoning server refuses every clip (or those whose words hold marker)."""
    runtime = fake_run_deps()

    def reply(messages: Any) -> str:
        if marker in str(messages[-1].content):
            raise ConnectionError("connection refused")
        return scripted_reply(messages)

    model = ScriptedChatModel(reply=reply, model_id="down")
    policy = CallPolicy(max_retries=0, backoff_s=0.0)
    runtime.chat_models["reasoning"] = RoleChat(
        "reasoning", model, policy=policy, tally=runtime.tally
    )
    return runtime


def use_runtime(monkeypatch: pytest.MonkeyPatch, make: Callable[[], RunDeps]) -> None:
    """Make the CLI commands run on ``make()`` (they look the runtime up by ``load_run_deps``)."""
    monkeypatch.setattr("meragent.graphs.batch.load_run_deps", lambda settings, track: make())
    monkeypatch.setattr("meragent.graphs.pipeline.load_run_deps", lambda settings, track: make())
    monkeypatch.setattr("meragent.graphs.batch.profile_grouper", lambda settings: None)


# --------------------------------------------------------------------------- defect 4: degraded


def test_an_empty_video_with_a_subtitle_is_answered_but_degraded(
    tmp_path: Path, settings: Settings
) -> None:
    manifest = write_manifest(tmp_path / "data", 3)
    (tmp_path / "data" / "video" / "clip_001.mp4").write_bytes(b"")  # zero bytes
    summary = run_batch(settings, manifest, "deg", _options(), runtime=corrupt_video_runtime())
    assert (summary.n_ok, summary.n_degraded, summary.n_failed) == (2, 1, 0)
    assert summary.exit_code == 1
    assert [(f.clip_id, f.stage, f.severity) for f in summary.failures] == [
        ("clip_001", "media", "degraded")
    ]
    run_dir = settings.runs_dir / "deg"
    # MER wants an answer for every clip: it is in the submission files ...
    assert [r["name"] for r in _rows(run_dir / "discrete.csv")] == [
        "clip_000",
        "clip_001",
        "clip_002",
    ]
    assert len(_rows(run_dir / "openset.csv")) == 3
    # ... and reported, with a severity that separates it from a failure.
    errors = _rows(run_dir / "errors.csv")
    assert list(errors[0]) == ["name", "stage", "severity", "reason"]
    assert [(e["name"], e["stage"], e["severity"]) for e in errors] == [
        ("clip_001", "media", "degraded")
    ]
    assert "media not decoded, answered from the subtitle" in errors[0]["reason"]
    assert "file is empty (0 bytes)" in errors[0]["reason"]
    frame = pd.read_parquet(run_dir / "results.parquet")
    assert frame["status"].tolist() == ["ok", "degraded", "ok"]
    with read_trace(run_dir) as store:
        run = store.get_run("deg")
        assert run is not None and (run.n_ok, run.n_degraded, run.n_failed) == (2, 1, 0)
    # A degraded clip has its answer: resume does not run it again.
    runtime = fake_run_deps()
    again = run_batch(settings, manifest, "deg", _options(resume=True), runtime=runtime)
    assert (again.n_skipped, again.n_done) == (3, 0)
    assert again.exit_code == 1  # the run's outputs still hold a degraded clip


def test_batch_and_trace_list_show_degraded_and_exit_1(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", 2)
    (tmp_path / "data" / "video" / "clip_000.mp4").write_bytes(b"")
    use_runtime(monkeypatch, corrupt_video_runtime)
    result = runner.invoke(app, ["batch", str(manifest), "--run", "d"])
    assert result.exit_code == 1, result.output
    assert "run d: 1 ok, 1 degraded, 0 failed" in result.output
    assert "degraded clip_000 [media]: media not decoded" in result.output
    listing = runner.invoke(app, ["trace", "list"], terminal_width=200)
    assert listing.exit_code == 0, listing.output
    header = next(line for line in listing.output.splitlines() if "degraded" in line)
    row = next(line for line in listing.output.splitlines() if line.strip("│ ").startswith("d "))
    cells = [c.strip() for c in re.split(r"[│┃]", row) if c.strip()]
    names = [c.strip() for c in re.split(r"[│┃]", header) if c.strip()]
    assert dict(zip(names, cells, strict=True))["degraded"] == "1"


def test_run_of_a_degraded_clip_answers_and_exits_1(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", 2)
    (tmp_path / "data" / "video" / "clip_001.mp4").write_bytes(b"")
    use_runtime(monkeypatch, corrupt_video_runtime)
    result = runner.invoke(app, ["run", f"{manifest}#clip_001", "--json"])
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["clip"] == "clip_001"  # answered from the subtitle
    assert "degraded clip_001 [media]: media not decoded" in result.stderr


def test_commit_of_a_ray_row_decides_degraded_like_in_process(settings: Settings) -> None:
    from meragent.graphs.ray_executor import commit_row
    from meragent.graphs.ray_stages import CLIP_ID, PAYLOAD, USAGE
    from meragent.graphs.trace import open_trace

    output = {
        "clip": {"id": "c"},
        "media": {"error": "clip 'c': file is empty (0 bytes)", "flags": ["decode_failed"]},
        "prediction": {"discrete": "sad", "openset": ["sad"], "description": "d"},
    }
    payload = {"status": "ok", "output": output, "latency_s": 0.1, "steps": []}
    row = {CLIP_ID: "c", "seq": 0, PAYLOAD: json.dumps(payload), USAGE: ""}
    with open_trace(settings.runs_dir / "ray") as store:
        outcome = commit_row(store, "ray", row)
        record = store.results("ray")[0]
    assert outcome is not None and (outcome.severity, outcome.stage) == ("degraded", "media")
    assert (record.status, record.discrete) == ("degraded", "sad")


# --------------------------------------------------------------------------- defect 6: exit codes


def test_batch_exit_codes(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", 3)
    use_runtime(monkeypatch, fake_run_deps)
    ok = runner.invoke(app, ["batch", str(manifest), "--run", "ok"])
    assert ok.exit_code == 0, ok.output

    use_runtime(monkeypatch, reasoning_down_runtime)  # every clip fails
    down = runner.invoke(app, ["batch", str(manifest), "--run", "down"])
    assert down.exit_code == 1, down.output
    assert "run down: 0 ok, 0 degraded, 3 failed" in down.output
    assert len(_rows(settings.runs_dir / "down" / "errors.csv")) == 3

    # Every manifest row unusable: the batch finishes with nothing to run, and says so.
    bad = write_manifest(tmp_path / "bad", 0, bad_rows=2)
    rows = runner.invoke(app, ["batch", str(bad), "--run", "rows"])
    assert rows.exit_code == 1, rows.output
    assert "0 ok, 0 degraded, 0 failed, 0 already done, 2 bad manifest rows" in rows.output
    errors = _rows(settings.runs_dir / "rows" / "errors.csv")
    assert [(e["name"], e["stage"], e["severity"]) for e in errors] == [
        ("missing_0", "manifest", "failed"),
        ("missing_1", "manifest", "failed"),
    ]

    usage = runner.invoke(app, ["batch", str(manifest), "--run", "u", "--track", "best"])
    assert usage.exit_code == 2 and "Invalid value for '--track'" in usage.output


def test_run_of_a_failing_clip_exits_1(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", 2)
    use_runtime(monkeypatch, reasoning_down_runtime)
    result = runner.invoke(app, ["run", f"{manifest}#clip_000"])
    assert result.exit_code == 1, result.output
    assert "clip clip_000 failed [llm]:" in result.stderr
    assert "connection refused" in result.stderr
    unknown = runner.invoke(app, ["run", f"{manifest}#nope"])
    assert unknown.exit_code == 2  # a usage error, not a failed clip


def test_eval_ov_exits_1_when_ground_truth_clips_have_no_prediction(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt.csv", tmp_path / "pred.csv"
    gt.write_text("name,openset\na,['happy']\nb,['sad']\n", encoding="utf-8")
    pred.write_text("name,openset\na,['happy']\n", encoding="utf-8")
    args = ["eval", "ov", "--gt", str(gt), "--grouping", "identity", "--json", "--pred"]
    missing = runner.invoke(app, [*args, str(pred)])
    assert missing.exit_code == 1, missing.output
    assert json.loads(missing.stdout)["n_missing_predictions"] == 1
    assert "1 ground-truth clip(s) have no prediction" in missing.stderr
    complete = runner.invoke(app, [*args, str(gt)])
    assert complete.exit_code == 0, complete.output


# --------------------------------------------------------------------------- defect 7: resume


def test_resume_without_track_or_source_takes_the_stored_ones(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", 4)
    use_runtime(monkeypatch, fake_run_deps)
    first = runner.invoke(
        app, ["batch", str(manifest), "--run", "ov", "--track", "ov", "--limit", "2"]
    )
    assert first.exit_code == 0, first.output
    # The README's command: no --track.
    resumed = runner.invoke(app, ["batch", str(manifest), "--run", "ov", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "run ov: 2 ok, 0 degraded, 0 failed, 2 already done" in resumed.output
    run_dir = settings.runs_dir / "ov"
    assert not (run_dir / "discrete.csv").exists()  # still the ov track
    assert len(_rows(run_dir / "openset.csv")) == 4
    # No SOURCE either: the run's own.
    again = runner.invoke(app, ["batch", "--run", "ov", "--resume"])
    assert again.exit_code == 0, again.output
    assert "0 ok, 0 degraded, 0 failed, 4 already done" in again.output
    other = runner.invoke(app, ["batch", "--run", "ov", "--resume", "--track", "semi"])
    assert other.exit_code == 2 and "was started with --track ov" in other.output
    nothing = runner.invoke(app, ["batch", "--run", "new"])
    assert nothing.exit_code == 2 and "give the SOURCE" in nothing.output


def test_resume_on_another_source_is_refused_unless_allowed(
    tmp_path: Path, settings: Settings
) -> None:
    first = write_manifest(tmp_path / "a", 8)
    second = write_manifest(tmp_path / "b", 5)
    run_batch(settings, first, "mix", _options(), runtime=fake_run_deps())
    with pytest.raises(ConfigError) as caught:
        run_batch(settings, second, "mix", _options(resume=True), runtime=fake_run_deps())
    message = str(caught.value)
    assert f"run 'mix' was started on {first.resolve()}, not {second.resolve()}" in message
    assert "would mix two datasets" in message and "--allow-new-source" in message
    with read_trace(settings.runs_dir / "mix") as store:
        assert len(store.results("mix")) == 8  # nothing of the other source got in
    # The same clips moved elsewhere: the user says so explicitly.
    moved = tmp_path / "moved"
    (tmp_path / "a").rename(moved)
    options = _options(resume=True, allow_new_source=True)
    summary = run_batch(settings, moved / "manifest.csv", "mix", options, runtime=fake_run_deps())
    assert (summary.n_skipped, summary.n_done) == (8, 0)


def test_a_run_is_finished_only_once_its_outputs_are_written(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meragent.graphs import session

    manifest = write_manifest(tmp_path / "data", 3)
    real = session.write_outputs
    calls: list[int] = []

    def dies_during_the_final_write(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("No space left on device")  # stands for a kill mid-write
        return real(*args, **kwargs)

    monkeypatch.setattr(session, "write_outputs", dies_during_the_final_write)
    with pytest.raises(OSError, match="No space left"):
        run_batch(settings, manifest, "w", _options(), runtime=fake_run_deps())
    run_dir = settings.runs_dir / "w"
    assert not (run_dir / "results.parquet").exists()
    with read_trace(run_dir) as store:
        run = store.get_run("w")
        assert run is not None and run.status == "interrupted" and run.n_ok == 3
    # Resume has nothing left to run but writes the outputs, and only then says finished.
    again = run_batch(settings, manifest, "w", _options(resume=True), runtime=fake_run_deps())
    assert (again.n_skipped, again.exit_code) == (3, 0)
    assert len(pd.read_parquet(run_dir / "results.parquet")) == 3
    with sqlite3.connect(run_dir / "trace.sqlite") as conn:
        assert conn.execute("SELECT status FROM run").fetchone() == ("finished",)


# --------------------------------------------------------------------------- defect 9: clips/s


def test_progress_bar_and_summary_print_the_same_clips_per_second(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", 4)
    use_runtime(monkeypatch, lambda: fake_run_deps(delay_s=0.02))
    result = runner.invoke(app, ["batch", str(manifest), "--run", "rate"], terminal_width=200)
    assert result.exit_code == 0, result.output
    bar = re.findall(r"4/4\s+([0-9.]+) clips/s", result.output)
    summary = re.search(r"\(4 clips in ([0-9.]+) s: ([0-9.]+) clips/s;", result.output)
    assert bar and summary is not None, result.output
    assert bar[-1] == summary.group(2)
    assert float(summary.group(2)) == pytest.approx(4 / float(summary.group(1)), rel=0.05)
