"""What a fusion training run is: its settings, the drawn combinations and their CV results.

Protocol (MER2024 §3.3, MERTools): N combinations drawn from d ∈ {64,128,256} × lr ∈ {1e-3,1e-4} ×
dropout ∈ {0.2,...,0.5}; combinations sharing (d, lr) train together as one *stack*
(:mod:`meragent.finetune.fusion_stack`). Seeds are derived from the run's seed, so a combination's
weights, dropout masks and the batch order do not depend on which others share its stack.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from meragent.tools.fusion_model import CVSummary

if TYPE_CHECKING:
    import torch

Progress = Callable[[str], None]
#: Grid of MER2024 §3.3.
DEFAULT_HIDDEN = (64, 128, 256)
DEFAULT_LR = (1e-3, 1e-4)
DEFAULT_DROPOUT = (0.2, 0.3, 0.4, 0.5)


class FusionTrainConfig(BaseModel):
    """Everything that decides a training run (validated on construction)."""

    model: str = "attention"
    folds: int = Field(default=5, ge=2)
    search: int = Field(default=50, ge=1)
    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=32, ge=1)
    weight_decay: float = Field(default=1e-5, ge=0.0)
    seed: int = 0
    hidden: list[int] = Field(default_factory=lambda: list(DEFAULT_HIDDEN), min_length=1)
    lr: list[float] = Field(default_factory=lambda: list(DEFAULT_LR), min_length=1)
    dropout: list[float] = Field(default_factory=lambda: list(DEFAULT_DROPOUT), min_length=1)
    #: Never draw the same (d, lr, dropout) twice (caps ``search`` at the grid size).
    unique: bool = False
    #: Stop a fold once its held-out score has not improved for this many epochs.
    patience: int | None = Field(default=None, ge=1)
    #: Probability of dropping a whole branch of a training row (at least one branch stays).
    modality_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: Train each branch's first layer on its top principal components (None: full width).
    pca_dim: int | None = Field(default=None, ge=1)
    valence: Literal["auto", "on", "off"] = "auto"
    device: str = "cpu"
    #: Compute precision of the stacked first layers (bf16: bf16 matmuls, fp32 master weights,
    #: Adam and loss; the command resolves ``auto`` through ``Settings.resolved_precision``).
    precision: Literal["fp32", "bf16"] = "fp32"
    #: Storage of the first layers' Adam moments with ``precision="bf16"`` (fp32 arithmetic
    #: either way): bf16 packs both moments in 4 bytes per weight, stochastically rounded, a
    #: measured option that cuts the optimiser's memory traffic by 2/7 (see ``fusion_adam``).
    adam_moments: Literal["fp32", "bf16"] = "fp32"
    threads: int | None = Field(default=None, ge=1)
    #: Largest number of stacked first-layer weights trained at once (memory bound).
    max_stack_params: int = Field(default=48_000_000, ge=1)
    #: Stacks trained at the same time, each in its own Python thread with ``threads`` torch
    #: threads. A stack's step is many small ops whose dispatch does not parallelise inside
    #: torch, so on a small CPU two stacks side by side at 1 thread beat one stack at 2 threads.
    #: Results do not depend on it (every stack replays the same batch order).
    stack_workers: int = Field(default=1, ge=1)

    @field_validator("hidden")
    @classmethod
    def _positive_hidden(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("hidden sizes must be >= 1")
        return value

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("learning rates must be > 0")
        return value

    @field_validator("dropout")
    @classmethod
    def _dropout_range(cls, value: list[float]) -> list[float]:
        if any(not 0.0 <= v < 1.0 for v in value):
            raise ValueError("dropout rates must be in [0, 1)")
        return value

    @field_validator("adam_moments")
    @classmethod
    def _moments_need_bf16(cls, value: str, info: ValidationInfo) -> str:
        if value == "bf16" and info.data.get("precision") != "bf16":
            raise ValueError("bf16 Adam moments need precision bf16 (fp32 uses torch's Adam)")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from meragent.tools.fusion_model import ARCHITECTURES

        if value not in ARCHITECTURES:
            raise ValueError(f"unknown fusion model {value!r} (known: {sorted(ARCHITECTURES)})")
        return value


@dataclass(frozen=True)
class Combo:
    """One drawn hyper-parameter combination and the seed of its weights and dropout."""

    index: int
    hidden: int
    lr: float
    dropout: float
    seed: int


class ComboResult(CVSummary):
    """Cross-validation result of one combination (each fold at its best held-out epoch).

    The scores a saved model records (:class:`CVSummary`) plus the combination and the
    per-fold details.
    """

    index: int
    hidden: int
    lr: float
    dropout: float
    seed: int
    fold_score: list[float]
    fold_mse: list[float] | None = None
    epochs_run: int

    @classmethod
    def of_folds(
        cls,
        combo: Combo,
        folds: Mapping[str, list[float] | None],
        best_epochs: list[int],
        epochs_run: int,
    ) -> ComboResult:
        """The combination's result from each metric's per-fold values (``score``, ``waf``,
        ``acc``, ``mse``; ``mse`` None without valence): the lists, their means and stds."""
        scores: dict[str, Any] = {}
        for metric, values in folds.items():
            scores[f"fold_{metric}"] = values
            scores.update(_mean_std(metric, values))
        return cls(**asdict(combo), **scores, best_epochs=best_epochs, epochs_run=epochs_run)

    def cv_summary(self) -> CVSummary:
        """The scores a saved model of this combination records."""
        return CVSummary(**self.model_dump(include=set(CVSummary.model_fields)))

    def summary(self) -> str:
        line = (
            f"#{self.index:02d} d={self.hidden} lr={self.lr:g} dropout={self.dropout:g}: "
            f"WAF {100 * self.waf_mean:.2f}±{100 * self.waf_std:.2f} "
            f"ACC {100 * self.acc_mean:.2f}±{100 * self.acc_std:.2f}"
        )
        if self.mse_mean is not None and self.mse_std is not None:
            line += f" MSE {self.mse_mean:.3f}±{self.mse_std:.3f}"
        return line


def _mean_std(metric: str, folds: list[float] | None) -> dict[str, float | None]:
    """``<metric>_mean`` and ``<metric>_std`` over the folds (both None when there are none)."""
    if folds is None:
        return {f"{metric}_mean": None, f"{metric}_std": None}
    return {f"{metric}_mean": float(np.mean(folds)), f"{metric}_std": float(np.std(folds))}


@dataclass
class SearchResult:
    """Every combination's CV scores, the best one's fold models and out-of-fold predictions."""

    combos: list[ComboResult]
    best: ComboResult
    params: dict[str, torch.Tensor]
    folds: np.ndarray
    oof_probs: np.ndarray
    with_valence: bool
    elapsed_s: float
    n_train_rows: int


# ---------------------------------------------------------------------------- combinations


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    low, high = np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32)
    return int(low) | (int(high) & 0x7FFFFFFF) << 32


ORDER_STREAM, COMBO_STREAM, DRAW_STREAM = 1, 2, 3


def sample_combos(config: FusionTrainConfig) -> list[Combo]:
    """Draw ``config.search`` combinations: whole shuffled passes over the grid (seeded).

    Within a pass no combination repeats; when more draws than grid points are asked, further
    passes repeat combinations with new weight seeds (unless ``config.unique``).
    """
    grid = list(itertools.product(config.hidden, config.lr, config.dropout))
    count = min(config.search, len(grid)) if config.unique else config.search
    rng = np.random.default_rng(seed_for(config.seed, DRAW_STREAM))
    combos: list[Combo] = []
    while len(combos) < count:
        for position in rng.permutation(len(grid)):
            if len(combos) == count:
                break
            hidden, lr, dropout = grid[int(position)]
            index = len(combos)
            seed = seed_for(config.seed, COMBO_STREAM, index)
            combos.append(Combo(index, int(hidden), float(lr), float(dropout), seed))
    return combos


def group_stacks(
    combos: Sequence[Combo], per_combo_params: Mapping[int, int], limit: int
) -> list[list[Combo]]:
    """Group combinations sharing (d, lr), in draw order, split so a stack stays under ``limit``."""
    groups: dict[tuple[int, float], list[Combo]] = {}
    for combo in combos:
        groups.setdefault((combo.hidden, combo.lr), []).append(combo)
    stacks: list[list[Combo]] = []
    for (hidden, _), members in groups.items():
        size = max(1, limit // max(per_combo_params[hidden], 1))
        stacks.extend(list(members[i : i + size]) for i in range(0, len(members), size))
    return stacks
