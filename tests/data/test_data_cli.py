"""``check_source`` and the ``meragent data check|synth`` commands (exit codes, output, files)."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from meragent.cli import app
from meragent.data.check import check_source
from meragent.data.synth import write_empty_file, write_manifest

runner = CliRunner()


def _bad_manifest(tmp_path: Path, synth_dataset: Path) -> Path:
    """Two good rows, a missing file, a path escape and an unknown label."""
    video = synth_dataset.parent / "video" / "synth_000.mp4"
    shutil.copyfile(video, tmp_path / "a.mp4")
    shutil.copyfile(video, tmp_path / "b.mp4")
    rows = [
        {"name": "a", "video": "a.mp4", "discrete": "happy"},
        {"name": "lost", "video": "lost.mp4"},
        {"name": "evil", "video": "../../etc/passwd"},
        {"name": "odd", "video": "b.mp4", "discrete": "bored"},
        {"name": "b", "video": "b.mp4"},
    ]
    return write_manifest(tmp_path / "m.csv", rows)


def test_check_source_counts_and_histogram(synth_dataset: Path) -> None:
    report = check_source(synth_dataset)
    assert report.ok and report.layout == "csv"
    assert report.n_clips == 4 and report.n_errors == 0
    # Sentences 0..3: happy (en), happy (zh), worried, angry.
    assert report.class_histogram == {
        "neutral": 0,
        "angry": 1,
        "happy": 2,
        "sad": 0,
        "worried": 1,
        "surprise": 0,
        "unlabeled": 0,
    }
    assert (report.n_with_video, report.n_with_subtitle, report.n_with_openset) == (4, 4, 4)
    assert (report.n_with_valence, report.n_with_audio_file) == (4, 0)


def test_check_source_reports_bad_rows_and_keeps_good_ones(
    tmp_path: Path, synth_dataset: Path
) -> None:
    report = check_source(_bad_manifest(tmp_path, synth_dataset))
    assert not report.ok
    assert report.n_clips == 2 and report.n_errors == 3
    assert report.class_histogram["happy"] == 1 and report.class_histogram["unlabeled"] == 1
    assert len(report.missing_files) == 1 and "lost.mp4" in report.missing_files[0]
    assert [e.kind for e in report.errors] == ["missing_file", "path_escape", "unknown_label"]


def test_check_probe_finds_unreadable_videos(tmp_path: Path, synth_dataset: Path) -> None:
    shutil.copyfile(synth_dataset.parent / "video" / "synth_000.mp4", tmp_path / "a.mp4")
    write_empty_file(tmp_path / "z.mp4")
    rows = [{"name": "a", "video": "a.mp4"}, {"name": "z", "video": "z.mp4"}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    assert check_source(manifest).ok  # the file exists, so without probing it looks fine
    report = check_source(manifest, probe=True)
    assert report.n_clips == 1 and report.n_probed == 2
    assert [str(e) for e in report.errors] == [
        f"clip 'z': file is empty (0 bytes) ({tmp_path / 'z.mp4'})"
    ]


def test_cli_check_exits_0_on_a_clean_source(synth_dataset: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(synth_dataset)])
    assert result.exit_code == 0, result.output
    assert "clips" in result.stdout and "happy" in result.stdout
    assert result.stderr == ""


def test_cli_check_exits_1_with_one_line_per_bad_row(tmp_path: Path, synth_dataset: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(_bad_manifest(tmp_path, synth_dataset))])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("error: m.csv, row 3, clip 'lost': video file not found")
    assert lines[1].startswith("error: m.csv, row 4, clip 'evil': path '../../etc/passwd' escapes")
    assert lines[2].startswith("error: m.csv, row 5, clip 'odd': unknown emotion label 'bored'")


def test_cli_check_exits_2_when_the_source_is_missing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(tmp_path / "none.csv")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: manifest source not found: {tmp_path / 'none.csv'}"


def test_cli_synth_writes_clips_and_a_manifest(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    result = runner.invoke(
        app, ["data", "synth", str(out), "--n", "2", "--seed", "1", "--audio", "tone"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "video").iterdir()) == ["synth_000.mp4", "synth_001.mp4"]
    assert f"manifest: {out / 'manifest.csv'}" in result.stdout
    assert runner.invoke(app, ["data", "check", str(out)]).exit_code == 0


def test_cli_synth_rejects_bad_options(tmp_path: Path) -> None:
    assert runner.invoke(app, ["data", "synth", str(tmp_path), "--n", "0"]).exit_code == 2
    assert runner.invoke(app, ["data", "synth", str(tmp_path), "--audio", "music"]).exit_code == 2


def test_cli_data_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0
    assert "check" in result.stdout and "synth" in result.stdout
