"""``meragent features extract``: whole-manifest extraction, skipping cached clips, bad clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from meragent.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["features", "extract", *args])
    return result.exit_code, result.stdout, result.stderr


def summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


def test_prosody_features_for_a_manifest_then_all_cached(
    synth_dataset: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    code, out, err = run(str(synth_dataset), "--encoder", "prosody", "--home", str(home))
    assert code == 0, err
    report = summary(out)
    assert (report["total"], report["extracted"], report["failed"]) == (4, 4, 0)
    files = sorted((home / "features" / "prosody-UTT").glob("*.npy"))
    assert [f.stem for f in files] == ["synth_000", "synth_001", "synth_002", "synth_003"]
    assert np.load(files[0], allow_pickle=False).shape == (11,)
    code, out, _ = run(str(synth_dataset), "--encoder", "prosody", "--home", str(home))
    assert code == 0 and summary(out)["cached"] == 4 and summary(out)["extracted"] == 0


def test_hubert_batches_and_bad_clips_are_recorded(
    synth_dataset: Path, tmp_path: Path, tiny_hubert: Path
) -> None:
    import soundfile as sf

    from meragent.data.synth import write_garbage_file

    data = tmp_path / "data"
    shutil.copytree(synth_dataset.parent, data)
    write_garbage_file(data / "video" / "synth_001.mp4")
    # 20 samples: readable, but too short for one encoder frame -> fails inside a batch.
    sf.write(data / "video" / "blip.wav", np.full(20, 0.1, dtype=np.float32), 16000)
    with (data / "manifest.csv").open("a", encoding="utf-8") as manifest:
        manifest.write("blip,video/blip.wav,,,,,\n")
    home = tmp_path / "home"
    args = ["--encoder", f"hubert:{tiny_hubert}", "--layers", "2", "--batch-size", "3"]
    code, out, err = run(str(data / "manifest.csv"), *args, "--home", str(home))
    assert code == 1
    report = summary(out)
    assert (report["total"], report["extracted"], report["failed"]) == (5, 3, 2)
    assert "synth_001" in err and "too short" in err
    feature = home / "features" / f"{tiny_hubert.name}-last2-UTT"
    assert sorted(p.stem for p in feature.glob("*.npy")) == ["synth_000", "synth_002", "synth_003"]
    assert np.load(feature / "synth_000.npy", allow_pickle=False).shape == (32,)
    failures = (home / "features" / f"{feature.name}.failures.jsonl").read_text().splitlines()
    stages = {json.loads(line)["clip_id"]: json.loads(line)["stage"] for line in failures}
    assert stages == {"synth_001": "decode", "blip": "encode"}


def test_bad_encoder_names_fail_with_one_line(synth_dataset: Path, tmp_path: Path) -> None:
    code, _, err = run(str(synth_dataset), "--encoder", "vggish", "--home", str(tmp_path))
    assert code == 2 and err.startswith("error: unknown encoder 'vggish'")
    missing = tmp_path / "no-model"
    code, _, err = run(
        str(synth_dataset), "--encoder", f"hubert:{missing}", "--home", str(tmp_path)
    )
    assert code == 2 and "acoustic_encoder" in err and str(missing) in err
    assert len(err.strip().splitlines()) == 1


def test_unusable_manifest_rows_make_extract_exit_1(synth_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dataset.parent, data)
    with (data / "manifest.csv").open("a", encoding="utf-8") as manifest:
        manifest.write("ghost,video/ghost.mp4,,,,,\n")
    home = ["--home", str(tmp_path / "home")]
    code, out, err = run(str(data / "manifest.csv"), "--encoder", "prosody", *home)
    assert code == 1 and "ghost" in err
    report = summary(out)
    assert (report["total"], report["extracted"], report["manifest_errors"]) == (4, 4, 1)
    # all rows usable and every clip cached: 0
    code, out, _ = run(str(synth_dataset), "--encoder", "prosody", *home)
    assert code == 0 and summary(out)["failed"] == 0
