"""k-fold training and random hyper-parameter search of the fusion head, built for a small CPU.

Protocol (MER2024 §3.3, MERTools): Adam (weight decay 1e-5), batch 32, 100 epochs, cross-entropy
(+ MSE on valence where known); stratified, seeded k folds; per fold the epoch with the best
held-out WAF (or WAF - 0.25·MSE with valence) is kept; a combination's score is the mean ± std of
its folds; test logits are the mean of the folds'. N combinations are drawn from
d ∈ {64,128,256} × lr ∈ {1e-3,1e-4} × dropout ∈ {0.2,...,0.5}.

Speed: all features live on the device as one matrix per branch and batches are index gathers.
Combinations that share (d, lr) train together with their k folds as one *stack*: one batch per
fold meets every combination's first-layer weights in a single wide matmul, their weight gradients
are computed by hand into preallocated buffers (no per-step allocation of the large tensors), and
one fused Adam updates the whole stack. Each combination draws its initial weights and dropout
masks from its own generator and every stack replays the same batch order, so a combination's
numbers do not depend on which others share its stack, and the same command gives the same
numbers (on the same device and thread count: a different matmul blocking can move the last bits
and, through the best-epoch choice, the scores a little). ``patience`` (early stopping) and
``pca_dim`` (train the first layers in each branch's top principal components, folded back into
full-width weights on save) are optional speed-ups.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from meragent.errors import ConfigError
from meragent.eval.six import MER2023_MSE_WEIGHT
from meragent.finetune.fusion_data import (
    LABELLED,
    DataReport,
    TrainingRows,
    build_training_rows,
    stratified_folds,
)
from meragent.schema import EMOTIONS, Clip
from meragent.tools.feature_cache import FeatureCache
from meragent.tools.fusion_model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BranchConfig,
    CVSummary,
    FusionArchitecture,
    FusionModelConfig,
    ParamSpec,
    get_architecture,
    init_stacked_params,
    select_combo,
    stacked_shape,
    where_combos,
)

if TYPE_CHECKING:
    import torch

Progress = Callable[[str], None]
#: Held-out rows per forward pass during validation (bounds memory of wide stacks).
EVAL_CHUNK = 512
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
    threads: int | None = Field(default=None, ge=1)
    #: Largest number of stacked first-layer weights trained at once (memory bound).
    max_stack_params: int = Field(default=48_000_000, ge=1)

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


class ComboResult(BaseModel):
    """Cross-validation result of one combination (each fold at its best held-out epoch)."""

    index: int
    hidden: int
    lr: float
    dropout: float
    seed: int
    fold_score: list[float]
    fold_waf: list[float]
    fold_acc: list[float]
    fold_mse: list[float] | None = None
    best_epochs: list[int]
    epochs_run: int
    score_mean: float
    score_std: float
    waf_mean: float
    waf_std: float
    acc_mean: float
    acc_std: float
    mse_mean: float | None = None
    mse_std: float | None = None

    def summary(self) -> str:
        line = (
            f"#{self.index:02d} d={self.hidden} lr={self.lr:g} dropout={self.dropout:g}: "
            f"WAF {100 * self.waf_mean:.2f}±{100 * self.waf_std:.2f} "
            f"ACC {100 * self.acc_mean:.2f}±{100 * self.acc_std:.2f}"
        )
        if self.mse_mean is not None and self.mse_std is not None:
            line += f" MSE {self.mse_mean:.3f}±{self.mse_std:.3f}"
        return line


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
        cv = CVSummary(
            waf_mean=best.waf_mean,
            waf_std=best.waf_std,
            acc_mean=best.acc_mean,
            acc_std=best.acc_std,
            mse_mean=best.mse_mean,
            mse_std=best.mse_std,
            score_mean=best.score_mean,
            score_std=best.score_std,
            fold_waf=best.fold_waf,
            fold_acc=best.fold_acc,
            best_epochs=best.best_epochs,
        )
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
            cv=cv,
            n_train_clips=self.report.n_labelled,
            extra={"combo_index": best.index, "combo_seed": best.seed},
        )


# ---------------------------------------------------------------------------- combinations


def _seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    low, high = np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32)
    return int(low) | (int(high) & 0x7FFFFFFF) << 32


_ORDER_STREAM, _COMBO_STREAM, _DRAW_STREAM = 1, 2, 3


def sample_combos(config: FusionTrainConfig) -> list[Combo]:
    """Draw ``config.search`` combinations: whole shuffled passes over the grid (seeded).

    Within a pass no combination repeats; when more draws than grid points are asked, further
    passes repeat combinations with new weight seeds (unless ``config.unique``).
    """
    grid = list(itertools.product(config.hidden, config.lr, config.dropout))
    count = min(config.search, len(grid)) if config.unique else config.search
    rng = np.random.default_rng(_seed_for(config.seed, _DRAW_STREAM))
    combos: list[Combo] = []
    while len(combos) < count:
        for position in rng.permutation(len(grid)):
            if len(combos) == count:
                break
            hidden, lr, dropout = grid[int(position)]
            index = len(combos)
            seed = _seed_for(config.seed, _COMBO_STREAM, index)
            combos.append(Combo(index, int(hidden), float(lr), float(dropout), seed))
    return combos


def _stacks(
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


# ---------------------------------------------------------------------------- torch runtime


@contextlib.contextmanager
def torch_runtime(threads: int | None) -> Iterator[None]:
    """Deterministic algorithms and (optionally) a thread count, restored afterwards."""
    import torch

    # cuBLAS is only deterministic with a fixed workspace; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_det, warn_only=previous_warn)
        torch.set_num_threads(previous_threads)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but no CUDA GPU is available")
    return device


class _ComboDropout:
    """Dropout masks drawn per combination from that combination's own generator."""

    def __init__(
        self, rates: Sequence[float], generators: Sequence[torch.Generator], device: str
    ) -> None:
        import torch

        self.generators = list(generators)
        self.device = device
        self.rates = torch.tensor(list(rates), dtype=torch.float32, device=device)
        self.scales = 1.0 / (1.0 - self.rates)

    def keep(self, shape: tuple[int, ...]) -> torch.Tensor:
        import torch

        uniform = torch.empty((len(self.generators), *shape), device=self.device)
        for c, generator in enumerate(self.generators):
            uniform[c].uniform_(generator=generator)
        view = (-1,) + (1,) * len(shape)
        zero = uniform.new_zeros(())
        return torch.where(uniform >= self.rates.view(view), self.scales.view(view), zero)

    def drop_branches(self, mask: torch.Tensor, rate: float) -> torch.Tensor:
        """``mask (K,B,1,M)`` -> ``(K,B,C,M)`` with whole branches dropped (never all of a row)."""
        import torch

        shape = (mask.shape[0], mask.shape[1], mask.shape[3])
        dropped = torch.stack(
            [torch.rand(shape, generator=g, device=self.device) < rate for g in self.generators],
            dim=2,
        )
        kept = mask & ~dropped
        return torch.where(kept.any(dim=-1, keepdim=True), kept, mask.expand_as(kept))


# ---------------------------------------------------------------------------- device data


@dataclass
class _DeviceData:
    xs: list[torch.Tensor]
    present: torch.Tensor
    labels: torch.Tensor
    valence: torch.Tensor
    projections: list[tuple[torch.Tensor, torch.Tensor] | None]


@dataclass
class _FoldPlan:
    train_rows: list[np.ndarray]
    val_rows: torch.Tensor
    val_valid: torch.Tensor
    epoch_length: int
    val_index: list[np.ndarray]


def _fit_projection(x: np.ndarray, present: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top-``rank`` principal directions ``(D, rank)`` of the present rows."""
    import torch

    rows = torch.as_tensor(x[present], dtype=torch.float64)
    mean = rows.mean(dim=0) if len(rows) else torch.zeros(x.shape[1], dtype=torch.float64)
    centred = rows - mean
    # torch's eigh honours torch's thread setting (numpy's BLAS may oversubscribe a small CPU).
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    top = vectors.flip(-1)[:, :rank]
    return mean.float().numpy(), np.ascontiguousarray(top.float().numpy())


def _device_data(rows: TrainingRows, config: FusionTrainConfig, device: str) -> _DeviceData:
    import torch

    xs, projections = [], []
    for m, x in enumerate(rows.features):
        projection = None
        if config.pca_dim is not None and config.pca_dim < x.shape[1]:
            mean, basis = _fit_projection(x, rows.present[:, m], config.pca_dim)
            x = ((x - mean) @ basis).astype(np.float32)
            x[~rows.present[:, m]] = 0.0
            projection = (
                torch.as_tensor(mean, device=device),
                torch.as_tensor(basis, device=device),
            )
        xs.append(torch.as_tensor(np.ascontiguousarray(x), device=device))
        projections.append(projection)
    return _DeviceData(
        xs=xs,
        present=torch.as_tensor(rows.present, device=device),
        labels=torch.as_tensor(rows.labels, device=device),
        valence=torch.as_tensor(rows.valence, device=device),
        projections=projections,
    )


def _row_folds(rows: TrainingRows, folds: np.ndarray) -> np.ndarray:
    """Fold of every row: labelled rows their own, augmented rows their source's, pseudo -1."""
    row_fold = np.full(rows.n_rows, -1, dtype=np.int64)
    labelled = rows.labelled_rows
    row_fold[labelled] = folds
    with_source = rows.source >= 0
    row_fold[with_source] = row_fold[rows.source[with_source]]
    return row_fold


def _fold_plan(rows: TrainingRows, folds: np.ndarray, n_folds: int, device: str) -> _FoldPlan:
    import torch

    row_fold = _row_folds(rows, folds)
    labelled = rows.kind == LABELLED
    train_rows = [np.flatnonzero(row_fold != k) for k in range(n_folds)]
    val_index = [np.flatnonzero(labelled & (row_fold == k)) for k in range(n_folds)]
    width = max(len(v) for v in val_index)
    val_rows = np.zeros((n_folds, width), dtype=np.int64)
    val_valid = np.zeros((n_folds, width), dtype=bool)
    for k, members in enumerate(val_index):
        val_rows[k, : len(members)] = members
        val_valid[k, : len(members)] = True
    return _FoldPlan(
        train_rows=train_rows,
        val_rows=torch.as_tensor(val_rows, device=device),
        val_valid=torch.as_tensor(val_valid, device=device),
        epoch_length=max(len(t) for t in train_rows),
        val_index=val_index,
    )


def _epoch_order(plan: _FoldPlan, generator: torch.Generator, device: str) -> torch.Tensor:
    """``(K, L)`` training rows of one epoch, a fresh shuffle per fold.

    Folds whose training part is shorter than the longest (L) repeat that many random rows of
    their own, so that all folds step in lockstep with identical batch shapes.
    """
    import torch

    orders = []
    for rows in plan.train_rows:
        count = len(rows)
        extra = torch.randint(count, (plan.epoch_length - count,), generator=generator)
        positions = torch.cat([torch.arange(count), extra])
        positions = positions[torch.randperm(plan.epoch_length, generator=generator)]
        orders.append(torch.as_tensor(rows)[positions])
    return torch.stack(orders).to(device)


# ---------------------------------------------------------------------------- one stack


@dataclass
class _StackOutcome:
    results: list[ComboResult]
    best_params: dict[str, torch.Tensor]
    best_logits: torch.Tensor
    combos: list[Combo]


class _StackTrainer:
    """Train C combinations × K folds sharing (d, lr) as one set of stacked tensors."""

    def __init__(
        self,
        arch: FusionArchitecture,
        data: _DeviceData,
        plan: _FoldPlan,
        combos: Sequence[Combo],
        config: FusionTrainConfig,
        with_valence: bool,
        device: str,
    ) -> None:
        import torch

        self.arch, self.data, self.plan, self.config = arch, data, plan, config
        self.combos = list(combos)
        self.with_valence, self.device = with_valence, device
        self.n_folds = len(plan.train_rows)
        self.n_combos = len(combos)
        dims = [int(x.shape[1]) for x in data.xs]
        self.specs: dict[str, ParamSpec] = arch.param_specs(dims, combos[0].hidden, len(EMOTIONS))
        self.generators = [torch.Generator(device=device).manual_seed(c.seed) for c in self.combos]
        self.params = init_stacked_params(self.specs, self.n_folds, self.generators, device)
        self.dropout = _ComboDropout([c.dropout for c in combos], self.generators, device)
        self.manual = (
            {name for m in range(len(dims)) for name in arch.first_layer(m)}
            if arch.manual_first_layer
            else set()
        )
        for name, tensor in self.params.items():
            if name in self.manual:
                tensor.grad = torch.zeros_like(tensor)
            else:
                tensor.requires_grad_(True)
        self.optimizer = _adam(list(self.params.values()), combos[0].lr, config.weight_decay)
        shape = (self.n_folds, self.n_combos)
        self.best_score = torch.full(shape, -float("inf"), device=device)
        self.best_waf = torch.zeros(shape, device=device)
        self.best_acc = torch.zeros(shape, device=device)
        self.best_mse = torch.zeros(shape, device=device)
        self.best_epoch = torch.zeros(shape, dtype=torch.long, device=device)
        self.stopped = torch.zeros(shape, dtype=torch.bool, device=device)
        self.best_params = {k: v.detach().clone() for k, v in self.params.items()}
        width = plan.val_rows.shape[1]
        self.best_logits = torch.zeros(
            (self.n_folds, width, self.n_combos, len(EMOTIONS)), device=device
        )
        self.epochs_run = 0

    # -- training
    def train_epoch(self, order: torch.Tensor) -> None:
        batch = self.config.batch_size
        for start in range(0, order.shape[1], batch):
            self._step(order[:, start : start + batch])
        self.epochs_run += 1

    def _step(self, index: torch.Tensor) -> None:
        import torch
        import torch.nn.functional as F

        data = self.data
        xs = [x[index] for x in data.xs]
        mask = data.present[index].unsqueeze(2)
        if self.config.modality_dropout > 0:
            mask = self.dropout.drop_branches(mask, self.config.modality_dropout)
        if self.manual:
            with torch.no_grad():
                pres = self.arch.pre_activations(self.params, xs, self.n_combos)
            for pre in pres:
                pre.requires_grad_(True)
        else:
            pres = self.arch.pre_activations(self.params, xs, self.n_combos, self.dropout)
        out = self.arch.head(self.params, pres, mask, self.dropout)
        labels = data.labels[index]
        rows = labels.shape[1]
        target = labels.unsqueeze(2).expand(-1, -1, self.n_combos)
        # Summing the per-(fold, combination) mean losses keeps every slice's gradient its own.
        loss = (
            F.cross_entropy(
                out.logits.reshape(-1, len(EMOTIONS)), target.reshape(-1), reduction="sum"
            )
            / rows
        )
        if self.with_valence:
            loss = loss + _masked_mse(out.valence, data.valence[index]).sum()
        for name, tensor in self.params.items():
            if name not in self.manual:
                tensor.grad = None
        loss.backward()
        if self.manual:
            self._first_layer_grads(xs, pres)
        self.optimizer.step()

    def _first_layer_grads(self, xs: Sequence[torch.Tensor], pres: Sequence[torch.Tensor]) -> None:
        import torch

        for m, (x, pre) in enumerate(zip(xs, pres, strict=True)):
            weight_name, bias_name = self.arch.first_layer(m)
            grad = pre.grad
            assert grad is not None
            weight_grad = self.params[weight_name].grad
            bias_grad = self.params[bias_name].grad
            assert weight_grad is not None and bias_grad is not None
            torch.bmm(x.transpose(1, 2), grad, out=weight_grad)
            torch.sum(grad, dim=1, keepdim=True, out=bias_grad)

    # -- validation
    def evaluate(self, epoch: int) -> None:
        import torch

        with torch.no_grad():
            self._evaluate(epoch)

    def _evaluate(self, epoch: int) -> None:
        import torch

        logits, valence = self._validation_outputs()
        truth = self.data.labels[self.plan.val_rows]
        valid = self.plan.val_valid
        waf, acc = _waf_acc(logits.argmax(dim=-1), truth, valid)
        score = waf
        mse = torch.zeros_like(waf)
        if self.with_valence:
            mse = _masked_mse(valence, self.data.valence[self.plan.val_rows], valid)
            score = waf - MER2023_MSE_WEIGHT * mse
        improved = (score > self.best_score) & ~self.stopped
        if bool(improved.any()):
            self.best_score = torch.where(improved, score, self.best_score)
            self.best_waf = torch.where(improved, waf, self.best_waf)
            self.best_acc = torch.where(improved, acc, self.best_acc)
            self.best_mse = torch.where(improved, mse, self.best_mse)
            self.best_epoch = torch.where(improved, epoch, self.best_epoch)
            where_combos(self.specs, improved, self.params, self.best_params, self.n_combos)
            chosen = improved[:, None, :, None]
            self.best_logits = torch.where(chosen, logits, self.best_logits)
        if self.config.patience is not None:
            self.stopped |= (epoch - self.best_epoch) >= self.config.patience

    def all_stopped(self) -> bool:
        return bool(self.stopped.all())

    def _validation_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        logits, valence = [], []
        with torch.no_grad():
            for start in range(0, self.plan.val_rows.shape[1], EVAL_CHUNK):
                index = self.plan.val_rows[:, start : start + EVAL_CHUNK]
                xs = [x[index] for x in self.data.xs]
                mask = self.data.present[index].unsqueeze(2)
                out = self.arch.forward(self.params, xs, mask, self.n_combos)
                logits.append(out.logits)
                valence.append(out.valence)
        return torch.cat(logits, dim=1), torch.cat(valence, dim=1)

    # -- results
    def outcome(self) -> _StackOutcome:
        results = []
        for c, combo in enumerate(self.combos):
            score = self.best_score[:, c].tolist()
            waf = self.best_waf[:, c].tolist()
            acc = self.best_acc[:, c].tolist()
            mse = self.best_mse[:, c].tolist() if self.with_valence else None
            results.append(
                ComboResult(
                    index=combo.index,
                    hidden=combo.hidden,
                    lr=combo.lr,
                    dropout=combo.dropout,
                    seed=combo.seed,
                    fold_score=score,
                    fold_waf=waf,
                    fold_acc=acc,
                    fold_mse=mse,
                    best_epochs=[int(e) + 1 for e in self.best_epoch[:, c].tolist()],
                    epochs_run=self.epochs_run,
                    score_mean=float(np.mean(score)),
                    score_std=float(np.std(score)),
                    waf_mean=float(np.mean(waf)),
                    waf_std=float(np.std(waf)),
                    acc_mean=float(np.mean(acc)),
                    acc_std=float(np.std(acc)),
                    mse_mean=None if mse is None else float(np.mean(mse)),
                    mse_std=None if mse is None else float(np.std(mse)),
                )
            )
        return _StackOutcome(results, self.best_params, self.best_logits, self.combos)


def _adam(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch's Adam (L2 weight decay, as MERTools), fused into one kernel where supported."""
    import torch

    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


def _masked_mse(
    predicted: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-(fold, combination) MSE over rows with known valence: (K,B,C), (K,B) -> (K,C)."""
    import torch

    known = ~torch.isnan(truth)
    if valid is not None:
        known = known & valid
    diff = predicted - torch.nan_to_num(truth).unsqueeze(-1)
    squared = torch.where(known.unsqueeze(-1), diff * diff, torch.zeros_like(diff))
    count = known.sum(dim=1).clamp(min=1).to(predicted.dtype)
    return squared.sum(dim=1) / count.unsqueeze(-1)


def _waf_acc(
    predicted: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's weighted F1 and accuracy per (fold, combination).

    ``predicted (K,V,C)``, ``truth (K,V)``, ``valid (K,V)`` -> two ``(K, C)`` tensors.
    """
    import torch

    truth3 = truth.unsqueeze(-1)
    valid3 = valid.unsqueeze(-1)
    dtype = torch.float32
    support_total = valid.sum(dim=1).to(dtype).clamp(min=1)
    waf = torch.zeros(predicted.shape[0], predicted.shape[2], device=predicted.device)
    for cls in range(len(EMOTIONS)):
        is_pred = (predicted == cls) & valid3
        is_true = ((truth3 == cls) & valid3).to(dtype)
        true_positive = (is_pred & (truth3 == cls)).sum(dim=1).to(dtype)
        support = is_true.sum(dim=1)
        denominator = support + is_pred.sum(dim=1).to(dtype)
        f1 = torch.where(
            denominator > 0, 2 * true_positive / denominator.clamp(min=1), torch.zeros_like(support)
        )
        waf = waf + f1 * support
    correct = ((predicted == truth3) & valid3).sum(dim=1).to(dtype)
    return waf / support_total.unsqueeze(-1), correct / support_total.unsqueeze(-1)


# ---------------------------------------------------------------------------- the search


def _fold_projections(
    arch: FusionArchitecture,
    params: dict[str, torch.Tensor],
    projections: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
) -> dict[str, torch.Tensor]:
    """Turn first layers trained on principal components into full-width input weights.

    ``(x - μ) P W + b = x (P W) + (b - μ P W)``: the saved model reads raw features.
    """
    import torch

    out = dict(params)
    for m, projection in enumerate(projections):
        if projection is None:
            continue
        mean, basis = projection
        weight_name, bias_name = arch.first_layer(m)
        full = torch.matmul(basis, params[weight_name])
        shift = torch.matmul(mean, full).unsqueeze(1)
        out[weight_name] = full.contiguous()
        out[bias_name] = (params[bias_name] - shift).contiguous()
    return out


def _per_combo_param_count(specs: Mapping[str, ParamSpec], n_folds: int) -> int:
    return sum(int(np.prod(stacked_shape(spec, n_folds, 1))) for spec in specs.values())


def cross_validate(
    rows: TrainingRows, config: FusionTrainConfig, progress: Progress | None = None
) -> SearchResult:
    """Run the random search with k-fold CV on ``rows`` and keep the best combination."""

    started = time.perf_counter()
    say = progress or (lambda _message: None)
    device = resolve_device(config.device)
    arch = get_architecture(config.model)
    labelled = rows.labelled_rows
    folds = stratified_folds(rows.labels[labelled], config.folds, config.seed)
    with torch_runtime(config.threads):
        known_valence = bool(np.isfinite(rows.valence[labelled]).any())
        with_valence = config.valence == "on" or (config.valence == "auto" and known_valence)
        data = _device_data(rows, config, device)
        plan = _fold_plan(rows, folds, config.folds, device)
        combos = sample_combos(config)
        dims = [int(x.shape[1]) for x in data.xs]
        sizes = {
            h: _per_combo_param_count(arch.param_specs(dims, h, len(EMOTIONS)), config.folds)
            for h in config.hidden
        }
        results: list[ComboResult] = []
        best: tuple[ComboResult, _StackOutcome, int] | None = None
        for stack in _stacks(combos, sizes, config.max_stack_params):
            outcome = _train_stack(arch, data, plan, stack, config, with_valence, device, say)
            results.extend(outcome.results)
            for c, result in enumerate(outcome.results):
                if best is None or _better(result, best[0]):
                    best = (result, outcome, c)
        assert best is not None
        best_result, best_outcome, column = best
        specs = arch.param_specs(dims, best_result.hidden, len(EMOTIONS))
        chosen = select_combo(specs, best_outcome.best_params, column, len(best_outcome.combos))
        chosen = {
            k: v.detach().cpu()
            for k, v in _fold_projections(arch, chosen, data.projections).items()
        }
        oof = _out_of_fold_probs(best_outcome.best_logits[:, :, column], plan, len(labelled))
    results.sort(key=lambda r: r.index)
    return SearchResult(
        combos=results,
        best=best_result,
        params=chosen,
        folds=folds,
        oof_probs=oof,
        with_valence=with_valence,
        elapsed_s=time.perf_counter() - started,
        n_train_rows=rows.n_rows,
    )


def _better(candidate: ComboResult, incumbent: ComboResult) -> bool:
    """Higher mean CV score wins; ties go to the earlier-drawn combination."""
    if candidate.score_mean != incumbent.score_mean:
        return candidate.score_mean > incumbent.score_mean
    return candidate.index < incumbent.index


def _train_stack(
    arch: FusionArchitecture,
    data: _DeviceData,
    plan: _FoldPlan,
    stack: Sequence[Combo],
    config: FusionTrainConfig,
    with_valence: bool,
    device: str,
    say: Progress,
) -> _StackOutcome:
    import torch

    trainer = _StackTrainer(arch, data, plan, stack, config, with_valence, device)
    # Every stack replays the same batch order, so results do not depend on the grouping.
    order_generator = torch.Generator().manual_seed(_seed_for(config.seed, _ORDER_STREAM))
    label = f"d={stack[0].hidden} lr={stack[0].lr:g} ({len(stack)} combos × {config.folds} folds)"
    began = time.perf_counter()
    for epoch in range(config.epochs):
        trainer.train_epoch(_epoch_order(plan, order_generator, device))
        trainer.evaluate(epoch)
        if trainer.all_stopped():
            break
    outcome = trainer.outcome()
    top = max(r.waf_mean for r in outcome.results)
    say(
        f"{label}: {trainer.epochs_run} epochs in {time.perf_counter() - began:.1f}s, "
        f"best CV WAF {100 * top:.2f}"
    )
    return outcome


def _out_of_fold_probs(logits: torch.Tensor, plan: _FoldPlan, n_labelled: int) -> np.ndarray:
    """Held-out probabilities of every labelled row (its fold's model at its best epoch)."""
    import torch

    probs = torch.softmax(logits, dim=-1).cpu().numpy()
    out = np.zeros((n_labelled, len(EMOTIONS)), dtype=np.float64)
    for k, members in enumerate(plan.val_index):
        out[members] = probs[k, : len(members)]
    return out


# ---------------------------------------------------------------------------- end to end


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
