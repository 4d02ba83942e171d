"""Attention-fusion architectures for the six-class tracks, written over stacked parameters.

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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

from meragent.errors import DataError

if TYPE_CHECKING:
    import torch

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

    def as_float(self) -> HeadOutput:
        """The same outputs in fp32 (softmax and losses are computed in fp32)."""
        import torch

        return HeadOutput(
            logits=self.logits.to(torch.float32),
            valence=self.valence.to(torch.float32),
            attention=self.attention.to(torch.float32),
        )


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
    #: Name of branch ``m``'s first linear layer (``{}`` is ``m``), its ``.weight`` and ``.bias``.
    first_layer_name: ClassVar[str]

    def param_specs(self, dims: Sequence[int], hidden: int, n_classes: int) -> dict[str, ParamSpec]:
        raise NotImplementedError

    def first_layer(self, branch: int) -> tuple[str, str]:
        """Names of branch ``branch``'s first-layer weight and bias."""
        name = self.first_layer_name.format(branch)
        return f"{name}.weight", f"{name}.bias"

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
        """Everything after the first layers; ``mask`` is bool, broadcastable to ``(K,B,C,M)``.

        The fused embedding ``(K,B,C,d)`` meets the class and valence layers every
        architecture ends with (:func:`_output_specs`).
        """
        fused, attention = self.fuse(params, pres, mask, dropout)
        logits = _kc_linear(fused, params["out.weight"], params["out.bias"])
        valence = _kc_vector(fused, params["val.weight"], params["val.bias"])
        return HeadOutput(logits=logits, valence=valence, attention=attention)

    def fuse(
        self,
        params: Mapping[str, torch.Tensor],
        pres: Sequence[torch.Tensor],
        mask: torch.Tensor,
        dropout: DropoutSource | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The branches' fused embedding ``(K,B,C,d)`` and their attention weights."""
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

    if weight.dtype != bias.dtype:
        # Low-precision weights (bf16 training copies): the matmul in bf16, the bias and the
        # output in the bias' fp32.
        return torch.matmul(x.to(weight.dtype), weight).to(bias.dtype) + bias
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


def _output_specs(hidden: int, n_classes: int) -> dict[str, ParamSpec]:
    """The class and valence heads every architecture ends with (added last: init order)."""
    return {
        "out.weight": ParamSpec("kc", (hidden, n_classes), hidden),
        "out.bias": ParamSpec("kc", (n_classes,), hidden),
        "val.weight": ParamSpec("kc", (hidden,), hidden),
        "val.bias": ParamSpec("kc", (), hidden),
    }


class AttentionFusion(FusionArchitecture):
    """MER2024 Eq. 1-3 with masked softmax over the branches present."""

    name = "attention"
    manual_first_layer = True
    first_layer_name = "enc{}"

    def param_specs(self, dims: Sequence[int], hidden: int, n_classes: int) -> dict[str, ParamSpec]:
        specs: dict[str, ParamSpec] = {}
        for m, dim in enumerate(dims):
            specs[f"enc{m}.weight"] = ParamSpec("first", (dim, hidden), dim)
            specs[f"enc{m}.bias"] = ParamSpec("first", (hidden,), dim)
        specs["att.weight"] = ParamSpec("kc", (hidden,), hidden)
        specs["att.bias"] = ParamSpec("kc", (), hidden)
        specs.update(_output_specs(hidden, n_classes))
        return specs

    def fuse(
        self,
        params: Mapping[str, torch.Tensor],
        pres: Sequence[torch.Tensor],
        mask: torch.Tensor,
        dropout: DropoutSource | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        n_combos = params["att.weight"].shape[1]
        # (K, B, C, d) per branch: Eq. 1. Kept apart rather than stacked to (K, B, C, M, d): the
        # stack was a copy of the largest activations (forward and backward) for nothing.
        hiddens = [torch.relu(_per_combo(p, n_combos)) for p in pres]
        # Eq. 3: one shared W_α (d x 1) and b_α score each branch embedding.
        weight_alpha = params["att.weight"][:, None]
        scores = torch.stack([(h * weight_alpha).sum(-1) for h in hiddens], dim=-1)
        scores = scores + params["att.bias"][:, None, :, None]
        scores = scores.masked_fill(~mask, _MASKED_SCORE)
        alpha = torch.softmax(scores, dim=-1) * _mask_float(mask, scores)
        # Σ_m α_m h_m in branch order, as the stacked sum over M added them.
        fused = alpha[..., 0, None] * hiddens[0]
        for m in range(1, len(hiddens)):
            fused = fused + alpha[..., m, None] * hiddens[m]
        if dropout is not None:
            k, b, _, d = fused.shape
            fused = fused * dropout.keep((k, b, d)).permute(1, 2, 0, 3)
        return fused, alpha


class MERToolsAttention(FusionArchitecture):
    """MERTools' ``Attention`` model: MLP encoders and raw attention weights from an MLP."""

    name = "mertools_attention"
    manual_first_layer = False
    first_layer_name = "enc{}.l1"
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
        specs.update(_output_specs(hidden, n_classes))
        return specs

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

    def fuse(
        self,
        params: Mapping[str, torch.Tensor],
        pres: Sequence[torch.Tensor],
        mask: torch.Tensor,
        dropout: DropoutSource | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
        return (weights.unsqueeze(-1) * hidden).sum(dim=3), weights


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
