"""k-fold LoRA tuning of the OV labeler, scored next to the zero-shot base and a lexicon.

``run_lora_cv(config)`` does the whole experiment: load the samples, split by name, load the
base once, then per fold score the untuned base on the held-out names, train a fresh LoRA
copy, save the adapter (+ model card, loss curve, predictions) and score it. Everything lands
under ``config.out_dir``; ``results.json`` holds per-fold and mean ± std scores. The fold loop
is ``lora_fold.run_folds``; this module holds the text strategy (description -> labels), and
``lora_video`` the video one.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from meragent.finetune.lora_config import LoraRunConfig, Reporter, make_run_config
from meragent.finetune.lora_fold import (
    eval_subset,
    limit_dataset,
    run_folds,
    save_adapter,
    score_systems,
    write_predictions,
)
from meragent.finetune.ov_data import OVDataset, OVSample, kfold_split, load_ov_samples
from meragent.finetune.ov_eval import SystemPrediction

__all__ = [
    "LoraRunConfig",
    "TextStrategy",
    "eval_subset",
    "limit_dataset",
    "make_run_config",
    "run_lora_cv",
    "save_adapter",
    "score_systems",
    "write_predictions",
]


def run_lora_cv(config: LoraRunConfig, report: Reporter | None = None) -> dict[str, Any]:
    """Run the experiment described by ``config``; returns (and writes) the results dict."""
    say: Reporter = report or (lambda message: None)
    if config.threads is not None:
        import torch

        # On a shared CPU, fewer intra-op threads than cores avoids threads waiting on each other.
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    if config.modality == "video":
        from meragent.finetune.lora_video import VideoStrategy

        return run_folds(config, VideoStrategy.load(config, say), say, started)
    return run_folds(config, TextStrategy.load(config, say), say, started)


class TextStrategy:
    """Description -> labels with a causal LM (the labeler's own prompt and parser)."""

    task = "MER-OV labeler LoRA (description -> labels)"

    def __init__(
        self, config: LoraRunConfig, base: Any, dataset: OVDataset, report: Reporter
    ) -> None:
        self.config = config
        self.base = base
        self.report = report
        self.dataset = dataset
        self.preprocessor = base.tokenizer
        self.precision: str = base.precision
        self.hyper = config.hyper
        self.data_source = str(config.data_dir)
        self.reads: str = config.language
        self.extra: dict[str, Any] = {"has_chat_template": base.has_chat_template}

    @classmethod
    def load(cls, config: LoraRunConfig, report: Reporter) -> TextStrategy:
        """Load the base once (shared by every fold: each trains a deep copy)."""
        from meragent.tools.causal_lm import load_causal_lm_uncached

        dataset = limit_dataset(
            load_ov_samples(config.data_dir, config.language), config.limit, config.seed
        )
        # A bad fold count fails before the slow load.
        kfold_split(dataset.names, config.folds, config.seed)
        t0 = time.perf_counter()
        base = load_causal_lm_uncached(
            config.base, device=config.device, dtype=config.dtype, precision=config.precision
        )
        report(f"loaded {config.base} in {time.perf_counter() - t0:.0f}s")
        if not base.has_chat_template:
            report(f"{config.base} has no chat template: a plain User/Assistant template is used")
        return cls(config, base, dataset, report)

    def training_examples(self, train: list[OVSample], fold: int) -> list[Any]:
        from meragent.finetune.lora_examples import encode_examples

        examples = encode_examples(
            self.base.tokenizer, train, max_prompt_tokens=self.config.max_prompt_tokens
        )
        shortened = sum(e.truncated for e in examples)
        self.report(f"fold {fold}: {len(train)} training examples ({shortened} shortened)")
        return examples

    def train_options(self) -> dict[str, Any]:
        return {"pad_token_id": int(self.base.tokenizer.pad_token_id)}

    def fresh_lora(self) -> Any:
        from meragent.finetune.lora_train import add_lora

        # A deep copy keeps the base untouched for the next fold (peft injects layers in place).
        return add_lora(copy.deepcopy(self.base.model), self.hyper)

    def merged(self, peft_model: Any) -> Any:
        from meragent.tools.causal_lm import LoadedLM

        # The adapter is saved; folding it into the weights makes generation as fast as the base.
        return LoadedLM(
            model=peft_model.merge_and_unload().eval(),
            tokenizer=self.base.tokenizer,
            model_id=f"{self.config.base}+lora",
            has_chat_template=self.base.has_chat_template,
            precision=self.precision,
        )

    def predict(self, model: Any, test: list[OVSample], label: str) -> list[SystemPrediction]:
        from meragent.finetune.ov_eval import predict_with_lm

        config = self.config
        return predict_with_lm(
            model,
            test,
            max_prompt_tokens=config.max_prompt_tokens,
            decoding=config.decoding(),
            votes=config.samples,
            batch_size=config.eval_batch_size,
            progress=config.progress,
            desc=label,
        )
