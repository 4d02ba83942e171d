"""Issue 11 defect 2: fusion on labels + cached features, with no video anywhere; exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fusion_fixtures import planted_clips, write_planted_features
from typer.testing import CliRunner

from meragent.cli import app
from meragent.schema import Clip

QUICK = ["--folds", "3", "--search", "1", "--epochs", "4", "--threads", "1"]
QUICK += ["--hidden", "16", "--lr", "1e-2", "--device", "cpu"]


def _run(*args: str | Path) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def _label_npz(folder: Path, train: list[Clip], test1: list[Clip]) -> Path:
    """MERTools' label-6way.npz (name -> {emo, val}, -10 = no valence) and nothing else."""
    folder.mkdir(parents=True)

    def corpus(clips: list[Clip]) -> dict[str, dict[str, object]]:
        return {
            c.id: {"emo": c.discrete, "val": -10 if c.valence is None else c.valence} for c in clips
        }

    np.savez_compressed(
        folder / "label-6way.npz",
        train_corpus=corpus(train),  # type: ignore[arg-type]
        test1_corpus=corpus(test1),  # type: ignore[arg-type]
    )
    return folder


@pytest.fixture()
def mertools(tmp_path: Path) -> dict[str, Path]:
    clips = planted_clips(48, with_valence=True)
    features = tmp_path / "features"
    write_planted_features(features, clips)
    folder = _label_npz(tmp_path / "mer2023", clips[:36], clips[36:])
    return {"folder": folder, "features": features, "root": tmp_path}


def test_train_on_a_folder_holding_only_label_npz_uses_every_clip_with_features(
    mertools: dict[str, Path],
) -> None:
    model = mertools["root"] / "model"
    args = ["--encoders", "audio,text", "--features", mertools["features"], *QUICK]
    result = _run("fusion", "train", mertools["folder"], "--split", "train", "--out", model, *args)
    # Old code: every row was 'video file not found' and training stopped with exit 2.
    assert result.exit_code == 0, result.output
    data = json.loads((model / "search.json").read_text())["data"]
    assert (data["n_clips"], data["n_labelled"], data["no_features"]) == (36, 36, [])
    assert json.loads((model / "config.json").read_text())["with_valence"] is True

    submission = mertools["root"] / "test1.csv"
    result = _run(
        "fusion",
        "predict",
        mertools["folder"],
        "--split",
        "test1",
        "--model",
        model,
        "--out",
        submission,
        "--features",
        mertools["features"],
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(submission.open()))
    assert len(rows) == 12 and set(rows[0]) == {"name", "discrete", "valence"}
    assert "on 12 labelled clips: WAF" in result.output and "MER2023 score" in result.output


def test_train_on_a_csv_with_name_and_labels_only(tmp_path: Path) -> None:
    clips = planted_clips(30)
    write_planted_features(tmp_path / "f", clips)
    manifest = tmp_path / "labels.csv"
    lines = ["name,discrete"] + [f"{c.id},{c.discrete}" for c in clips]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = tmp_path / "m"
    args = ["--encoders", "audio", "--features", tmp_path / "f", *QUICK]
    result = _run("fusion", "train", manifest, "--out", model, *args)
    assert result.exit_code == 0, result.output
    assert json.loads((model / "search.json").read_text())["data"]["n_labelled"] == 30


def test_unusable_rows_and_clips_lacking_features_exit_1_with_counts(
    mertools: dict[str, Path],
) -> None:
    features = mertools["features"]
    (features / "text" / "clip_0001.npy").unlink()  # masked branch
    for encoder in ("audio", "text"):
        (features / encoder / "clip_0002.npy").unlink()  # no features at all
    manifest = mertools["root"] / "labels.csv"
    rows = ["name,discrete"] + [f"clip_{i:04d},{planted_clips(36)[i].discrete}" for i in range(36)]
    manifest.write_text("\n".join([*rows, "odd,bored"]) + "\n", encoding="utf-8")
    args = ["--encoders", "audio,text", "--features", features, *QUICK]
    result = _run("fusion", "train", manifest, "--out", mertools["root"] / "m", *args)
    assert result.exit_code == 1, result.output
    assert "unknown emotion label 'bored'" in result.output
    assert "finished with problems: 1 unusable rows, 2 clips lacking features" in result.output
    assert (mertools["root"] / "m" / "model.safetensors").is_file()

    out = mertools["root"] / "sub.csv"
    predicted = _run(
        "fusion", "predict", manifest, "--model", mertools["root"] / "m", "--out", out,
        "--features", features, "--device", "cpu",
    )  # fmt: skip
    assert predicted.exit_code == 1, predicted.output
    assert "finished with problems: 1 unusable rows, 2 clips lacking features" in predicted.output
    assert len(list(csv.DictReader(out.open()))) == 35  # clip_0002 has nothing to predict from


def test_a_config_error_still_exits_2(mertools: dict[str, Path]) -> None:
    args = ["--encoders", "nothing", "--features", mertools["features"], *QUICK]
    result = _run("fusion", "train", mertools["folder"], "--out", mertools["root"] / "m", *args)
    assert result.exit_code == 2
    assert "no features for encoder 'nothing'" in result.output
