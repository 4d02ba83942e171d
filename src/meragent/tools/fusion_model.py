"""Attention-fusion heads for the six-class tracks: architectures, trained-model loading, inference.

Two named architectures (:data:`ARCHITECTURES`), both over any number of *branches* (one per
encoder, or several encoders concatenated, e.g. ``hubert-large+emotion2vec``):

* ``attention`` — MER2024 Eq. 1-3: per branch ``h_m = ReLU(f_m W_m + b_m)``; one score per branch
  ``h_m·w_α + b_α`` (``w_α`` shared); softmax over the branches *present* (a missing branch is
  masked out of the softmax, weight 0); ``z = Σ α_m h_m``; dropout; ``Linear(d, 6)`` and
  ``Linear(d, 1)`` for valence.
* ``mertools_attention`` — MERTools' released variant: 3-layer MLP encoders with dropout on their
  input, an MLP (same shape) over the concatenated branch embeddings and a linear layer giving one
  raw, un-normalised weight per branch; ``z = Σ w_m h_m``; no dropout after fusion. A missing
  branch gets a zero embedding and weight 0.

Parameters are *stacked*: every tensor has a leading fold axis K and holds C hyper-parameter
combinations at once, so the k-fold training of many combinations runs as a few large batched
matmuls. The first layer of each branch is stored as ``(K, D, C*d)`` so one input batch of a fold
meets every combination's weights in a single wide matmul; all other tensors are ``(K, C, ...)``.
A saved model is one combination (C = 1) with its K fold models: inference averages the folds'
logits (MERTools' test protocol) and the folds' valence and attention weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

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

if TYPE_CHECKING:
    import torch

#: File names inside a trained model directory.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Bumped when the directory layout changes incompatibly.
FORMAT_VERSION = 1
#: Rows per forward pass at inference (bounds memory on 100k-clip pools).
PREDICT_CHUNK = 4096
#: Score given to masked branches before the softmax: exp() of it is exactly 0 in float32, and
#: unlike -inf it keeps an all-masked row finite (its weights are then zeroed by the mask).
_MASKED_SCORE = -1e9

Layout = Literal["first", "kc"]


@dataclass(frozen=True)
class ParamSpec:
    """Shape of one parameter for a single (fold, combination) and how it is stacked.

    ``layout="first"``: a branch's first linear layer, stored ``(K, D, C*d)`` (weight) or
    ``(K, 1, C*d)`` (bias). ``layout="kc"``: stored ``(K, C, *shape)``. ``fan_in`` sets PyTorch's
    default ``nn.Linear`` initialisation bound ``1/sqrt(fan_in)``.
    """

    layout: Layout
    shape: tuple[int, ...]
    fan_in: int


@dataclass
class HeadOutput:
    """What a stacked forward pass returns: ``logits (K,B,C,n)``, ``valence (K,B,C)``,
    ``attention (K,B,C,M)`` (softmax weights for ``attention``, raw weights for MERTools)."""

    logits: torch.Tensor
    valence: torch.Tensor
    attention: torch.Tensor


class DropoutSource(Protocol):
    """Draws dropout keep-multipliers, one independent draw per stacked combination."""

    def keep(self, shape: tuple[int, ...]) -> torch.Tensor:
        """``(C, *shape)``: 0 where dropped, ``1/(1-p_c)`` where kept."""
        ...


class FusionArchitecture:
    """A fusion network written as functions of stacked parameters (see the module docstring)."""

    name: ClassVar[str]
    #: True when training may compute the first layers' weight gradients by hand (one wide matmul
    #: into a preallocated buffer) because the input batch is shared by all combinations.
    manual_first_layer: ClassVar[bool] = False

    def param_specs(self, dims: Sequence[int], hidden: int, n_classes: int) -> dict[str, ParamSpec]:
        raise NotImplementedError

    def first_layer(self, branch: int) -> tuple[str, str]:
        """Names of branch ``branch``'s first-layer weight and bias."""
        raise NotImplementedError

    def pre_activations(
        self,
        params: Mapping[str, torch.Tensor],
        xs: Sequence[torch.Tensor],
        n_combos: int,
        dropout: DropoutSource | None = None,
    ) -> list[torch.Tensor]:
        """First layer of every branch: ``x (K,B,D) or (B,D)`` -> ``(K, B, C*d)``."""
        return [
            _shared_linear(x, params[w], params[b])
            for x, (w, b) in zip(xs, (self.first_layer(m) for m in range(len(xs))), strict=True)
        ]

    def head(
        self,
        params: Mapping[str, torch.Tensor],
        pres: Sequence[torch.Tensor],
        mask: torch.Tensor,
        dropout: DropoutSource | None = None,
    ) -> HeadOutput:
        """Everything after the first layers; ``mask`` is bool, broadcastable to ``(K,B,C,M)``."""
        raise NotImplementedError

    def forward(
        self,
        params: Mapping[str, torch.Tensor],
        xs: Sequence[torch.Tensor],
        mask: torch.Tensor,
        n_combos: int,
        dropout: DropoutSource | None = None,
    ) -> HeadOutput:
        pres = self.pre_activations(params, xs, n_combos, dropout)
        return self.head(params, pres, mask, dropout)


def _shared_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ W + b`` for every fold: x is ``(K,B,D)`` (one batch per fold) or ``(B,D)`` (shared)."""
    import torch

    if x.dim() == 2:
        return torch.matmul(x, weight) + bias
    return torch.baddbmm(bias, x, weight)


def _per_combo(x: torch.Tensor, n_combos: int) -> torch.Tensor:
    """``(K, B, C*d)`` -> ``(K, B, C, d)`` (a view)."""
    k, b, cd = x.shape
    return x.view(k, b, n_combos, cd // n_combos)


def _kc_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-(fold, combination) linear layer: ``x (K,B,C,i)``, ``W (K,C,i,o)`` -> ``(K,B,C,o)``."""
    import torch

    return torch.einsum("kbci,kcio->kbco", x, weight) + bias[:, None]


def _kc_vector(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-(fold, combination) projection to a scalar: x (K,B,C,i), w (K,C,i) -> (K,B,C)."""
    import torch

    return torch.einsum("kbci,kci->kbc", x, weight) + bias[:, None]


def _mask_float(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(dtype=like.dtype)


class AttentionFusion(FusionArchitecture):
    """MER2024 Eq. 1-3 with masked softmax over the branches present."""

    name = "attention"
    manual_first_layer = True

    def param_specs(self, dims: Sequence[int], hidden: int, n_classes: int) -> dict[str, ParamSpec]:
        specs: dict[str, ParamSpec] = {}
        for m, dim in enumerate(dims):
            specs[f"enc{m}.weight"] = ParamSpec("first", (dim, hidden), dim)
            specs[f"enc{m}.bias"] = ParamSpec("first", (hidden,), dim)
        specs["att.weight"] = ParamSpec("kc", (hidden,), hidden)
        specs["att.bias"] = ParamSpec("kc", (), hidden)
        specs["out.weight"] = ParamSpec("kc", (hidden, n_classes), hidden)
        specs["out.bias"] = ParamSpec("kc", (n_classes,), hidden)
        specs["val.weight"] = ParamSpec("kc", (hidden,), hidden)
        specs["val.bias"] = ParamSpec("kc", (), hidden)
        return specs

    def first_layer(self, branch: int) -> tuple[str, str]:
        return f"enc{branch}.weight", f"enc{branch}.bias"

    def head(
        self,
        params: Mapping[str, torch.Tensor],
        pres: Sequence[torch.Tensor],
        mask: torch.Tensor,
        dropout: DropoutSource | None = None,
    ) -> HeadOutput:
        import torch

        n_combos = params["att.weight"].shape[1]
        # (K, B, C, M, d): Eq. 1 for every branch.
        hidden = torch.stack([torch.relu(_per_combo(p, n_combos)) for p in pres], dim=3)
        # Eq. 3: one shared W_α (d x 1) and b_α score each branch embedding.
        weight_alpha = params["att.weight"][:, None, :, None, :]
        scores = (hidden * weight_alpha).sum(-1) + params["att.bias"][:, None, :, None]
        scores = scores.masked_fill(~mask, _MASKED_SCORE)
        alpha = torch.softmax(scores, dim=-1) * _mask_float(mask, scores)
        fused = (alpha.unsqueeze(-1) * hidden).sum(dim=3)
        if dropout is not None:
            k, b, _, d = fused.shape
            fused = fused * dropout.keep((k, b, d)).permute(1, 2, 0, 3)
        logits = _kc_linear(fused, params["out.weight"], params["out.bias"])
        valence = _kc_vector(fused, params["val.weight"], params["val.bias"])
        return HeadOutput(logits=logits, valence=valence, attention=alpha)


class MERToolsAttention(FusionArchitecture):
    """MERTools' ``Attention`` model: MLP encoders and raw attention weights from an MLP."""

    name = "mertools_attention"
    manual_first_layer = False
    #: Linear layers per MLP encoder (MERTools' ``MLPEncoder``).
    depth = 3

    def param_specs(self, dims: Sequence[int], hidden: int, n_classes: int) -> dict[str, ParamSpec]:
        specs: dict[str, ParamSpec] = {}
        for m, dim in enumerate(dims):
            specs[f"enc{m}.l1.weight"] = ParamSpec("first", (dim, hidden), dim)
            specs[f"enc{m}.l1.bias"] = ParamSpec("first", (hidden,), dim)
            for layer in range(2, self.depth + 1):
                specs[f"enc{m}.l{layer}.weight"] = ParamSpec("kc", (hidden, hidden), hidden)
                specs[f"enc{m}.l{layer}.bias"] = ParamSpec("kc", (hidden,), hidden)
        concat = hidden * len(dims)
        specs["att.l1.weight"] = ParamSpec("kc", (concat, hidden), concat)
        specs["att.l1.bias"] = ParamSpec("kc", (hidden,), concat)
        for layer in range(2, self.depth + 1):
            specs[f"att.l{layer}.weight"] = ParamSpec("kc", (hidden, hidden), hidden)
            specs[f"att.l{layer}.bias"] = ParamSpec("kc", (hidden,), hidden)
        specs["att.fc.weight"] = ParamSpec("kc", (hidden, len(dims)), hidden)
        specs["att.fc.bias"] = ParamSpec("kc", (len(dims),), hidden)
        specs["out.weight"] = ParamSpec("kc", (hidden, n_classes), hidden)
        specs["out.bias"] = ParamSpec("kc", (n_classes,), hidden)
        specs["val.weight"] = ParamSpec("kc", (hidden,), hidden)
        specs["val.bias"] = ParamSpec("kc", (), hidden)
        return specs

    def first_layer(self, branch: int) -> tuple[str, str]:
        return f"enc{branch}.l1.weight", f"enc{branch}.l1.bias"

    def pre_activations(
        self,
        params: Mapping[str, torch.Tensor],
        xs: Sequence[torch.Tensor],
        n_combos: int,
        dropout: DropoutSource | None = None,
    ) -> list[torch.Tensor]:
        if dropout is None:
            return super().pre_activations(params, xs, n_combos)
        import torch

        pres = []
        for m, x in enumerate(xs):
            weight_name, bias_name = self.first_layer(m)
            weight = params[weight_name]
            k, dim, cd = weight.shape
            # Input dropout differs per combination, so each one needs its own matmul here.
            dropped = x.unsqueeze(0) * dropout.keep(tuple(x.shape))
            per_combo = weight.view(k, dim, n_combos, cd // n_combos)
            out = torch.einsum("ckbi,kicd->kbcd", dropped, per_combo)
            pres.append(out.reshape(k, x.shape[-2], cd) + params[bias_name])
        return pres

    def _mlp_tail(
        self, params: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor
    ) -> torch.Tensor:
        import torch

        for layer in range(2, self.depth + 1):
            x = torch.relu(
                _kc_linear(
                    x, params[f"{prefix}.l{layer}.weight"], params[f"{prefix}.l{layer}.bias"]
                )
            )
        return x

    def head(
        self,
        params: Mapping[str, torch.Tensor],
        pres: Sequence[torch.Tensor],
        mask: torch.Tensor,
        dropout: DropoutSource | None = None,
    ) -> HeadOutput:
        import torch

        n_combos = params["out.weight"].shape[1]
        encoded = [
            self._mlp_tail(params, f"enc{m}", torch.relu(_per_combo(p, n_combos)))
            for m, p in enumerate(pres)
        ]
        hidden = torch.stack(encoded, dim=3)  # (K, B, C, M, d)
        maskf = _mask_float(mask, hidden)
        hidden = hidden * maskf.unsqueeze(-1)  # a missing branch contributes a zero embedding
        k, b, c, m, d = hidden.shape
        concat = hidden.reshape(k, b, c, m * d)
        if dropout is not None:
            concat = concat * dropout.keep((k, b, m * d)).permute(1, 2, 0, 3)
        att = torch.relu(_kc_linear(concat, params["att.l1.weight"], params["att.l1.bias"]))
        att = self._mlp_tail(params, "att", att)
        weights = _kc_linear(att, params["att.fc.weight"], params["att.fc.bias"]) * maskf
        fused = (weights.unsqueeze(-1) * hidden).sum(dim=3)
        logits = _kc_linear(fused, params["out.weight"], params["out.bias"])
        valence = _kc_vector(fused, params["val.weight"], params["val.bias"])
        return HeadOutput(logits=logits, valence=valence, attention=weights)


#: Model registry: name -> architecture.
ARCHITECTURES: dict[str, FusionArchitecture] = {
    arch.name: arch for arch in (AttentionFusion(), MERToolsAttention())
}


def get_architecture(name: str) -> FusionArchitecture:
    """The architecture registered as ``name`` (``DataError`` listing the known names)."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise DataError(f"unknown fusion model {name!r} (known: {known})") from None


# ---------------------------------------------------------------------------- stacked params


def stacked_shape(spec: ParamSpec, n_folds: int, n_combos: int) -> tuple[int, ...]:
    if spec.layout == "kc":
        return (n_folds, n_combos, *spec.shape)
    if len(spec.shape) == 2:
        return (n_folds, spec.shape[0], n_combos * spec.shape[1])
    return (n_folds, 1, n_combos * spec.shape[0])


def init_stacked_params(
    specs: Mapping[str, ParamSpec],
    n_folds: int,
    generators: Sequence[torch.Generator],
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """PyTorch's default ``nn.Linear`` init (U(±1/sqrt(fan_in))), one generator per combination.

    Each combination draws only from its own generator, so its initial weights do not depend on
    which other combinations share the stack.
    """
    import torch

    per_combo: dict[str, list[torch.Tensor]] = {name: [] for name in specs}
    for generator in generators:
        for name, spec in specs.items():
            bound = 1.0 / math.sqrt(spec.fan_in)
            shape = (n_folds, *spec.shape)
            draw = torch.rand(shape, generator=generator, device=device)
            per_combo[name].append(draw.mul_(2 * bound).sub_(bound))
    params: dict[str, torch.Tensor] = {}
    for name, spec in specs.items():
        parts = per_combo[name]
        if spec.layout == "kc":
            params[name] = torch.stack(parts, dim=1).contiguous()
        elif len(spec.shape) == 2:
            params[name] = torch.cat(parts, dim=-1).contiguous()
        else:
            params[name] = torch.cat(parts, dim=-1).unsqueeze(1).contiguous()
    return params


def combo_view(spec: ParamSpec, tensor: torch.Tensor, n_combos: int) -> tuple[torch.Tensor, int]:
    """A view of ``tensor`` with an explicit combination axis, and that axis' index."""
    if spec.layout == "kc":
        return tensor, 1
    k, rows, cd = tensor.shape
    return tensor.view(k, rows, n_combos, cd // n_combos), 2


def select_combo(
    specs: Mapping[str, ParamSpec],
    params: Mapping[str, torch.Tensor],
    combo: int,
    n_combos: int,
) -> dict[str, torch.Tensor]:
    """Copy combination ``combo`` out of a stack, as a C = 1 stack."""
    out = {}
    for name, spec in specs.items():
        view, axis = combo_view(spec, params[name], n_combos)
        picked = view.narrow(axis, combo, 1)
        if spec.layout == "first":
            picked = picked.reshape(picked.shape[0], picked.shape[1], -1)
        out[name] = picked.detach().clone().contiguous()
    return out


def where_combos(
    specs: Mapping[str, ParamSpec],
    chosen: torch.Tensor,
    new: Mapping[str, torch.Tensor],
    old: dict[str, torch.Tensor],
    n_combos: int,
) -> None:
    """``old[name] = new[name]`` for the (fold, combination) slices where ``chosen (K,C)`` holds."""
    import torch

    for name, spec in specs.items():
        new_view, axis = combo_view(spec, new[name], n_combos)
        old_view, _ = combo_view(spec, old[name], n_combos)
        shape = [chosen.shape[0]] + [1] * (new_view.dim() - 1)
        shape[axis] = chosen.shape[1]
        old_view.copy_(torch.where(chosen.view(shape), new_view, old_view))


# ---------------------------------------------------------------------------- saved models


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
