"""``meragent eval``: exit codes, JSON output, report files and one-line errors for bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from typer.testing import CliRunner

from meragent.cli import app

WriteCsv = Callable[..., Path]
runner = CliRunner()

SIX_GT = [
    ("c1", "happy", "1.0"),
    ("c2", "happy", "2.0"),
    ("c3", "sad", "-1.0"),
    ("c4", "angry", "-10"),
    ("c5", "neutral", ""),
    ("c6", "neutral", "0.5"),
]
SIX_PRED = [
    ("c1", "happy", "0.0"),
    ("c2", "sad", "2.5"),
    ("c3", "sad", "-1.0"),
    ("c4", "angry", "1.0"),
    ("c5", "happy", "1.0"),
    ("c6", "neutral", ""),
    ("c9", "sad", "0"),
]


def _invoke(*args: str) -> Any:
    return runner.invoke(app, ["eval", *args])


def test_six_json_and_report(write_csv: WriteCsv, tmp_path: Path) -> None:
    gt = write_csv("gt.csv", ["name", "discrete", "valence"], SIX_GT)
    pred = write_csv("pred.csv", ["name", "discrete", "valence"], SIX_PRED)
    report_dir = tmp_path / "report"
    result = _invoke(
        "six", "--gt", str(gt), "--pred", str(pred), "--json", "--report", str(report_dir)
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # Same numbers as test_eval_six's hand computation: WAF 2/3, MSE 5/12, score 27/48.
    assert data["waf"] == pytest.approx(2 / 3, abs=1e-15)
    assert data["mse"] == pytest.approx(5 / 12, abs=1e-15)
    assert data["mer2023_score"] == pytest.approx(27 / 48, abs=1e-15)
    assert data["n_extra_predictions"] == 1
    for name in ("confusion_matrix.png", "per_class_f1.png"):
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (report_dir / "summary.md").read_text(encoding="utf-8")
    assert "WAF: 66.67" in summary and "| happy | 50.00 | 50.00 | 50.00 | 2 |" in summary


def test_six_table_output(write_csv: WriteCsv) -> None:
    gt = write_csv("gt.csv", ["name", "discrete"], [("a", "happy"), ("b", "sad")])
    pred = write_csv("pred.csv", ["name", "discrete"], [("a", "happy")])
    result = _invoke("six", "--gt", str(gt), "--pred", str(pred))
    # Scored, but a ground-truth clip had no prediction: finished with a problem, exit 1.
    assert result.exit_code == 1, result.output
    assert "accuracy: 50.00  WAF: 50.00" in result.stdout
    assert "missing predictions: 1" in result.stdout
    assert "1 ground-truth clip(s) have no prediction" in result.stderr


def test_six_unknown_class_names_the_line(write_csv: WriteCsv) -> None:
    gt = write_csv("gt.csv", ["name", "discrete"], [("a", "happy"), ("b", "sad")])
    pred = write_csv("pred.csv", ["name", "discrete"], [("a", "happy"), ("b", "bored")])
    result = _invoke("six", "--gt", str(gt), "--pred", str(pred))
    assert result.exit_code == 2
    assert "pred.csv: line 3: b: unknown emotion label 'bored'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ov_identity_json(write_csv: WriteCsv) -> None:
    gt = write_csv("gt.csv", ["name", "openset"], [("a", "['happy', 'sad']"), ("b", "[]")])
    pred = write_csv("pred.csv", ["name", "openset"], [("a", "['Happy']")])
    result = _invoke("ov", "--gt", str(gt), "--pred", str(pred), "--grouping", "identity", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["accuracy"], data["recall"], data["average"]) == (1.0, 0.5, 0.75)
    assert (data["n_samples"], data["n_skipped"]) == (1, 1)


def test_ov_table_output(write_csv: WriteCsv) -> None:
    gt = write_csv("gt.csv", ["name", "openset"], [("a", "['happy']")])
    result = _invoke("ov", "--gt", str(gt), "--pred", str(gt), "--grouping", "identity")
    assert result.exit_code == 0, result.output
    assert "grouping: identity" in result.stdout and "100.00" in result.stdout


def test_ov_parse_mode_changes_apostrophe_labels(write_csv: WriteCsv) -> None:
    gt = write_csv("gt.csv", ["name", "openset"], [("a", '["don\'t believe"]')])
    pred = write_csv("pred.csv", ["name", "openset"], [("a", "['t believe']")])
    args = ["ov", "--gt", str(gt), "--pred", str(pred), "--grouping", "identity", "--json"]
    proper = json.loads(_invoke(*args).stdout)
    official = json.loads(_invoke(*args, "--parse", "mertools").stdout)
    assert proper["average"] == 0.0
    # mertools: GT -> {"don", "t believe"}; accuracy 1/1, recall 1/2.
    assert (official["accuracy"], official["recall"]) == (1.0, 0.5)


def test_ov_unparsable_row_is_one_line_with_row_number(write_csv: WriteCsv) -> None:
    gt = write_csv("gt.csv", ["name", "openset"], [("a", "['happy']"), ("b", "happy, sad")])
    result = _invoke("ov", "--gt", str(gt), "--pred", str(gt), "--grouping", "identity")
    assert result.exit_code == 2
    assert "gt.csv: line 3: b: not a list of strings" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ov_duplicate_names_are_an_error(write_csv: WriteCsv) -> None:
    gt = write_csv("gt.csv", ["name", "openset"], [("a", "['happy']"), ("a", "['sad']")])
    result = _invoke("ov", "--gt", str(gt), "--pred", str(gt), "--grouping", "identity")
    assert result.exit_code == 2
    assert "line 3: duplicate name 'a' (first at line 2)" in result.stderr


def test_ov_missing_column_file_and_groups(write_csv: WriteCsv, tmp_path: Path) -> None:
    gt = write_csv("gt.csv", ["name", "labels"], [("a", "['happy']")])
    result = _invoke("ov", "--gt", str(gt), "--pred", str(gt), "--grouping", "identity")
    assert result.exit_code == 2 and "missing column(s) openset" in result.stderr
    absent = tmp_path / "absent.csv"
    result = _invoke("ov", "--gt", str(absent), "--pred", str(absent), "--grouping", "identity")
    assert result.exit_code == 2 and "file not found" in result.stderr
    good = write_csv("good.csv", ["name", "openset"], [("a", "['happy']")])
    result = _invoke("ov", "--gt", str(good), "--pred", str(good), "--grouping", "cached")
    assert result.exit_code == 2 and "--groups" in result.stderr
    result = _invoke("ov", "--gt", str(good), "--pred", str(good), "--grouping", "fuzzy")
    assert result.exit_code == 2


def test_ov_llm_grouping_uses_the_reasoning_role(
    write_csv: WriteCsv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meragent.agents import chat

    replies = FakeListChatModel(responses=["[['happy', 'glad'], ['sad']]"])
    monkeypatch.setitem(chat._BACKENDS, "fake", lambda name, role, settings: replies)
    monkeypatch.setenv("MERAGENT_MODELS__REASONING_LLM__BACKEND", "fake")
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    gt = write_csv("gt.csv", ["name", "openset"], [("a", "['happy', 'sad']")])
    pred = write_csv("pred.csv", ["name", "openset"], [("a", "['glad']")])
    result = _invoke("ov", "--gt", str(gt), "--pred", str(pred), "--grouping", "llm", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["accuracy"], data["recall"], data["grouping"]) == (1.0, 0.5, "llm")
    assert len(list((tmp_path / "home" / "cache" / "llm_groups").glob("*.json"))) == 1


def test_ov_embedding_grouping_with_a_local_model(
    write_csv: WriteCsv, tiny_sentence_model: Path
) -> None:
    gt = write_csv("gt.csv", ["name", "openset"], [("a", "['happy', 'sad']")])
    args = ["ov", "--gt", str(gt), "--pred", str(gt), "--grouping", "embedding"]
    result = _invoke(*args, "--encoder", str(tiny_sentence_model), "--tau", "0.99", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["average"] == 1.0
    bad = _invoke(*args, "--encoder", str(gt.parent / "no-model"))
    assert bad.exit_code == 2 and "cannot load text_encoder model" in bad.stderr


def test_wheel_command_needs_a_wheel_folder(write_csv: WriteCsv, tmp_path: Path) -> None:
    gt = write_csv("gt.csv", ["name", "openset"], [("a", "['happy']")])
    result = _invoke(
        "wheel", "--gt", str(gt), "--pred", str(gt), "--wheel-dir", str(tmp_path / "x")
    )
    assert result.exit_code == 2 and "emotion-wheel folder not found" in result.stderr
    result = _invoke("ov", "--gt", str(gt), "--pred", str(gt), "--grouping", "wheel")
    assert result.exit_code == 2 and "--wheel-dir" in result.stderr


def test_wheel_command_on_real_wheels(write_csv: WriteCsv, wheel_dir: Path) -> None:
    gt = write_csv("gt.csv", ["name", "openset"], [("a", "['happy', 'sad']")])
    pred = write_csv("pred.csv", ["name", "openset"], [("a", "['happiness']")])
    args = ["--gt", str(gt), "--pred", str(pred), "--wheel-dir", str(wheel_dir)]
    result = _invoke("wheel", *args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # happiness -> happy on every wheel: precision 1, recall 1/2 -> F 2/3 on each wheel/level.
    assert data["level1"] == pytest.approx(2 / 3, abs=1e-12)
    assert data["level2"] == pytest.approx(2 / 3, abs=1e-12)
    table = _invoke("ov", *args, "--grouping", "wheel")
    assert table.exit_code == 0 and "level1 F: 66.67" in table.stdout


def test_calibrate_grouping_writes_json(
    write_csv: WriteCsv, tmp_path: Path, tiny_sentence_model: Path
) -> None:
    data_dir = tmp_path / "ov"
    data_dir.mkdir()
    rows = [("s1", "['happy', 'sad']"), ("s2", "['angry']")]
    (data_dir / "openset_labels.csv").write_bytes(
        write_csv("labels.csv", ["name", "openset"], rows).read_bytes()
    )
    groups = {"s1": [["happy", "glad"], ["sad"]], "s2": [["angry", "furious"], ["calm"]]}
    (data_dir / "gpt_synonym_groups.json").write_text(json.dumps(groups), encoding="utf-8")
    out = tmp_path / "calibration.json"
    result = _invoke(
        "calibrate-grouping", "--data", str(data_dir), "--encoder", str(tiny_sentence_model),
        "--tau-min", "0.5", "--tau-max", "0.9", "--tau-step", "0.1", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    assert [row["tau"] for row in report["table"]] == [0.5, 0.6, 0.7, 0.8, 0.9]
    # s1 labels {happy, sad, glad}: 3 pairs, 1 together; s2 {angry, furious, calm}: 3 pairs, 1.
    assert (report["n_samples"], report["n_pairs"], report["n_together_pairs"]) == (2, 6, 2)
    # Derived prediction: s1 -> [glad], s2 -> [furious, calm]; cached grouping scores
    # s1: Y={happy,sad}, Y^={happy}: 1, 1/2; s2: Y={angry}, Y^={angry, calm}: 1/2, 1
    assert report["cached_ov"]["accuracy"] == 0.75
    assert report["cached_ov"]["recall"] == 0.75
    assert "best tau" in result.stdout
    assert _invoke("calibrate-grouping", "--data", str(tmp_path / "none")).exit_code == 2
