"""Fusion training end to end: features and labels in, the CV search, the chosen model saved.

The pieces (MER2024 §3.3, MERTools protocol: Adam with weight decay 1e-5, batch 32, 100 epochs,
cross-entropy (+ MSE on valence where known), stratified seeded k folds, best held-out epoch per
fold, test logits the mean of the folds'):

* :mod:`~meragent.finetune.fusion_config` — the run's settings, the drawn combinations, results;
* :mod:`~meragent.finetune.fusion_device` — features on the device, PCA, the fold plan, batches;
* :mod:`~meragent.finetune.fusion_stack` — one stack of combinations × folds trained together
  (bf16 first-layer matmuls with ``precision="bf16"``, fused Adam over the stack);
* :mod:`~meragent.finetune.fusion_search` — the search over stacks, the best combination kept.

This module reads the rows (:func:`train_fusion`) and writes the model directory
(:func:`save_fusion_model`: ``model.safetensors``, ``config.json`` recording the precision,
``search.json``); it re-exports the names callers used before the split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meragent.finetune.fusion_config import (
    Combo,
    ComboResult,
    FusionTrainConfig,
    Progress,
    SearchResult,
    sample_combos,
)
from meragent.finetune.fusion_data import (
    DataReport,
    build_training_rows,
)
from meragent.finetune.fusion_device import fold_plan
from meragent.finetune.fusion_search import cross_validate
from meragent.finetune.fusion_stack import StackTrainer, waf_acc
from meragent.schema import Clip
from meragent.tools.feature_cache import FeatureCache
from meragent.tools.fusion_model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BranchConfig,
    FusionModelConfig,
)

__all__ = [
    "Combo",
    "ComboResult",
    "FusionTrainConfig",
    "FusionTrainResult",
    "SearchResult",
    "StackTrainer",
    "cross_validate",
    "fold_plan",
    "sample_combos",
    "save_fusion_model",
    "train_fusion",
    "waf_acc",
]


@dataclass
class FusionTrainResult:
    """A finished training run: what went in, the search, the chosen model."""

    config: FusionTrainConfig
    branches: list[BranchConfig]
    report: DataReport
    search: SearchResult
    clip_ids: list[str] = field(default_factory=list)

    def model_config(self) -> FusionModelConfig:
        best = self.search.best
        return FusionModelConfig(
            model=self.config.model,
            branches=self.branches,
            hidden=best.hidden,
            dropout=best.dropout,
            lr=best.lr,
            weight_decay=self.config.weight_decay,
            batch_size=self.config.batch_size,
            epochs=self.config.epochs,
            folds=self.config.folds,
            seed=self.config.seed,
            with_valence=self.search.with_valence,
            modality_dropout=self.config.modality_dropout,
            pca_dim=self.config.pca_dim,
            precision=self.config.precision,
            cv=best.cv_summary(),
            n_train_clips=self.report.n_labelled,
            extra={"combo_index": best.index, "combo_seed": best.seed},
        )


def train_fusion(
    clips: Sequence[Clip],
    cache: FeatureCache,
    branches: Sequence[Sequence[str]],
    config: FusionTrainConfig,
    *,
    augment_cache: FeatureCache | None = None,
    pseudo: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> FusionTrainResult:
    """Read features and labels, run the CV search, return the result (nothing written)."""
    rows, report = build_training_rows(
        clips, cache, branches, augment_cache=augment_cache, pseudo=pseudo
    )
    if progress is not None:
        for line in report.lines():
            progress(line)
    search = cross_validate(rows, config, progress)
    return FusionTrainResult(
        config=config,
        branches=rows.branches,
        report=report,
        search=search,
        clip_ids=[rows.clip_ids[i] for i in rows.labelled_rows],
    )


def save_fusion_model(result: FusionTrainResult, out_dir: Path) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``search.json`` to ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in result.search.params.items()}
    save_file(tensors, str(out_dir / WEIGHTS_FILE))
    config = result.model_config()
    (out_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2), encoding="utf-8")
    search: dict[str, Any] = {
        "config": result.config.model_dump(),
        "best_index": result.search.best.index,
        "elapsed_s": result.search.elapsed_s,
        "n_train_rows": result.search.n_train_rows,
        "data": {
            "n_clips": result.report.n_clips,
            "n_labelled": result.report.n_labelled,
            "unlabelled": len(result.report.unlabelled),
            "no_features": result.report.no_features,
            "missing": {k: len(v) for k, v in result.report.missing.items()},
            "class_counts": result.report.class_counts,
            "n_augmented": result.report.n_augmented,
            "n_pseudo": result.report.n_pseudo,
            "warnings": result.report.warnings,
        },
        "combos": [c.model_dump() for c in result.search.combos],
    }
    (out_dir / "search.json").write_text(json.dumps(search, indent=2), encoding="utf-8")
    return out_dir
