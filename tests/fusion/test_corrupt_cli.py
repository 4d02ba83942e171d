"""The ``corrupt`` command (registered by the lead as ``meragent data corrupt``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import typer
from fusion_fixtures import textured_frames, tone
from typer.testing import CliRunner

from meragent.commands.corrupt_cmd import corrupt
from meragent.data.synth import write_clip, write_garbage_file


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("corrupt")(corrupt)

    @app.command("noop")
    def noop() -> None:  # a second command keeps typer from flattening the group
        """Nothing."""

    return app


def _dataset(root: Path, broken: bool = False) -> Path:
    rows = []
    for i in range(2):
        write_clip(
            root / "video" / f"c{i}.mp4",
            textured_frames(4, seed=i),
            fps=4,
            audio=tone(0.8, 300 + 100 * i),
        )
        rows.append({"name": f"c{i}", "video": f"video/c{i}.mp4", "discrete": "sad"})
    if broken:
        write_garbage_file(root / "video" / "bad.mp4")
        rows.append({"name": "bad", "video": "video/bad.mp4", "discrete": "sad"})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["name", "video", "discrete"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_corrupt_writes_videos_and_manifest(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path / "data")
    noise = tmp_path / "noise"
    write_clip(
        noise / "n.wav",
        None,
        audio=np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1,
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        _app(),
        [
            "corrupt",
            str(manifest),
            str(out),
            "--noise-dir",
            str(noise),
            "--snr",
            "6",
            "--blur",
            "2",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "corrupted 2 clips" in result.output
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [(r["name"], r["snr_db"], r["blur"], r["noise"]) for r in rows] == [
        ("c0", "6", "2", "n.wav"),
        ("c1", "6", "2", "n.wav"),
    ]
    assert all((out / r["video"]).is_file() for r in rows)
    assert (out / "corrupt.json").is_file()


def test_corrupt_exit_codes_for_bad_input(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path / "data", broken=True)
    result = CliRunner().invoke(_app(), ["corrupt", str(manifest), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "corrupted 2 clips" in result.output and "error: bad:" in result.output
    result = CliRunner().invoke(
        _app(), ["corrupt", str(manifest), str(tmp_path / "o2"), "--blur", "3"]
    )
    assert result.exit_code == 2 and "powers of two" in result.output
    result = CliRunner().invoke(
        _app(), ["corrupt", str(manifest), str(tmp_path / "o3"), "--noise-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "noise folder not found" in result.output


def test_registered_as_data_corrupt() -> None:
    from meragent.cli import app

    result = CliRunner().invoke(app, ["data", "corrupt", "--help"])
    assert result.exit_code == 0
    assert "--noise-dir" in result.output and "--snr" in result.output
