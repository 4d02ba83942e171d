"""The README recipe "From MERTools features to a submission", small, on the real MER2023 files.

A few hundred real clips of ``../shared/data/mer2023`` (labels with valence + transcripts, no
video anywhere): MiniLM subtitle features -> 5-fold fusion with valence -> predict test1 ->
``eval six`` with MER2023's combined score. Runs the real bundled MiniLM.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meragent.cli import app
from meragent.data.manifest import read_label_npz

_DEFAULT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mer2023"
TRANSCRIPTS = "transcription-engchi-polish.csv"
N_TRAIN, N_TEST = 240, 60
FEATURE = "all-MiniLM-L6-v2-UTT"


@pytest.fixture(scope="module")
def mer2023() -> Path:
    """The shared MERTools MER2023 folder (env MERAGENT_SHARED_DATA overrides its parent)."""
    parent = os.environ.get("MERAGENT_SHARED_DATA")
    folder = (Path(parent) / "mer2023" if parent else _DEFAULT).resolve()
    if not (folder / "label-6way.npz").is_file():
        pytest.skip(f"MER2023 label file not found under {folder}")
    return folder


def _small_copy(source: Path, target: Path) -> Path:
    """The first N_TRAIN train and N_TEST test1 clips of the real label file and transcripts."""
    corpora = read_label_npz(source / "label-6way.npz")
    train = dict(list(corpora["train_corpus"].items())[:N_TRAIN])
    test1 = dict(list(corpora["test1_corpus"].items())[:N_TEST])
    target.mkdir(parents=True)
    np.savez_compressed(target / "label-6way.npz", train_corpus=train, test1_corpus=test1)  # type: ignore[arg-type]
    keep = set(train) | set(test1)
    with (source / TRANSCRIPTS).open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle)]
    with (target / TRANSCRIPTS).open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([rows[0], *(row for row in rows[1:] if row[0] in keep)])
    return target


def _ok(*args: str | Path) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.slow
def test_mertools_features_to_a_scored_submission(mer2023: Path, tmp_path: Path) -> None:
    data = _small_copy(mer2023, tmp_path / "mer2023")
    home = tmp_path / "home"
    summary = json.loads(
        _ok("features", "extract", data, "--encoder", "minilm", "--home", home, "--device", "cpu")
    )
    assert (summary["total"], summary["extracted"], summary["failed"]) == (300, 300, 0)

    model = tmp_path / "model"
    _ok(
        "fusion", "train", data, "--split", "train", "--encoders", FEATURE,
        "--features", home / "features", "--folds", "5", "--valence", "on", "--search", "1",
        "--epochs", "5", "--hidden", "64", "--lr", "1e-3", "--threads", "1", "--device", "cpu",
        "--out", model,
    )  # fmt: skip
    search = json.loads((model / "search.json").read_text())
    assert search["data"]["n_labelled"] == N_TRAIN and len(search["combos"]) == 1
    assert json.loads((model / "config.json").read_text())["with_valence"] is True

    submission, gt = tmp_path / "test1.csv", tmp_path / "test1_gt.csv"
    printed = _ok(
        "fusion", "predict", data, "--split", "test1", "--model", model, "--out", submission,
        "--features", home / "features", "--device", "cpu",
    )  # fmt: skip
    assert f"on {N_TEST} labelled clips: WAF" in printed and "MER2023 score" in printed
    _ok("data", "labels", data, "--split", "test1", "--out", gt)

    report = json.loads(_ok("eval", "six", "--gt", gt, "--pred", submission, "--json"))
    assert report["n_samples"] == N_TEST and report["n_missing_predictions"] == 0
    assert report["mse"] is not None and report["n_valence"] == N_TEST
    assert report["mer2023_score"] == pytest.approx(report["waf"] - 0.25 * report["mse"])


def test_english_subtitle_features_are_this_clips_for_fusion_training(
    mer2023: Path, tmp_path: Path
) -> None:
    """A folder extracted with ``--subtitle-language en`` stamps each vector with the English
    transcript; ``fusion train`` loads the clips with their Chinese subtitle. Every clip's
    English vector must still count as its own (it once counted as stale for all but the few
    clips whose two transcripts are equal), and a vector made from some other text must not."""
    from meragent.data.manifest import load_manifest
    from meragent.finetune.fusion_data import build_training_rows
    from meragent.tools.feature_cache import FeatureCache, FeatureRecipe, SourceStamp

    data = _small_copy(mer2023, tmp_path / "mer2023")
    clips = load_manifest(data, split="train", media="optional").clips
    english = {c.id: c.transcripts["en"] for c in clips if "en" in c.transcripts}
    assert len(english) > 0.9 * N_TRAIN
    assert sum(english[c.id] != c.subtitle for c in clips if c.id in english) > 0.9 * len(english)
    cache = FeatureCache(tmp_path / "features")
    recipe = FeatureRecipe("bundled:minilm", {"backend": "minilm"}, input="text")
    rng = np.random.default_rng(0)
    for clip_id, text in english.items():
        cache.save(
            "en", clip_id, rng.normal(size=4), source=SourceStamp.of_text(text), recipe=recipe
        )
    stale = next(iter(english))
    cache.save("en", stale, np.ones(4), source=SourceStamp.of_text("another text"), recipe=recipe)

    rows, report = build_training_rows(clips, cache, [("en",)])
    assert report.n_labelled == len(english) - 1
    assert stale not in rows.clip_ids and set(rows.clip_ids) == set(english) - {stale}
