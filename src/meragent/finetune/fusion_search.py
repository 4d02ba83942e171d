"""The random hyper-parameter search with k-fold CV: stacks trained, the best one kept.

Stacks train in turn, or ``stack_workers`` at a time in threads (the same results either way).
Per fold the epoch with the best held-out WAF (or WAF - 0.25·MSE with valence) is kept; a
combination's score is the mean ± std of its folds; the best combination's fold models (first
layers trained on principal components folded back to full width) and its out-of-fold
probabilities are returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from meragent.config import resolve_device
from meragent.finetune.fusion_config import (
    Combo,
    ComboResult,
    FusionTrainConfig,
    Progress,
    SearchResult,
    group_stacks,
    sample_combos,
)
from meragent.finetune.fusion_data import (
    TrainingRows,
    stratified_folds,
)
from meragent.finetune.fusion_device import FoldPlan, device_data, fold_plan, torch_runtime
from meragent.finetune.fusion_stack import StackOutcome, StackTrainer, train_stack
from meragent.schema import EMOTIONS
from meragent.tools.fusion_model import (
    FusionArchitecture,
    ParamSpec,
    get_architecture,
    select_combo,
    stacked_shape,
)

if TYPE_CHECKING:
    import torch

#: What training one stack returns (a StackOutcome; any value in tests of the scheduling).
Outcome = TypeVar("Outcome")


def fold_projections(
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


def per_combo_param_count(specs: Mapping[str, ParamSpec], n_folds: int) -> int:
    return sum(int(np.prod(stacked_shape(spec, n_folds, 1))) for spec in specs.values())


def cross_validate(
    rows: TrainingRows,
    config: FusionTrainConfig,
    progress: Progress | None = None,
    on_stack: Callable[[StackTrainer], None] | None = None,
) -> SearchResult:
    """Run the random search with k-fold CV on ``rows`` and keep the best combination.

    ``on_stack`` sees each stack's trainer once it has trained (the bench prices its floor).
    """

    started = time.perf_counter()
    say = progress or (lambda _message: None)
    device = resolve_device(config.device)
    arch = get_architecture(config.model)
    labelled = rows.labelled_rows
    folds = stratified_folds(rows.labels[labelled], config.folds, config.seed)
    with torch_runtime(config.threads):
        known_valence = bool(np.isfinite(rows.valence[labelled]).any())
        with_valence = config.valence == "on" or (config.valence == "auto" and known_valence)
        data = device_data(rows, config, device)
        plan = fold_plan(rows, folds, config.folds, device)
        combos = sample_combos(config)
        dims = [int(x.shape[1]) for x in data.xs]
        sizes = {
            h: per_combo_param_count(arch.param_specs(dims, h, len(EMOTIONS)), config.folds)
            for h in config.hidden
        }
        results: list[ComboResult] = []
        best: tuple[ComboResult, StackOutcome, int] | None = None
        stacks = group_stacks(combos, sizes, config.max_stack_params)

        def train(stack: Sequence[Combo]) -> StackOutcome:
            return train_stack(arch, data, plan, stack, config, with_valence, device, say, on_stack)

        for outcome in train_stacks(stacks, train, config.stack_workers, config.threads):
            results.extend(outcome.results)
            for c, result in enumerate(outcome.results):
                if best is None or _better(result, best[0]):
                    best = (result, outcome, c)
        assert best is not None
        best_result, best_outcome, column = best
        specs = arch.param_specs(dims, best_result.hidden, len(EMOTIONS))
        chosen = select_combo(specs, best_outcome.best_params, column, len(best_outcome.combos))
        chosen = {
            k: v.detach().cpu() for k, v in fold_projections(arch, chosen, data.projections).items()
        }
        oof = out_of_fold_probs(best_outcome.best_logits[:, :, column], plan, len(labelled))
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


def train_stacks(
    stacks: Sequence[Sequence[Combo]],
    train: Callable[[Sequence[Combo]], Outcome],
    workers: int,
    threads: int | None,
) -> list[Outcome]:
    """``train`` every stack, ``workers`` at a time; the outcomes in stack order.

    With several workers the largest stacks start first (a longest-first schedule keeps the
    workers busy to the end) and each worker thread sets its own torch thread count: OpenMP's is
    per thread, and a new thread would otherwise take every core.
    """
    if workers <= 1 or len(stacks) <= 1:
        return [train(stack) for stack in stacks]
    import os

    import torch

    # Without --threads the workers share the cores rather than each taking all of them.
    per_worker = threads or max(1, (os.cpu_count() or 1) // workers)

    def run(stack: Sequence[Combo]) -> Outcome:
        torch.set_num_threads(per_worker)
        return train(stack)

    order = sorted(range(len(stacks)), key=lambda i: -len(stacks[i]) * stacks[i][0].hidden)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {i: pool.submit(run, stacks[i]) for i in order}
        return [futures[i].result() for i in range(len(stacks))]


def _better(candidate: ComboResult, incumbent: ComboResult) -> bool:
    """Higher mean CV score wins; ties go to the earlier-drawn combination."""
    if candidate.score_mean != incumbent.score_mean:
        return candidate.score_mean > incumbent.score_mean
    return candidate.index < incumbent.index


def out_of_fold_probs(logits: torch.Tensor, plan: FoldPlan, n_labelled: int) -> np.ndarray:
    """Held-out probabilities of every labelled row (its fold's model at its best epoch)."""
    import torch

    probs = torch.softmax(logits, dim=-1).cpu().numpy()
    out = np.zeros((n_labelled, len(EMOTIONS)), dtype=np.float64)
    for k, members in enumerate(plan.val_index):
        out[members] = probs[k, : len(members)]
    return out
