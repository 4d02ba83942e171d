"""``meragent finetune lora|merge|export`` end to end on 8 toy samples and a tiny random LM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_fixtures import write_toy_data, write_toy_word_forms
from typer.testing import CliRunner

from meragent.agents.labeler import LABELER_SYSTEM_PROMPT, format_labels
from meragent.cli import app

runner = CliRunner()
FAST = ["--max-steps", "5", "--grad-accum", "1", "--batch-size", "2", "--lr", "1e-2"]
FAST += ["--max-new-tokens", "6", "--encoder", "none", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = write_toy_data(root / "ov")
    forms = write_toy_word_forms(root / "forms.csv")
    out = root / "run"
    result = runner.invoke(
        app,
        [
            "finetune", "lora", "--data", str(data), "--base", str(tiny_llama),
            "--folds", "4", "--fold", "1", "--word-forms", str(forms), "--out", str(out),
            "--results", str(root / "bench" / "lora.json"), *FAST,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"root": root, "out": out, "data": data, "base": tiny_llama}


def test_lora_cli_writes_adapter_card_curve_predictions_and_results(
    lora_run: dict[str, Path],
) -> None:
    fold_dir = lora_run["out"] / "fold1"
    adapter = fold_dir / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        assert (adapter / name).is_file(), name
    card = (adapter / "README.md").read_text(encoding="utf-8")
    assert f"base_model: {lora_run['base']}" in card and "fold 1 of 4" in card
    assert (fold_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (fold_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2  # 8 samples, 4 folds
    assert {"ground_truth", "lora", "zero_shot", "lexicon"} <= set(rows[0])

    results = json.loads((lora_run["out"] / "results.json").read_text(encoding="utf-8"))
    assert results["n_samples"] == 8
    assert results["skipped"] == {"no_labels_row": 1}  # the description without a labels row
    (fold,) = results["folds"]
    assert fold["fold"] == 1 and fold["n_train"] == 6 and fold["n_test"] == 2
    assert fold["train_steps"] == 5 and fold["loss_last"] < fold["loss_first"]
    scores = fold["scores"]["english"]
    assert set(scores) == {"zero_shot", "lexicon", "lora"}
    for system in scores.values():
        assert 0.0 <= system["accuracy"] <= 1.0 and 0.0 <= system["recall"] <= 1.0
        assert system["average"] == pytest.approx((system["accuracy"] + system["recall"]) / 2)
    summary = results["summary"]["english"]["lora"]["average"]
    assert summary == {"mean": scores["lora"]["average"], "std": 0.0, "n": 1}
    copied = json.loads((lora_run["root"] / "bench" / "lora.json").read_text(encoding="utf-8"))
    assert copied == results


def test_merge_folds_the_adapter_into_a_plain_checkpoint(
    lora_run: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from meragent.tools.causal_lm import load_causal_lm_uncached

    adapter = lora_run["out"] / "fold1" / "adapter"
    merged_dir = tmp_path / "merged"
    result = runner.invoke(
        app, ["finetune", "merge", "--adapter", str(adapter), "--out", str(merged_dir)]
    )
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with_adapter = load_causal_lm_uncached(str(lora_run["base"]), adapter=str(adapter))
    probe = torch.tensor([[1, 5, 9, 14, 30]])
    with torch.no_grad():
        expected = with_adapter.model(input_ids=probe).logits
        got = merged(input_ids=probe).logits
    assert torch.allclose(expected, got, atol=1e-4)
    assert (merged_dir / "tokenizer_config.json").is_file()


def test_merge_onto_another_base_is_a_one_line_error(
    lora_run: dict[str, Path], tiny_qwen2: Path, tmp_path: Path
) -> None:
    adapter = lora_run["out"] / "fold1" / "adapter"
    result = runner.invoke(
        app,
        [
            "finetune", "merge", "--adapter", str(adapter), "--base", str(tiny_qwen2),
            "--out", str(tmp_path / "m"),
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "error: cannot load LoRA adapter model" in result.output
    assert f"trained on {str(lora_run['base'])!r}" in result.output
    assert "Traceback" not in result.output


def test_base_without_chat_template_runs_with_the_plain_template_and_says_so(
    tiny_llama_no_template: Path, tmp_path: Path
) -> None:
    data = write_toy_data(tmp_path / "ov")
    result = runner.invoke(
        app,
        [
            "finetune", "lora", "--data", str(data), "--base", str(tiny_llama_no_template),
            "--folds", "4", "--fold", "0", "--no-zero-shot", "--out", str(tmp_path / "out"),
            *FAST[:4], "--max-steps", "1", *FAST[8:],
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "has no chat template: a plain User/Assistant template is used" in result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert results["has_chat_template"] is False
    assert set(results["folds"][0]["scores"]["english"]) == {"lora"}  # no lexicon, no zero-shot


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--folds", "4", "--fold", "4"], "error: --fold 4 is out of range for 4 folds"),
        (["--folds", "1"], "error: invalid finetune option folds"),
        (["--folds", "9"], "error: 9 folds but only 8 samples"),
        (["--modality", "video"], "error: --modality video needs --manifest"),
    ],
)
def test_bad_options_are_one_line_errors(
    extra: list[str], message: str, toy_data: Path, tmp_path: Path
) -> None:
    args = ["finetune", "lora", "--data", str(toy_data), "--base", "unused", "--out"]
    result = runner.invoke(app, [*args, str(tmp_path / "o"), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_data_folder_is_a_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["finetune", "lora", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "descriptions.csv: file not found" in result.output or "not found" in result.output


def test_export_sharegpt_writes_all_and_fold_files(toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = runner.invoke(
        app,
        ["finetune", "export", "--data", str(toy_data), "--format", "sharegpt", "--out", str(out),
         "--folds", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = json.loads((out / "ov_sharegpt_all.json").read_text(encoding="utf-8"))
    assert len(records) == 8
    first = records[0]
    assert first["system"] == LABELER_SYSTEM_PROMPT
    assert [turn["from"] for turn in first["conversations"]] == ["human", "gpt"]
    assert first["conversations"][1]["value"] == format_labels(["happy", "delighted"])
    tests = [
        {r["id"] for r in json.loads((out / f"ov_sharegpt_test_fold{k}.json").read_text())}
        for k in range(4)
    ]
    assert sum(len(t) for t in tests) == 8 and len(set().union(*tests)) == 8
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["ov_sharegpt_train_fold0"]["formatting"] == "sharegpt"
    assert info["ov_sharegpt_all"]["columns"] == {"messages": "conversations", "system": "system"}
