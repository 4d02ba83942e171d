"""``finetune lora --modality video`` with a tiny random Qwen2.5-VL on synthetic clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_fixtures import build_tiny_qwen25_vl
from typer.testing import CliRunner

from meragent.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from meragent.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("clips")
    return make_synthetic_dataset(root, 4, seed=0, duration_s=1.0, size=112, audio="tone")


def test_video_lora_trains_on_the_language_model_only_and_scores(
    clips: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open

    base = build_tiny_qwen25_vl(tmp_path / "vl")
    # Rows without labels are skipped and counted: the data folder has none for synth_003.
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "openset_labels.csv").write_text(
        "name,openset\nsynth_000,\"['happy']\"\nsynth_001,\"['joyful']\"\n", encoding="utf-8"
    )
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "finetune", "lora", "--modality", "video", "--manifest", str(clips),
            "--data", str(tmp_path / "labels"), "--base", str(base), "--folds", "2",
            "--fold", "0", "--max-steps", "3", "--grad-accum", "1", "--lr", "1e-2",
            "--num-frames", "2", "--max-new-tokens", "4", "--encoder", "none",
            "--no-progress", "--device", "cpu", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    # Labels come from the data folder when it has the name, else from the manifest.
    assert results["n_samples"] == 4 and results["skipped"] == {}
    (fold,) = results["folds"]
    assert fold["n_train"] + fold["n_test"] == 4 and fold["train_steps"] == 3
    assert set(fold["scores"]["video"]) == {"zero_shot", "lora"}

    adapter = out / "fold0" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == str(base)
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert keys and all("language_model" in key for key in keys)
    assert not any("visual" in key for key in keys)
    assert (adapter / "README.md").read_text(encoding="utf-8").count("modality: video") == 1


def test_clips_without_labels_anywhere_are_skipped_and_counted(clips: Path, tmp_path: Path) -> None:
    import csv
    import shutil

    from meragent.finetune.lora_config import LoraRunConfig
    from meragent.finetune.lora_video import load_video_samples

    shutil.copytree(clips.parent / "video", tmp_path / "video")
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "video", "subtitle", "openset"])
        writer.writerow(["synth_000", "video/synth_000.mp4", "so happy", "['happy']"])
        writer.writerow(["synth_001", "video/synth_001.mp4", "", ""])
        writer.writerow(["synth_002", "video/synth_002.mp4", "hm", ""])  # no labels anywhere
    # The data folder's labels win over the manifest's and may be an empty list.
    (tmp_path / "openset_labels.csv").write_text("name,openset\nsynth_001,[]\n", encoding="utf-8")
    config = LoraRunConfig(
        data_dir=tmp_path, base="unused", out_dir=tmp_path / "o", modality="video",
        manifest=manifest,
    )  # fmt: skip
    dataset = load_video_samples(config)
    assert [(s.name, s.labels) for s in dataset.samples] == [
        ("synth_000", ["happy"]),
        ("synth_001", []),  # an empty list is a valid target
    ]
    assert dataset.skipped == {"no_labels_row": ["synth_002"]}
    assert dataset.samples[0].description == "so happy"
