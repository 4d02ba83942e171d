"""The small model card written next to each LoRA adapter (base, data, folds, scores, serving)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _score_table(scores: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    lines = ["| language | system | accuracy | recall | average | n |", "|---|---|---|---|---|---|"]
    for language, systems in scores.items():
        for system, metrics in systems.items():
            lines.append(
                f"| {language} | {system} | {float(metrics['accuracy']):.4f} "
                f"| {float(metrics['recall']):.4f} | {float(metrics['average']):.4f} "
                f"| {metrics.get('n_samples', '')} |"
            )
    return lines


def write_model_card(
    adapter_dir: Path,
    *,
    base: str,
    data: str,
    language: str,
    modality: str,
    fold: int,
    folds: int,
    n_train: int,
    n_test: int,
    hyper: Mapping[str, Any],
    scores: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> Path:
    """Write ``README.md`` into ``adapter_dir`` and return its path."""
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: peft",
        "tags: [lora, emotion-recognition, mer-ov, meragent]",
        "---",
        "",
        "# meragent OV labeler LoRA adapter",
        "",
        "Turns a multimodal emotion description into an open-vocabulary emotion label list,",
        "with the prompt of `meragent.agents.labeler` (zero-shot form).",
        "",
        f"- base model: `{base}`",
        f"- modality: {modality}; language: {language}",
        f"- data: `{data}` ({n_train} training / {n_test} held-out examples)",
        f"- split: fold {fold} of {folds} (seeded by sample name)",
        "- hyper-parameters: "
        + ", ".join(f"{key}={value}" for key, value in sorted(hyper.items())),
        "",
        "## Held-out scores (MER-OV set metrics, embedding grouper)",
        "",
        *_score_table(scores),
        "",
        "## Use",
        "",
        "In-process: set the labeler role's `adapter` to this folder (same base model).",
        "With vLLM: `vllm serve BASE --enable-lora --lora-modules labeler=THIS_DIR`, then point",
        "the `labeler_llm` role at the server with model `labeler`.",
        "Merge into the base: `meragent finetune merge --adapter THIS_DIR --out MERGED_DIR`.",
        "",
    ]
    path = adapter_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
