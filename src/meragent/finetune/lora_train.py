"""A short, seeded LoRA training loop (peft) with gradient accumulation and a loss curve.

Defaults follow AffectGPT's labeler tuning: r=16, alpha=32, dropout 0.05, LoRA on the
attention and MLP projections. A plain loop is enough here: the data are a few hundred short
sequences, and it keeps progress, seeding and loss logging explicit.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from meragent.config import autocast
from meragent.errors import ConfigError
from meragent.finetune.lora_examples import collate

DEFAULT_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


class LoraHyperParams(BaseModel):
    """LoRA and optimisation settings, validated on construction."""

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    learning_rate: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    epochs: float = Field(default=2.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=1, ge=1)
    grad_accum: int = Field(default=8, ge=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 0


class TrainLog(BaseModel):
    """What the loop did: one mean loss per optimizer step."""

    losses: list[float] = Field(default_factory=list)
    precision: str = "fp32"
    steps: int = 0
    examples_seen: int = 0
    seconds: float = 0.0


def add_lora(model: Any, params: LoraHyperParams, *, only_under: str | None = None) -> Any:
    """Wrap ``model`` with fresh LoRA layers (in place); only they stay trainable.

    ``only_under`` restricts LoRA to modules whose dotted name contains that component, e.g.
    ``language_model`` of a vision-language model, whose vision tower reuses the MLP names.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in params.target_modules if t in present]
    if not targets:
        raise ConfigError(
            f"none of the LoRA target modules {params.target_modules} exist in the model"
        )
    target_modules: list[str] | str = targets
    if only_under is not None:
        # peft full-matches a string against every module name.
        target_modules = rf".*\b{re.escape(only_under)}\..*\.(?:{'|'.join(targets)})"
    config = LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
        bias="none",
    )
    # LoRA's A matrices are drawn at wrapping time: seed here so a run repeats exactly.
    torch.manual_seed(params.seed)
    return get_peft_model(model, config)


def planned_steps(n_examples: int, params: LoraHyperParams) -> int:
    """Optimizer steps: ``max_steps`` when given, else epochs × batches / accumulation."""
    per_epoch = math.ceil(math.ceil(n_examples / params.batch_size) / params.grad_accum)
    by_epochs = max(1, math.ceil(per_epoch * params.epochs))
    return params.max_steps if params.max_steps is not None else by_epochs


def _batches(examples: Sequence[Any], batch_size: int, seed: int) -> list[list[Any]]:
    """An endless-enough stream of shuffled batches, one reshuffle per epoch (seeded)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [
        [examples[i] for i in order[start : start + batch_size]]
        for start in range(0, len(order), batch_size)
    ]


def train_lora(
    model: Any,
    examples: Sequence[Any],
    params: LoraHyperParams,
    *,
    pad_token_id: int = 0,
    collate_fn: Callable[[list[Any]], dict[str, Any]] | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    precision: str = "fp32",
) -> TrainLog:
    """Train the LoRA layers of a peft model on ``examples``; returns per-step losses.

    ``examples`` are TokenizedExamples padded by ``collate`` unless ``collate_fn`` turns a
    list of examples into model inputs (with ``labels``) some other way (e.g. video batches).
    ``precision="bf16"`` runs forward and backward under bf16 autocast: weights, LoRA
    parameters, gradients and AdamW stay fp32 (the loss is computed in fp32 by autocast).
    """
    import time

    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if not examples:
        raise ConfigError("no training examples")
    torch.manual_seed(params.seed)
    device = next(model.parameters()).device
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=params.learning_rate, weight_decay=params.weight_decay
    )
    total = planned_steps(len(examples), params)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(params.warmup_ratio * total), max(total, 1)
    )
    log = TrainLog(precision=precision)
    started = time.perf_counter()
    model.train()
    epoch = 0
    stream: Iterator[list[Any]] = iter([])
    bar = tqdm(total=total, desc="lora", unit="step", disable=not progress)
    while log.steps < total:
        step_loss = 0.0
        for _ in range(params.grad_accum):
            batch = next(stream, None)
            if batch is None:  # new epoch: reshuffle with a per-epoch seed
                stream = iter(_batches(examples, params.batch_size, params.seed + epoch))
                epoch += 1
                batch = next(stream)
            inputs = collate_fn(batch) if collate_fn else collate(batch, pad_token_id)
            tensors = {k: v.to(device) for k, v in inputs.items()}
            with autocast(device.type, precision):
                loss = model(**tensors).loss / params.grad_accum
            loss.backward()
            step_loss += float(loss.detach())
            log.examples_seen += len(batch)
        torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log.steps += 1
        log.losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        if on_step is not None:
            on_step(log.steps, step_loss)
    bar.close()
    model.eval()
    log.seconds = time.perf_counter() - started
    return log


def save_loss_curve(losses: list[float], path: Path, title: str) -> Path:
    """Write the per-step training loss as a PNG (matplotlib, no display needed)."""
    # A bare Figure renders with Agg and touches no global pyplot state.
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(range(1, len(losses) + 1), losses, marker="o" if len(losses) < 40 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("answer-token loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
