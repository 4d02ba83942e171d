"""Export the labeler dataset in ShareGPT format for LLaMA-Factory users.

Writes ``ov_sharegpt_all.json`` plus, per fold, ``ov_sharegpt_train_fold{k}.json`` and
``ov_sharegpt_test_fold{k}.json`` (the same seeded split as ``meragent finetune lora``), and a
``dataset_info.json`` that registers each file with LLaMA-Factory's sharegpt column mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from meragent.errors import ConfigError
from meragent.finetune.ov_data import (
    Language,
    OVSample,
    kfold_split,
    load_ov_samples,
    split_fold,
    training_messages,
)

ExportFormat = Literal["sharegpt"]
_ROLE_TAGS = {"user": "human", "assistant": "gpt"}


def sharegpt_record(sample: OVSample) -> dict[str, Any]:
    """One conversation: the system prompt apart, user/assistant turns as human/gpt."""
    messages = training_messages(sample.description, sample.labels)
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [
        {"from": _ROLE_TAGS[m["role"]], "value": m["content"]}
        for m in messages
        if m["role"] in _ROLE_TAGS
    ]
    return {"conversations": turns, "system": system, "id": f"{sample.name}:{sample.language}"}


def _write(path: Path, samples: list[OVSample]) -> Path:
    records = [sharegpt_record(sample) for sample in samples]
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def export_dataset(
    data_dir: Path,
    out_dir: Path,
    *,
    fmt: str = "sharegpt",
    language: Language = "english",
    folds: int = 5,
    seed: int = 0,
) -> list[Path]:
    """Write the dataset (all + per-fold splits) and LLaMA-Factory's dataset_info.json."""
    if fmt != "sharegpt":
        raise ConfigError(f"unknown export format {fmt!r} (supported: sharegpt)")
    dataset = load_ov_samples(data_dir, language)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_write(out_dir / "ov_sharegpt_all.json", dataset.samples)]
    for fold, held_out in enumerate(kfold_split(dataset.names, folds, seed)):
        train, test = split_fold(dataset, held_out)
        written.append(_write(out_dir / f"ov_sharegpt_train_fold{fold}.json", train))
        written.append(_write(out_dir / f"ov_sharegpt_test_fold{fold}.json", test))
    columns = {"messages": "conversations", "system": "system"}
    info = {
        path.stem: {"file_name": path.name, "formatting": "sharegpt", "columns": columns}
        for path in written
    }
    info_path = out_dir / "dataset_info.json"
    info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return [*written, info_path]
