"""The search's data on the device: feature matrices, optional PCA projection, fold plan, batches.

All features live on the device as one matrix per branch and batches are index gathers. Folds step
in lockstep: a fold whose training part is shorter repeats random rows of its own, so every fold's
batch has the same shape. The torch runtime (deterministic algorithms, thread count) is set here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from meragent.finetune.fusion_config import FusionTrainConfig
from meragent.finetune.fusion_data import (
    LABELLED,
    TrainingRows,
)

if TYPE_CHECKING:
    import torch

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


# ---------------------------------------------------------------------------- device data


@dataclass
class DeviceData:
    xs: list[torch.Tensor]
    present: torch.Tensor
    labels: torch.Tensor
    valence: torch.Tensor
    projections: list[tuple[torch.Tensor, torch.Tensor] | None]
    #: The features in the first layers' compute dtype (the same tensors in fp32).
    compute_xs: list[torch.Tensor]


@dataclass
class FoldPlan:
    train_rows: list[np.ndarray]
    val_rows: torch.Tensor
    val_valid: torch.Tensor
    epoch_length: int
    val_index: list[np.ndarray]


def _fit_projection(x: np.ndarray, present: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top-``rank`` principal directions ``(D, rank)`` of the present rows (sklearn PCA).

    Fewer present rows than ``rank`` leave the extra directions zero (they carry no signal).
    """
    import torch
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    rows = np.asarray(x[present], dtype=np.float64)
    basis = np.zeros((x.shape[1], rank), dtype=np.float32)
    if len(rows) == 0:
        return np.zeros(x.shape[1], dtype=np.float32), basis
    components = min(rank, len(rows), x.shape[1])
    # numpy's BLAS would otherwise take every core of a small, shared CPU.
    with threadpool_limits(limits=torch.get_num_threads()):
        pca = PCA(n_components=components, svd_solver="covariance_eigh").fit(rows)
    basis[:, :components] = pca.components_.T
    return pca.mean_.astype(np.float32), basis


def device_data(rows: TrainingRows, config: FusionTrainConfig, device: str) -> DeviceData:
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
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    return DeviceData(
        xs=xs,
        present=torch.as_tensor(rows.present, device=device),
        labels=torch.as_tensor(rows.labels, device=device),
        valence=torch.as_tensor(rows.valence, device=device),
        projections=projections,
        compute_xs=[x.to(dtype) for x in xs],
    )


def _row_folds(rows: TrainingRows, folds: np.ndarray) -> np.ndarray:
    """Fold of every row: labelled rows their own, augmented rows their source's, pseudo -1."""
    row_fold = np.full(rows.n_rows, -1, dtype=np.int64)
    labelled = rows.labelled_rows
    row_fold[labelled] = folds
    with_source = rows.source >= 0
    row_fold[with_source] = row_fold[rows.source[with_source]]
    return row_fold


def fold_plan(rows: TrainingRows, folds: np.ndarray, n_folds: int, device: str) -> FoldPlan:
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
    return FoldPlan(
        train_rows=train_rows,
        val_rows=torch.as_tensor(val_rows, device=device),
        val_valid=torch.as_tensor(val_valid, device=device),
        epoch_length=max(len(t) for t in train_rows),
        val_index=val_index,
    )


def epoch_order(plan: FoldPlan, generator: torch.Generator, device: str) -> torch.Tensor:
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
