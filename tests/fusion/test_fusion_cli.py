"""``meragent fusion train / predict / pseudo-label``: exit codes, files, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fusion_fixtures import planted_clips, write_csv_manifest, write_planted_features
from typer.testing import CliRunner

from meragent.cli import app
from meragent.schema import EMOTIONS, Clip

QUICK = [
    "--folds",
    "3",
    "--search",
    "2",
    "--epochs",
    "8",
    "--threads",
    "1",
    "--hidden",
    "16",
    "--lr",
    "1e-2",
    "--device",
    "cpu",
]


@pytest.fixture()
def workspace(tmp_path: Path) -> dict[str, Path]:
    clips = planted_clips(60, with_valence=True)
    features = tmp_path / "features"
    write_planted_features(features, clips)
    return {
        "manifest": write_csv_manifest(tmp_path / "data" / "manifest.csv", clips),
        "features": features,
        "root": tmp_path,
    }


def _run(*args: str | Path) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_train_then_predict_writes_model_and_submission(workspace: dict[str, Path]) -> None:
    model = workspace["root"] / "model"
    result = _run(
        "fusion",
        "train",
        workspace["manifest"],
        "--encoders",
        "audio,text,video",
        "--out",
        model,
        "--features",
        workspace["features"],
        *QUICK,
    )
    assert result.exit_code == 0, result.output
    assert (model / "model.safetensors").is_file()
    config = json.loads((model / "config.json").read_text())
    assert config["folds"] == 3 and config["classes"] == list(EMOTIONS)
    assert config["with_valence"] is True
    search = json.loads((model / "search.json").read_text())
    assert len(search["combos"]) == 2
    assert "best: " in result.output and "WAF" in result.output

    submission = workspace["root"] / "submission.csv"
    result = _run(
        "fusion",
        "predict",
        workspace["manifest"],
        "--model",
        model,
        "--out",
        submission,
        "--features",
        workspace["features"],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(submission.open()))
    assert len(rows) == 60 and set(rows[0]) == {"name", "discrete", "valence"}
    assert {r["discrete"] for r in rows} <= set(EMOTIONS)
    assert "on 60 labelled clips: WAF" in result.output


def test_train_reports_missing_features(workspace: dict[str, Path]) -> None:
    (workspace["features"] / "text" / "clip_0003.npy").unlink()
    for encoder in ("audio", "text", "video"):
        (workspace["features"] / encoder / "clip_0004.npy").unlink(missing_ok=True)
    result = _run(
        "fusion",
        "train",
        workspace["manifest"],
        "--encoders",
        "audio,text,video",
        "--out",
        workspace["root"] / "m",
        "--features",
        workspace["features"],
        *QUICK,
    )
    # It still trains on what it has, but the exit code says that clips lacked features.
    assert result.exit_code == 1, result.output
    assert "skipped 1 clips with no features at all: clip_0004" in result.output
    assert "text: features missing for 1 clips (masked): clip_0003" in result.output
    assert "0 unusable rows, 2 clips lacking features" in result.output
    assert (workspace["root"] / "m" / "model.safetensors").is_file()


def test_fewer_clips_than_folds_exits_2(tmp_path: Path) -> None:
    clips = planted_clips(3)
    write_planted_features(tmp_path / "f", clips)
    manifest = write_csv_manifest(tmp_path / "d" / "m.csv", clips)
    result = _run(
        "fusion",
        "train",
        manifest,
        "--encoders",
        "audio",
        "--out",
        tmp_path / "o",
        "--features",
        tmp_path / "f",
        "--folds",
        "5",
    )
    assert result.exit_code == 2
    assert "error: only 3 labelled clips with features: fewer than --folds 5" in result.output


def test_dimension_mismatch_exits_2_naming_clip_and_encoder(workspace: dict[str, Path]) -> None:
    np.save(workspace["features"] / "video" / "clip_0007.npy", np.zeros(3, dtype=np.float32))
    result = _run(
        "fusion",
        "train",
        workspace["manifest"],
        "--encoders",
        "audio,video",
        "--out",
        workspace["root"] / "o",
        "--features",
        workspace["features"],
        *QUICK,
    )
    assert result.exit_code == 2
    assert "clip 'clip_0007', encoder 'video' has 3 values" in result.output
    assert "Traceback" not in result.output


def test_bad_options_exit_2(workspace: dict[str, Path]) -> None:
    base = [
        "fusion",
        "train",
        workspace["manifest"],
        "--encoders",
        "audio",
        "--out",
        workspace["root"] / "o",
        "--features",
        workspace["features"],
    ]
    result = _run(*base, "--augment", "corrupt")
    assert result.exit_code == 2 and "--augment corrupt needs --augment-features" in result.output
    result = _run(*base, "--lr", "fast")
    assert result.exit_code == 2 and "--lr 'fast'" in result.output
    result = _run(*base, "--model", "transformer")
    assert result.exit_code == 2 and "Invalid value for '--model'" in result.output


def test_augment_corrupt_adds_rows(workspace: dict[str, Path]) -> None:
    clips = planted_clips(60, with_valence=True)
    noisy = workspace["root"] / "noisy-features"
    write_planted_features(noisy, clips[:40], seed=5)
    model = workspace["root"] / "aug"
    result = _run(
        "fusion",
        "train",
        workspace["manifest"],
        "--encoders",
        "audio,text,video",
        "--out",
        model,
        "--features",
        workspace["features"],
        "--augment",
        "corrupt",
        "--augment-features",
        noisy,
        "--modality-dropout",
        "0.2",
        *QUICK,
    )
    assert result.exit_code == 0, result.output
    assert "40 augmented (corrupted-copy) rows" in result.output
    assert json.loads((model / "search.json").read_text())["n_train_rows"] == 100


def test_pseudo_label_command(tmp_path: Path) -> None:
    labelled = planted_clips(48)
    pool = [Clip(id=f"pool_{i:02d}") for i in range(30)]
    truth = {c.id: EMOTIONS[i % 6] for i, c in enumerate(pool)}
    write_planted_features(tmp_path / "f", labelled + pool, labels=truth)
    manifest = write_csv_manifest(tmp_path / "l" / "labelled.csv", labelled)
    pool_manifest = write_csv_manifest(tmp_path / "p" / "pool.csv", pool)
    test_manifest = write_csv_manifest(tmp_path / "t" / "test.csv", pool[:5])
    out = tmp_path / "semi"
    result = _run(
        "fusion",
        "pseudo-label",
        manifest,
        "--unlabeled",
        pool_manifest,
        "--test",
        test_manifest,
        "--encoders",
        "audio,text,video",
        "--out",
        out,
        "--features",
        tmp_path / "f",
        "--eta",
        "0.5",
        "--threshold",
        "happy=0.1",
        "--search",
        "1",
        *QUICK[:2],
        *QUICK[4:],
    )
    assert result.exit_code == 0, result.output
    assert (out / "model" / "model.safetensors").is_file()
    rows = list(csv.DictReader((out / "pseudo_labels.csv").open()))
    assert rows and not {r["name"] for r in rows} & {f"pool_{i:02d}" for i in range(5)}
    rounds = json.loads((out / "rounds.json").read_text())
    assert rounds[0]["thresholds"]["happy"] == 0.1
    assert "round 1: added" in result.output
    bad = _run(
        "fusion",
        "pseudo-label",
        manifest,
        "--unlabeled",
        pool_manifest,
        "--encoders",
        "audio",
        "--out",
        out,
        "--features",
        tmp_path / "f",
        "--threshold",
        "joy=0.5",
    )
    assert bad.exit_code == 2 and "--threshold 'joy=0.5'" in bad.output
