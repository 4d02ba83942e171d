"""Train one *stack*: C combinations sharing (d, lr) × K folds as one set of stacked tensors.

One batch per fold meets every combination's first-layer weights in a single wide matmul; their
weight gradients are computed by hand into preallocated buffers (no per-step allocation of the
large tensors), and one fused Adam updates the whole stack. With ``precision="bf16"`` those
matmuls (forward, weight gradient, held-out forward) run in bf16 on bf16 copies of the fp32 master
weights; :class:`~meragent.finetune.fusion_adam.CastingAdam` steps those masters from the bf16
weight gradients and refreshes the copies in one pass (fp32 arithmetic and moments). The head
after the first layers, its Adam, the softmax and the loss stay fp32. fp32 is bit-reproducible
with the same seed (same device and thread count).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meragent.config import autocast
from meragent.eval.six import MER2023_MSE_WEIGHT
from meragent.finetune.fusion_adam import CastingAdam
from meragent.finetune.fusion_config import (
    ORDER_STREAM,
    Combo,
    ComboResult,
    FusionTrainConfig,
    Progress,
    seed_for,
)
from meragent.finetune.fusion_device import DeviceData, FoldPlan, epoch_order
from meragent.schema import EMOTIONS
from meragent.tools.fusion_model import (
    FusionArchitecture,
    ParamSpec,
    init_stacked_params,
    where_combos,
)

if TYPE_CHECKING:
    import torch

#: Held-out rows per forward pass during validation (bounds memory of wide stacks).
EVAL_CHUNK = 512


class ComboDropout:
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
        # In place, 1.0/0.0 then times the scale: the same values as torch.where(u >= p, s, 0)
        # (1·s and 0·s are exact) at a fraction of its cost on CPU.
        return uniform.ge_(self.rates.view(view)).mul_(self.scales.view(view))

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


# ---------------------------------------------------------------------------- one stack


@dataclass
class StackOutcome:
    results: list[ComboResult]
    best_params: dict[str, torch.Tensor]
    best_logits: torch.Tensor
    combos: list[Combo]


class StackTrainer:
    """Train C combinations × K folds sharing (d, lr) as one set of stacked tensors."""

    def __init__(
        self,
        arch: FusionArchitecture,
        data: DeviceData,
        plan: FoldPlan,
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
        self.dropout = ComboDropout([c.dropout for c in combos], self.generators, device)
        self.manual = (
            {name for m in range(len(dims)) for name in arch.first_layer(m)}
            if arch.manual_first_layer
            else set()
        )
        self.low = config.precision == "bf16"
        self.xs = data.compute_xs
        self.low_weights: dict[str, torch.Tensor] = {}
        self.low_grads: dict[str, torch.Tensor] = {}
        self.casting_adam: CastingAdam | None = None
        if self.low and self.manual:
            self._hand_first_layers_to_casting_adam(len(dims))
        for name, tensor in self.params.items():
            if name in self.low_weights:
                continue
            if name in self.manual:
                tensor.grad = torch.zeros_like(tensor)
            else:
                tensor.requires_grad_(True)
        rest = [t for name, t in self.params.items() if name not in self.low_weights]
        self.optimizer = fused_adam(rest, combos[0].lr, config.weight_decay)
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

    def _hand_first_layers_to_casting_adam(self, n_branches: int) -> None:
        """bf16 working copies of the first-layer weights and their bf16 gradients, views of
        flat buffers held by CastingAdam, which updates the fp32 masters (also its views) from
        the gradients and refreshes the copies in one pass: those weights carry no ``.grad``."""
        names = [self.arch.first_layer(m)[0] for m in range(n_branches)]
        casting = CastingAdam(
            [self.params[n] for n in names],
            self.xs[0].dtype,
            self.combos[0].lr,
            self.config.weight_decay,
            moments=self.config.adam_moments,
        )
        views = zip(names, casting.params, casting.lows, casting.grads, strict=True)
        for name, master, low, grad in views:
            self.params[name], self.low_weights[name], self.low_grads[name] = master, low, grad
        self.casting_adam = casting

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
        xs = [_gather(x, index) for x in self.xs]
        mask = data.present[index].unsqueeze(2)
        if self.config.modality_dropout > 0:
            mask = self.dropout.drop_branches(mask, self.config.modality_dropout)
        if self.manual:
            with torch.no_grad():
                pres = self.arch.pre_activations(self._compute_params(), xs, self.n_combos)
            for pre in pres:
                pre.requires_grad_(True)
            out = self.arch.head(self.params, pres, mask, self.dropout)
        else:
            with autocast(self.device, self.config.precision):
                pres = self.arch.pre_activations(self.params, xs, self.n_combos, self.dropout)
                out = self.arch.head(self.params, pres, mask, self.dropout)
            out = out.as_float()
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
            loss = loss + masked_mse(out.valence, data.valence[index]).sum()
        for name, tensor in self.params.items():
            if name not in self.manual:
                tensor.grad = None
        loss.backward()
        if self.manual:
            self._first_layer_grads(xs, pres)
        self.optimizer.step()
        if self.casting_adam is not None:
            self.casting_adam.step()

    def _compute_params(self) -> dict[str, torch.Tensor]:
        """The parameters as the first layers compute with them (bf16 copies of the masters,
        kept current by :class:`CastingAdam`)."""
        if not self.low_weights:
            return self.params
        return {**self.params, **self.low_weights}

    def _first_layer_grads(self, xs: Sequence[torch.Tensor], pres: Sequence[torch.Tensor]) -> None:
        import torch

        for m, (x, pre) in enumerate(zip(xs, pres, strict=True)):
            weight_name, bias_name = self.arch.first_layer(m)
            grad = pre.grad
            assert grad is not None
            bias_grad = self.params[bias_name].grad
            assert bias_grad is not None
            torch.sum(grad, dim=1, keepdim=True, out=bias_grad)
            low = self.low_grads.get(weight_name)
            if low is None:
                weight_grad = self.params[weight_name].grad
                assert weight_grad is not None
                torch.bmm(x.transpose(1, 2), grad, out=weight_grad)
            else:
                # bf16 products accumulate in fp32 inside the kernel (only 32 rows are summed);
                # CastingAdam reads the rounded result and updates the fp32 master with it.
                torch.bmm(x.transpose(1, 2), grad.to(low.dtype), out=low)

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
        waf, acc = waf_acc(logits.argmax(dim=-1), truth, valid)
        score = waf
        mse = torch.zeros_like(waf)
        if self.with_valence:
            mse = masked_mse(valence, self.data.valence[self.plan.val_rows], valid)
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
            params = self._compute_params()
            for start in range(0, self.plan.val_rows.shape[1], EVAL_CHUNK):
                index = self.plan.val_rows[:, start : start + EVAL_CHUNK]
                xs = [_gather(x, index) for x in self.xs]
                mask = self.data.present[index].unsqueeze(2)
                with autocast(self.device, "fp32" if self.manual else self.config.precision):
                    out = self.arch.forward(params, xs, mask, self.n_combos).as_float()
                logits.append(out.logits)
                valence.append(out.valence)
        return torch.cat(logits, dim=1), torch.cat(valence, dim=1)

    # -- results
    def outcome(self) -> StackOutcome:
        results = []
        for c, combo in enumerate(self.combos):
            score = self.best_score[:, c].tolist()
            waf = self.best_waf[:, c].tolist()
            acc = self.best_acc[:, c].tolist()
            mse = self.best_mse[:, c].tolist() if self.with_valence else None
            results.append(
                ComboResult.of_folds(
                    combo,
                    {"score": score, "waf": waf, "acc": acc, "mse": mse},
                    best_epochs=[int(e) + 1 for e in self.best_epoch[:, c].tolist()],
                    epochs_run=self.epochs_run,
                )
            )
        return StackOutcome(results, self.best_params, self.best_logits, self.combos)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for a 2-D ``index`` of rows (index_select is many times faster on CPU)."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, x.shape[-1])


def fused_adam(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch's Adam (L2 weight decay, as MERTools), fused into one kernel where supported."""
    import torch

    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


def masked_mse(
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


def waf_acc(
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


def train_stack(
    arch: FusionArchitecture,
    data: DeviceData,
    plan: FoldPlan,
    stack: Sequence[Combo],
    config: FusionTrainConfig,
    with_valence: bool,
    device: str,
    say: Progress,
    on_stack: Callable[[StackTrainer], None] | None = None,
) -> StackOutcome:
    import torch

    trainer = StackTrainer(arch, data, plan, stack, config, with_valence, device)
    # Every stack replays the same batch order, so results do not depend on the grouping.
    order_generator = torch.Generator().manual_seed(seed_for(config.seed, ORDER_STREAM))
    label = f"d={stack[0].hidden} lr={stack[0].lr:g} ({len(stack)} combos × {config.folds} folds)"
    began = time.perf_counter()
    for epoch in range(config.epochs):
        trainer.train_epoch(epoch_order(plan, order_generator, device))
        trainer.evaluate(epoch)
        if trainer.all_stopped():
            break
    outcome = trainer.outcome()
    if on_stack is not None:
        on_stack(trainer)
    top = max(r.waf_mean for r in outcome.results)
    say(
        f"{label}: {trainer.epochs_run} epochs in {time.perf_counter() - began:.1f}s, "
        f"best CV WAF {100 * top:.2f}"
    )
    return outcome
