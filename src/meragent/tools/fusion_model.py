"""Trained fusion models: the ``config.json`` schema, loading a model directory, inference.

A saved model is one combination (C = 1) of a :mod:`meragent.tools.fusion_arch` architecture with
its K fold models: inference averages the folds' logits (MERTools' test protocol) and the folds'
valence and attention weights. The architectures and the stacked-parameter helpers are
re-exported here for callers that only know this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from meragent.errors import DataError, ModelLoadError
from meragent.schema import EMOTIONS
from meragent.tools.fusion_arch import (
    ARCHITECTURES,
    AttentionFusion,
    DropoutSource,
    FusionArchitecture,
    HeadOutput,
    MERToolsAttention,
    ParamSpec,
    combo_view,
    get_architecture,
    init_stacked_params,
    select_combo,
    stacked_shape,
    where_combos,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "ARCHITECTURES",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "AttentionFusion",
    "BatchPrediction",
    "BranchConfig",
    "CVSummary",
    "DropoutSource",
    "FusionArchitecture",
    "FusionModelConfig",
    "FusionOutput",
    "FusionPredictor",
    "HeadOutput",
    "MERToolsAttention",
    "ParamSpec",
    "combo_view",
    "expected_shapes",
    "get_architecture",
    "init_stacked_params",
    "load_fusion_model",
    "read_fusion_config",
    "select_combo",
    "stacked_shape",
    "where_combos",
]

#: File names inside a trained model directory.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Bumped when the directory layout changes incompatibly.
FORMAT_VERSION = 1
#: Rows per forward pass at inference (bounds memory on 100k-clip pools).
PREDICT_CHUNK = 4096


class BranchConfig(BaseModel):
    """One input branch: its encoders (features concatenated in this order) and total width."""

    name: str
    encoders: list[str] = Field(min_length=1)
    dim: int = Field(gt=0)
    #: Width of each encoder's part (None when unknown); sums to ``dim``.
    encoder_dims: list[int] | None = None

    @model_validator(mode="after")
    def _parts_add_up(self) -> BranchConfig:
        if self.encoder_dims is not None and (
            len(self.encoder_dims) != len(self.encoders) or sum(self.encoder_dims) != self.dim
        ):
            raise ValueError(f"encoder_dims {self.encoder_dims} do not add up to dim {self.dim}")
        return self


class CVSummary(BaseModel):
    """Cross-validation scores of the saved combination (held-out folds, best epoch each)."""

    waf_mean: float
    waf_std: float
    acc_mean: float
    acc_std: float
    mse_mean: float | None = None
    mse_std: float | None = None
    score_mean: float
    score_std: float
    fold_waf: list[float]
    fold_acc: list[float]
    best_epochs: list[int]


class FusionModelConfig(BaseModel):
    """``config.json`` of a trained fusion-model directory."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    model: str
    branches: list[BranchConfig] = Field(min_length=1)
    hidden: int = Field(gt=0)
    dropout: float = Field(ge=0.0, lt=1.0)
    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    batch_size: int = Field(gt=0)
    epochs: int = Field(gt=0)
    folds: int = Field(ge=1)
    seed: int
    classes: list[str] = Field(default_factory=lambda: list(EMOTIONS))
    with_valence: bool = False
    modality_dropout: float = 0.0
    pca_dim: int | None = None
    #: Compute precision of the first layers during training (the saved weights are fp32).
    precision: Literal["fp32", "bf16"] = "fp32"
    cv: CVSummary | None = None
    n_train_clips: int = 0
    extra: dict[str, object] = Field(default_factory=dict)

    @field_validator("classes")
    @classmethod
    def _six_classes(cls, value: list[str]) -> list[str]:
        if list(value) != list(EMOTIONS):
            raise ValueError(f"classes must be {list(EMOTIONS)} (MERTools order), got {value}")
        return value

    @property
    def encoders(self) -> list[str]:
        """Every encoder the model reads, in branch order, each once."""
        seen: dict[str, None] = {}
        for branch in self.branches:
            for encoder in branch.encoders:
                seen.setdefault(encoder, None)
        return list(seen)


class FusionOutput(BaseModel):
    """One clip's fused answer: class probabilities (EMOTIONS order), valence, branch weights."""

    probs: dict[str, float]
    valence: float | None = None
    attention: dict[str, float] = Field(default_factory=dict)

    @property
    def discrete(self) -> str:
        """The most probable class (ties go to the earlier class in EMOTIONS order)."""
        return max(EMOTIONS, key=lambda e: (self.probs.get(e, 0.0), -EMOTIONS.index(e)))


@dataclass
class BatchPrediction:
    """Predictions for N rows: ``probs (N, 6)``, ``valence (N,)`` or None, ``attention (N, M)``."""

    probs: np.ndarray
    valence: np.ndarray | None
    attention: np.ndarray


class FusionPredictor:
    """A trained fusion model (K fold models of one combination) ready for inference."""

    def __init__(
        self,
        config: FusionModelConfig,
        params: Mapping[str, torch.Tensor],
        *,
        device: str = "cpu",
        model_id: str = "attention",
    ) -> None:
        self.config = config
        self.arch = get_architecture(config.model)
        self.params = dict(params)
        self.device = device
        self.model_id = model_id

    @property
    def encoders(self) -> list[str]:
        return self.config.encoders

    @property
    def branch_names(self) -> list[str]:
        return [branch.name for branch in self.config.branches]

    def branch_inputs(
        self, features: Mapping[str, np.ndarray | None]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """One clip's features (keyed by encoder) -> per-branch ``(1, D)`` arrays and presence.

        A branch is present only when all of its encoders are; a wrong width is a DataError
        naming the encoder.
        """
        arrays: list[np.ndarray] = []
        present = np.zeros((1, len(self.config.branches)), dtype=bool)
        for m, branch in enumerate(self.config.branches):
            parts = []
            widths: list[int | None] = (
                list(branch.encoder_dims) if branch.encoder_dims else [None] * len(branch.encoders)
            )
            for encoder, width in zip(branch.encoders, widths, strict=True):
                value = features.get(encoder)
                if value is None:
                    break
                part = np.asarray(value, dtype=np.float32).reshape(-1)
                if width is not None and part.shape[0] != width:
                    raise DataError(
                        f"encoder {encoder!r}: got {part.shape[0]} feature values, "
                        f"the fusion model expects {width}"
                    )
                parts.append(part)
            if len(parts) == len(branch.encoders):
                row = np.concatenate(parts) if len(parts) > 1 else parts[0]
                if row.shape[0] != branch.dim:
                    raise DataError(
                        f"fusion input {branch.name!r}: got {row.shape[0]} feature values, "
                        f"the model expects {branch.dim}"
                    )
                arrays.append(row[None, :])
                present[0, m] = True
            else:
                arrays.append(np.zeros((1, branch.dim), dtype=np.float32))
        return arrays, present

    def predict(self, features: Mapping[str, np.ndarray | None]) -> FusionOutput:
        """Fuse one clip's cached embeddings (missing encoders: None or absent)."""
        arrays, present = self.branch_inputs(features)
        if not present.any():
            wanted = ", ".join(self.encoders)
            raise DataError(f"no features for any fusion input (expects: {wanted})")
        batch = self.predict_batch(arrays, present)
        probs = {e: float(batch.probs[0, i]) for i, e in enumerate(EMOTIONS)}
        valence = None if batch.valence is None else float(batch.valence[0])
        attention = {name: float(batch.attention[0, m]) for m, name in enumerate(self.branch_names)}
        return FusionOutput(probs=probs, valence=valence, attention=attention)

    def predict_batch(
        self, branch_arrays: Sequence[np.ndarray], present: np.ndarray
    ) -> BatchPrediction:
        """Predict N rows at once: ``branch_arrays[m]`` is ``(N, D_m)``, ``present`` ``(N, M)``."""
        import torch

        n_rows = int(present.shape[0])
        probs, valence, attention = [], [], []
        with torch.inference_mode():
            for start in range(0, n_rows, PREDICT_CHUNK):
                stop = min(start + PREDICT_CHUNK, n_rows)
                xs = [
                    torch.as_tensor(np.ascontiguousarray(a[start:stop]), device=self.device)
                    for a in branch_arrays
                ]
                mask = torch.as_tensor(present[start:stop], device=self.device)[None, :, None, :]
                out = self.arch.forward(self.params, xs, mask, n_combos=1)
                # Mean of the folds' logits, then softmax (MERTools averages fold outputs).
                logits = out.logits[:, :, 0, :].mean(dim=0)
                probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
                valence.append(out.valence[:, :, 0].mean(dim=0).cpu().numpy())
                attention.append(out.attention[:, :, 0, :].mean(dim=0).cpu().numpy())
        if not probs:
            empty = np.zeros((0, len(EMOTIONS)), dtype=np.float32)
            return BatchPrediction(empty, None, np.zeros((0, len(self.config.branches))))
        return BatchPrediction(
            probs=np.concatenate(probs).astype(np.float64),
            valence=np.concatenate(valence).astype(np.float64)
            if self.config.with_valence
            else None,
            attention=np.concatenate(attention).astype(np.float64),
        )


def expected_shapes(config: FusionModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes a saved model of ``config`` must have (K folds, one combination)."""
    arch = get_architecture(config.model)
    dims = [branch.dim for branch in config.branches]
    specs = arch.param_specs(dims, config.hidden, len(EMOTIONS))
    return {name: stacked_shape(spec, config.folds, 1) for name, spec in specs.items()}


def read_fusion_config(path: Path) -> FusionModelConfig:
    """Read and validate ``<path>/config.json`` (``ModelLoadError`` with the reason)."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise ModelLoadError("fusion", str(path), f"no {CONFIG_FILE} in the model directory")
    try:
        config = FusionModelConfig.model_validate(json.loads(config_path.read_text("utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            "fusion", str(path), f"{CONFIG_FILE} is not valid JSON: {exc}"
        ) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelLoadError(
            "fusion", str(path), f"{CONFIG_FILE}: {where}: {first['msg']}"
        ) from None
    if config.format_version != FORMAT_VERSION:
        raise ModelLoadError(
            "fusion", str(path), f"format_version {config.format_version} is not {FORMAT_VERSION}"
        )
    if config.model not in ARCHITECTURES:
        raise ModelLoadError("fusion", str(path), f"unknown fusion model {config.model!r}")
    return config


def load_fusion_model(path: Path, device: str = "cpu") -> FusionPredictor:
    """Load a trained fusion-model directory (``config.json`` + ``model.safetensors``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelLoadError("fusion", str(path), "not a directory")
    config = read_fusion_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError("fusion", str(path), f"no {WEIGHTS_FILE} in the model directory")
    try:
        params = load_file(str(weights), device=device)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelLoadError("fusion", str(path), f"cannot read {WEIGHTS_FILE}: {exc}") from None
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(params))
    if missing:
        raise ModelLoadError("fusion", str(path), f"weights lack {', '.join(missing)}")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            got = tuple(params[name].shape)
            raise ModelLoadError("fusion", str(path), f"{name} has shape {got}, expected {shape}")
    params = {name: params[name].float() for name in expected}
    return FusionPredictor(config, params, device=device, model_id=f"fusion:{path.name}")
