"""The full k-fold protocol on a tiny model: disjoint folds, every sample predicted exactly once
by the fold that held it out, repeated labels collapsed, a killed run resumed per fold."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from finetune_fixtures import write_toy_data, write_toy_word_forms

from meragent.errors import DataError
from meragent.finetune.lora_config import make_run_config
from meragent.finetune.lora_pooled import pool_predictions
from meragent.finetune.lora_run import run_lora_cv
from meragent.tools import causal_lm

LOOPING = "['calm', 'calm', 'sad', 'calm', 'sad', 'ca"


@pytest.fixture()
def looping_labeler(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every answer loops on repeated labels until the token cap (the tuned model's failure)."""
    calls: list[int] = []

    def scripted(lm: Any, conversations: list[Any], **kwargs: Any) -> list[Any]:
        calls.append(len(conversations))
        cap = kwargs["decoding"].max_new_tokens
        return [
            causal_lm.GenerationResult(
                text=LOOPING, prompt_tokens=1, completion_tokens=cap, hit_cap=True
            )
            for _ in conversations
        ]

    monkeypatch.setattr(causal_lm, "generate_chat_batch", scripted)
    return calls


def _config(tmp_path: Path, base: Path, **extra: Any) -> Any:
    data = write_toy_data(tmp_path / "ov")
    forms = write_toy_word_forms(tmp_path / "forms.csv")
    return make_run_config(
        data_dir=data,
        base=str(base),
        out_dir=tmp_path / "run",
        folds=4,
        hyper={"max_steps": 2, "batch_size": 2, "grad_accum": 1, "learning_rate": 1e-2},
        max_new_tokens=6,
        encoder="none",
        word_forms=forms,
        progress=False,
        precision="bf16",
        **extra,
    )


def test_every_sample_is_predicted_once_by_the_fold_that_held_it_out(
    tiny_llama: Path, tmp_path: Path, looping_labeler: list[int]
) -> None:
    config = _config(tmp_path, tiny_llama)
    results = run_lora_cv(config)
    folds = results["folds"]
    held_out = [set(f["test_names"]) for f in folds]
    assert [f["train_steps"] for f in folds] == [2, 2, 2, 2]
    assert all(a.isdisjoint(b) for i, a in enumerate(held_out) for b in held_out[i + 1 :])
    assert set().union(*held_out) == {f"s{i}" for i in range(8)}
    samples, systems = pool_predictions(config.out_dir, folds)
    assert sorted(s.name for s in samples) == sorted(f"s{i}" for i in range(8))
    assert set(systems) == {"zero_shot", "lexicon", "lora"}
    # The looping answer is collapsed to its distinct, complete labels; the cut 'ca' is dropped.
    assert all(p.labels == ["calm", "sad"] for p in systems["lora"] + systems["zero_shot"])
    assert results["pooled"]["n_samples"] == 8
    pooled = results["pooled"]["scores"]["english"]
    assert pooled["lora"]["n_samples"] == pooled["lexicon"]["n_samples"] == 7  # s5 has no label
    assert results["precision"] == "bf16" and folds[0]["precision"] == "bf16"
    with (config.out_dir / "openset_lora.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == sorted(f"s{i}" for i in range(8))
    assert {r["openset"] for r in rows} == {"['calm', 'sad']"}


def test_a_rerun_resumes_after_the_finished_folds(
    tiny_llama: Path, tmp_path: Path, looping_labeler: list[int]
) -> None:
    config = _config(tmp_path, tiny_llama, fold=1)
    run_lora_cv(config)
    first = (config.out_dir / "fold1" / "fold.json").read_text(encoding="utf-8")
    calls_after_first = len(looping_labeler)
    lines: list[str] = []
    again = run_lora_cv(config.model_copy(update={"fold": None}), report=lines.append)
    assert "fold 1: already finished" in "\n".join(lines)
    # Fold 1 was not generated again (two systems x one batch for each of the other 3 folds).
    assert len(looping_labeler) - calls_after_first == 3 * 2
    assert json.dumps(again["folds"][1], indent=2, ensure_ascii=False) == first


def test_pooling_refuses_a_sample_predicted_twice(
    tiny_llama: Path, tmp_path: Path, looping_labeler: list[int]
) -> None:
    config = _config(tmp_path, tiny_llama, fold=0)
    folds = run_lora_cv(config)["folds"]
    with pytest.raises(DataError, match="predicted by folds 0 and 0"):
        pool_predictions(config.out_dir, [folds[0], folds[0]])


def test_a_fold_killed_after_zero_shot_keeps_the_base_predictions(
    tiny_llama: Path, tmp_path: Path, looping_labeler: list[int]
) -> None:
    config = _config(tmp_path, tiny_llama, fold=2)
    run_lora_cv(config)
    fold_dir = config.out_dir / "fold2"
    assert (fold_dir / "zero_shot.jsonl").is_file()
    (fold_dir / "fold.json").unlink()  # as if killed before the fold finished
    before = len(looping_labeler)
    run_lora_cv(config)
    assert len(looping_labeler) - before == 1  # only the LoRA model generated again
