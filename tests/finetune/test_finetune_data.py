"""Labeler dataset: joining and skipping rows, k-fold split, loss masking, prompt budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_fixtures import TOY_SAMPLES, build_tokenizer

from meragent.agents.labeler import format_labels
from meragent.errors import ConfigError, DataError
from meragent.finetune.lora_examples import (
    IGNORE_INDEX,
    collate,
    encode_example,
    fit_description,
)
from meragent.finetune.lora_fold import limit_dataset
from meragent.finetune.ov_data import (
    OVSample,
    kfold_split,
    load_ov_samples,
    read_openset_cell,
    split_fold,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("tok")))


def test_rows_without_labels_are_skipped_and_counted(toy_data: Path) -> None:
    dataset = load_ov_samples(toy_data, "english")
    assert [s.name for s in dataset.samples] == [name for name, _, _ in TOY_SAMPLES]
    assert dataset.skipped == {"no_labels_row": ["orphan"]}
    assert dataset.n_skipped() == 1
    # An empty ground-truth list is a valid example (the target is "[]").
    assert next(s for s in dataset.samples if s.name == "s5").labels == []


def test_both_languages_give_two_examples_per_name(toy_data: Path) -> None:
    dataset = load_ov_samples(toy_data, "both")
    assert len(dataset.samples) == 16
    assert len(dataset.names) == 8
    train, test = split_fold(dataset, ["s0", "s1"])
    assert {(s.name, s.language) for s in test} == {
        ("s0", "english"),
        ("s0", "chinese"),
        ("s1", "english"),
        ("s1", "chinese"),
    }
    assert len(train) == 12


def test_missing_labels_file_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "descriptions.csv").write_text("name,chinese,english\na,x,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"openset_labels\.csv: file not found"):
        load_ov_samples(tmp_path)


def test_openset_cells_read_lists_and_reject_garbage() -> None:
    from meragent.eval.parsing import OpenSetParseError

    assert read_openset_cell("['Happy', ' relaxed ', 'happy']") == ["happy", "relaxed"]
    assert read_openset_cell("[]") == []
    assert read_openset_cell("") == []
    with pytest.raises(OpenSetParseError):
        read_openset_cell("happy, sad")


def test_unreadable_label_rows_are_skipped_not_fatal(toy_data: Path) -> None:
    labels = toy_data / "openset_labels.csv"
    labels.write_text(labels.read_text(encoding="utf-8") + 's9,"not a list"\n', encoding="utf-8")
    dataset = load_ov_samples(toy_data)
    assert dataset.skipped["unreadable_labels"] == ["s9"]
    assert len(dataset.samples) == 8


def test_kfold_is_disjoint_covering_and_seeded() -> None:
    names = [f"n{i:02d}" for i in range(23)]
    folds = kfold_split(names, 5, seed=3)
    flat = [name for fold in folds for name in fold]
    assert sorted(flat) == sorted(names)  # covers every name exactly once
    assert len(set(flat)) == len(flat)  # disjoint
    assert sorted(len(fold) for fold in folds) == [4, 4, 5, 5, 5]
    assert kfold_split(reversed(names), 5, seed=3) == folds  # order-independent
    assert kfold_split(names, 5, seed=4) != folds


def test_kfold_rejects_impossible_splits() -> None:
    with pytest.raises(DataError, match="at least 2 folds"):
        kfold_split(["a", "b"], 1)
    with pytest.raises(DataError, match="3 folds but only 2 samples"):
        kfold_split(["a", "b"], 3)


def test_limit_keeps_a_seeded_subset_of_names(toy_data: Path) -> None:
    dataset = load_ov_samples(toy_data)
    limited = limit_dataset(dataset, 3, seed=0)
    assert len(limited.names) == 3
    assert limited.names == limit_dataset(dataset, 3, seed=0).names
    assert limit_dataset(dataset, 100, seed=0) is dataset


def test_only_answer_tokens_carry_loss(tokenizer) -> None:  # type: ignore[no-untyped-def]
    sample = OVSample(name="x", language="english", description="He smiles.", labels=["happy"])
    example = encode_example(tokenizer, sample, max_prompt_tokens=1000)
    assert len(example.input_ids) == len(example.labels)
    answer_start = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    # Every position before the answer is masked, every position after it is supervised.
    assert all(label == IGNORE_INDEX for label in example.labels[:answer_start])
    assert example.labels[answer_start:] == example.input_ids[answer_start:]
    answer = tokenizer.decode(example.input_ids[answer_start:])
    assert answer == f"{format_labels(['happy'])}<|im_end|>\n"
    prompt = tokenizer.decode(example.input_ids[:answer_start])
    assert prompt.endswith("Emotion list:<|im_end|>\n<|im_start|>assistant\n")
    assert "He smiles." in prompt


def test_empty_label_list_is_learned_as_brackets(tokenizer) -> None:  # type: ignore[no-untyped-def]
    sample = OVSample(name="x", language="english", description="Reads aloud.", labels=[])
    example = encode_example(tokenizer, sample, max_prompt_tokens=1000)
    supervised = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100
    ]
    assert tokenizer.decode(supervised) == "[]<|im_end|>\n"


def test_collate_pads_right_and_masks_padding(tokenizer) -> None:  # type: ignore[no-untyped-def]
    short = OVSample(name="a", language="english", description="Sad.", labels=["sad"])
    long = OVSample(name="b", language="english", description="Very very angry. " * 5, labels=[])
    examples = [encode_example(tokenizer, s, max_prompt_tokens=1000) for s in (short, long)]
    batch = collate(examples, pad_token_id=0)
    width = max(len(e.input_ids) for e in examples)
    assert tuple(batch["input_ids"].shape) == (2, width)
    pad = width - len(examples[0].input_ids)
    assert pad > 0
    assert batch["attention_mask"][0, -pad:].sum().item() == 0
    assert (batch["labels"][0, -pad:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].sum().item() == width


def test_long_descriptions_are_shortened_in_the_middle(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from meragent.finetune.ov_data import prompt_messages
    from meragent.tools.causal_lm import render_chat

    description = "BEGIN " + "she smiles and laughs " * 60 + "END"
    short, truncated = fit_description(tokenizer, description, max_prompt_tokens=300)
    assert truncated
    assert short.startswith("BEGIN") and short.endswith("END") and "…" in short
    prompt = render_chat(tokenizer, prompt_messages(short), generation_prompt=True)
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= 300
    assert fit_description(tokenizer, "Sad.", 300) == ("Sad.", False)


def test_budget_smaller_than_the_prompt_is_a_config_error(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="too small"):
        fit_description(tokenizer, "She smiles warmly at him.", max_prompt_tokens=10)
