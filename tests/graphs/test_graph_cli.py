"""``meragent run / batch / demo`` and ``meragent trace`` through the real CLI, on fakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from graph_helpers import write_manifest
from meragent_fakes import write_fake_profile
from typer.testing import CliRunner

from meragent.cli import app
from meragent.schema import EMOTIONS

runner = CliRunner()


@pytest.fixture(autouse=True)
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    # The doubles, chosen explicitly by a profile (tests/doubles is on sys.path via conftest).
    monkeypatch.setenv("MERAGENT_PROFILE", str(write_fake_profile(tmp_path / "fake.toml")))
    return tmp_path / "home"


def test_pipeline_commands_are_on_the_root_app() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "batch", "demo", "trace"):
        assert command in result.output


def test_run_one_manifest_row_as_json(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "data", 3)
    result = runner.invoke(app, ["run", f"{manifest}#clip_001", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["clip"] == "clip_001"
    assert payload["discrete"] in EMOTIONS
    assert isinstance(payload["openset"], list)
    assert [c["modality"] for c in payload["clues"]] == ["acoustic", "lexical", "visual"]
    assert payload["trace"]["run"] == "single"
    by_row = runner.invoke(app, ["run", f"{manifest}#2", "--json"])
    assert json.loads(by_row.output)["clip"] == "clip_002"
    table = runner.invoke(app, ["run", f"{manifest}#clip_000", "--track", "ov"])
    assert table.exit_code == 0, table.output
    assert "labels" in table.output and "meragent trace show single clip_000" in table.output


def test_run_errors_are_one_line(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "data", 3)
    many = runner.invoke(app, ["run", str(manifest)])
    assert many.exit_code == 2
    assert "has 3 clips; name one as" in many.output
    unknown = runner.invoke(app, ["run", f"{manifest}#nope"])
    assert unknown.exit_code == 2 and "no clip 'nope'" in unknown.output
    track = runner.invoke(app, ["run", f"{manifest}#0", "--track", "best"])
    assert track.exit_code == 2 and "Invalid value for '--track'" in track.output
    assert "Traceback" not in many.output + unknown.output + track.output


def test_batch_resume_and_trace_commands(tmp_path: Path, fake_home: Path) -> None:
    manifest = write_manifest(tmp_path / "data", 4, subtitles={2: "<script>alert(1)</script>"})
    first = runner.invoke(app, ["batch", str(manifest), "--run", "cli", "--concurrency", "2"])
    assert first.exit_code == 0, first.output
    assert "run cli: 4 ok, 0 degraded, 0 failed" in first.output
    run_dir = fake_home / "runs" / "cli"
    assert (run_dir / "discrete.csv").read_text().splitlines()[0] == "name,discrete"

    again = runner.invoke(app, ["batch", str(manifest), "--run", "cli"])
    assert again.exit_code == 2 and "pass --resume" in again.output
    resumed = runner.invoke(app, ["batch", str(manifest), "--run", "cli", "--resume"])
    assert resumed.exit_code == 0 and "0 ok, 0 degraded, 0 failed, 4 already done" in resumed.output

    listing = runner.invoke(app, ["trace", "list"])
    assert listing.exit_code == 0 and "cli" in listing.output and "finished" in listing.output
    shown = runner.invoke(app, ["trace", "show", "cli", "clip_001"])
    assert shown.exit_code == 0, shown.output
    for node in ("load_media", "acoustic", "reasoning", "labeler", "answer"):
        assert node in shown.output
    assert "prompt" in shown.output and "raw output" in shown.output
    missing = runner.invoke(app, ["trace", "show", "cli", "nope"])
    assert missing.exit_code == 2 and "no clip 'nope' in run 'cli'" in missing.output

    out = tmp_path / "page.html"
    exported = runner.invoke(app, ["trace", "export", "cli", "--html", str(out)])
    assert exported.exit_code == 0, exported.output
    page = out.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<h2 id=") == 4 and "<script" not in page
    assert "href='#clip-clip_003'" in page


def test_trace_of_an_unknown_run_is_a_clear_error() -> None:
    result = runner.invoke(app, ["trace", "export", "ghost", "--html", "x.html"])
    assert result.exit_code == 2
    assert "no trace store at" in result.output


def test_demo_on_fakes_makes_clips_runs_and_points_to_the_trace(fake_home: Path) -> None:
    result = runner.invoke(app, ["demo", "--clips", "2"])
    assert result.exit_code == 0, result.output
    assert "run demo: 2 ok, 0 degraded, 0 failed" in result.output
    assert "trace page:" in result.output and "meragent trace show demo CLIP" in result.output
    run_dir = fake_home / "runs" / "demo"
    assert (run_dir / "trace.html").is_file()
    assert len((run_dir / "openset.csv").read_text().splitlines()) == 3
    assert (fake_home / "demo" / "clips" / "manifest.csv").is_file()
    # A second demo reuses the clips and starts a clean run.
    again = runner.invoke(app, ["demo", "--clips", "2"])
    assert (
        again.exit_code == 0
        and "run demo: 2 ok, 0 degraded, 0 failed, 0 already done" in again.output
    )


def test_batch_encoder_batch_option_reaches_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "data", 2)
    assert (
        runner.invoke(app, ["batch", str(manifest), "--run", "e", "--encoder-batch", "0"]).exit_code
        == 2
    )
    seen: list[int | None] = []
    import meragent.graphs.batch as batch

    real = batch.run_batch

    def spy(settings: Any, source: Any, run: str, options: Any, **kwargs: Any) -> Any:
        seen.append(options.encoder_batch)
        return real(settings, source, run, options, **kwargs)

    monkeypatch.setattr(batch, "run_batch", spy)
    result = runner.invoke(app, ["batch", str(manifest), "--run", "e", "--encoder-batch", "4"])
    assert result.exit_code == 0, result.output
    assert seen == [4]
