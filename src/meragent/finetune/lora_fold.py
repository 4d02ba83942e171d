"""One k-fold LoRA experiment, whatever the model reads: ``run_folds(config, strategy)``.

A ``FoldStrategy`` knows its modality (text descriptions, or video clips): how to turn
training samples into model inputs, how to wrap a fresh LoRA copy of the base, how to merge it
and how to predict labels. Everything else is shared: the split, the three systems (zero-shot
base, lexicon, LoRA), training, adapter + model card + loss curve + predictions on disk, the
scores, resuming a killed run after its last finished fold, and ``results.json``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meragent.finetune.lora_config import LoraRunConfig, Reporter, grouper_factory
from meragent.finetune.lora_train import LoraHyperParams
from meragent.finetune.ov_data import OVDataset, OVSample, kfold_split, split_fold
from meragent.finetune.ov_eval import SystemPrediction

FOLD_RESULT = "fold.json"


class FoldStrategy(Protocol):
    """What differs between text and video LoRA; ``run_fold`` does the rest."""

    task: str
    dataset: OVDataset
    base: Any
    #: What ``save_pretrained`` is called on next to the adapter (tokenizer or processor).
    preprocessor: Any
    precision: str
    hyper: LoraHyperParams
    #: Model-card fields: where the data came from and what the model reads.
    data_source: str
    reads: str
    #: Extra top-level fields of ``results.json`` (e.g. whether the base had a chat template).
    extra: dict[str, Any]

    def training_examples(self, train: list[OVSample], fold: int) -> list[Any]: ...

    def train_options(self) -> dict[str, Any]: ...

    def fresh_lora(self) -> Any: ...

    def merged(self, peft_model: Any) -> Any: ...

    def predict(self, model: Any, test: list[OVSample], label: str) -> list[SystemPrediction]: ...


@dataclass
class FoldContext:
    """State shared by the folds of one run: config, reporter, split, scorer, lexicon."""

    config: LoraRunConfig
    report: Reporter
    split: list[list[str]]
    grouper_factory: Callable[[], Any]
    lexicon: Any

    @classmethod
    def build(cls, config: LoraRunConfig, report: Reporter, dataset: OVDataset) -> FoldContext:
        lexicon = None
        if config.word_forms is not None:
            from meragent.finetune.ov_lexicon import LexiconExtractor

            lexicon = LexiconExtractor.from_csv(config.word_forms)
        return cls(
            config=config,
            report=report,
            split=kfold_split(dataset.names, config.folds, config.seed),
            grouper_factory=grouper_factory(config),
            lexicon=lexicon,
        )

    def folds_to_run(self) -> list[int]:
        config = self.config
        return [config.fold] if config.fold is not None else list(range(config.folds))


def run_folds(
    config: LoraRunConfig, strategy: FoldStrategy, report: Reporter, started: float
) -> dict[str, Any]:
    """Every requested fold (finished ones from an earlier run are resumed), then results."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    context = FoldContext.build(config, report, strategy.dataset)
    dataset = strategy.dataset
    report(
        f"{len(dataset.samples)} examples from {len(dataset.names)} samples "
        f"({dataset.n_skipped()} rows skipped); folds {context.folds_to_run()}; "
        f"precision {strategy.precision}"
    )
    folds = [
        resumed_fold(config, fold, report) or run_fold(context, strategy, fold)
        for fold in context.folds_to_run()
    ]
    return write_results(config, report, strategy, folds, started)


def run_fold(context: FoldContext, strategy: FoldStrategy, fold: int) -> dict[str, Any]:
    """Train and score one fold; its record is written to ``fold<k>/fold.json``."""
    from meragent.finetune.lora_train import save_loss_curve, train_lora
    from meragent.finetune.ov_eval import predict_with_lexicon

    config, report = context.config, context.report
    fold_dir = config.out_dir / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    train, test = split_fold(strategy.dataset, context.split[fold])
    test = eval_subset(test, config.eval_limit)
    examples = strategy.training_examples(train, fold)
    systems: dict[str, list[SystemPrediction]] = {}
    timings: dict[str, float] = {}
    if config.zero_shot:
        t0 = time.perf_counter()
        systems["zero_shot"] = _zero_shot(strategy, test, fold_dir, fold)
        timings["zero_shot_eval_s"] = time.perf_counter() - t0
        report(f"fold {fold}: zero-shot done in {timings['zero_shot_eval_s']:.0f}s")
    if context.lexicon is not None:
        systems["lexicon"] = predict_with_lexicon(context.lexicon, test)
    model = strategy.fresh_lora()
    log = train_lora(
        model,
        examples,
        strategy.hyper,
        progress=config.progress,
        on_step=lambda step, loss: report(f"fold {fold} step {step}: loss {loss:.4f}"),
        precision=strategy.precision,
        **strategy.train_options(),
    )
    timings["train_s"] = log.seconds
    adapter_dir = save_adapter(model, strategy.preprocessor, config.base, fold_dir / "adapter")
    curve = save_loss_curve(log.losses, fold_dir / "loss.png", f"LoRA fold {fold} ({config.base})")
    t0 = time.perf_counter()
    systems["lora"] = strategy.predict(strategy.merged(model), test, f"lora f{fold}")
    timings["lora_eval_s"] = time.perf_counter() - t0
    del model  # later folds start from ``strategy.base``; free this copy now
    t0 = time.perf_counter()
    scores = score_systems(test, systems, context.grouper_factory, config.wheel_dir)
    timings["scoring_s"] = time.perf_counter() - t0
    write_predictions(fold_dir / "predictions.jsonl", test, systems)
    _write_card(config, strategy, adapter_dir, fold, len(train), len(test), scores)
    report(f"fold {fold}: scores {json.dumps(scores)}")
    record = {
        "fold": fold,
        "n_train": len(train),
        "n_test": len(test),
        "test_names": sorted({s.name for s in test}),
        "train_steps": log.steps,
        "loss_first": log.losses[0],
        "loss_last": log.losses[-1],
        "losses": log.losses,
        "parse_flags": {k: flag_counts(v) for k, v in systems.items() if k != "lexicon"},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "precision": strategy.precision,
        "adapter": str(adapter_dir),
        "loss_curve": str(curve),
        "scores": scores,
    }
    return finish_fold(config, fold, record)


ZERO_SHOT_CACHE = "zero_shot.jsonl"


def _zero_shot(
    strategy: FoldStrategy, test: list[OVSample], fold_dir: Path, fold: int
) -> list[SystemPrediction]:
    """The base's predictions, kept on disk: a run killed later in the fold does not redo them."""
    path = fold_dir / ZERO_SHOT_CACHE
    names = [s.name for s in test]
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if [row["name"] for row in rows] == names:
            return [SystemPrediction(**row["prediction"]) for row in rows]
    predictions = strategy.predict(strategy.base, test, f"zero-shot f{fold}")
    lines = [
        json.dumps({"name": name, "prediction": p.model_dump()}, ensure_ascii=False) + "\n"
        for name, p in zip(names, predictions, strict=True)
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)
    return predictions


def _write_card(
    config: LoraRunConfig,
    strategy: FoldStrategy,
    adapter_dir: Path,
    fold: int,
    n_train: int,
    n_test: int,
    scores: dict[str, Any],
) -> None:
    from meragent.finetune.lora_card import write_model_card

    write_model_card(
        adapter_dir,
        base=config.base,
        data=strategy.data_source,
        language=strategy.reads,
        modality=config.modality,
        fold=fold,
        folds=config.folds,
        n_train=n_train,
        n_test=n_test,
        hyper=strategy.hyper.model_dump(exclude={"target_modules"}),
        scores=scores,
    )


def limit_dataset(dataset: OVDataset, limit: int | None, seed: int) -> OVDataset:
    """Keep a seeded random subset of ``limit`` names (all languages of each kept name)."""
    if limit is None or limit >= len(dataset.names):
        return dataset
    names = sorted(dataset.names)
    random.Random(seed).shuffle(names)
    kept = set(names[:limit])
    return OVDataset(
        samples=[s for s in dataset.samples if s.name in kept], skipped=dataset.skipped
    )


def eval_subset(test: list[OVSample], eval_limit: int | None) -> list[OVSample]:
    """The first ``eval_limit`` held-out names (sorted): the same subset for every system."""
    if eval_limit is None:
        return test
    keep = set(sorted({s.name for s in test})[:eval_limit])
    return [s for s in test if s.name in keep]


def score_systems(
    test: list[OVSample],
    systems: dict[str, list[SystemPrediction]],
    grouper_factory: Callable[[], Any],
    wheel_dir: Path | None = None,
) -> dict[str, dict[str, dict[str, float | int]]]:
    """``{language: {system: scores}}`` for aligned predictions of every system on ``test``.

    Set metrics always; with ``wheel_dir`` also the MER2025 emotion-wheel F-scores.
    """
    from meragent.finetune.ov_eval import score_system, score_wheel_system

    scores: dict[str, dict[str, dict[str, float | int]]] = {}
    for language in dict.fromkeys(s.language for s in test):
        index = [i for i, s in enumerate(test) if s.language == language]
        samples = [test[i] for i in index]
        scores[language] = {}
        for system, preds in systems.items():
            chosen = [preds[i] for i in index]
            row = score_system(samples, chosen, grouper_factory)
            if wheel_dir is not None:
                row.update(score_wheel_system(samples, chosen, wheel_dir))
            scores[language][system] = row
    return scores


def write_predictions(
    path: Path, samples: Sequence[OVSample], systems: dict[str, list[SystemPrediction]]
) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for index, sample in enumerate(samples):
            row: dict[str, Any] = {
                "name": sample.name,
                "language": sample.language,
                "ground_truth": sample.labels,
            }
            for system, predictions in systems.items():
                row[system] = predictions[index].model_dump()
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def save_adapter(model: Any, preprocessor: Any, base: str, out: Path) -> Path:
    """Save a peft adapter (safetensors + adapter_config.json) that records ``base`` as given."""
    out.mkdir(parents=True, exist_ok=True)
    # peft would record the resolved folder (or the GGUF package path); the spec the user
    # typed is what ``load_causal_lm`` compares against when the adapter is loaded again.
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = base
    model.save_pretrained(str(out), safe_serialization=True)
    preprocessor.save_pretrained(str(out))
    return out


def flag_counts(predictions: list[SystemPrediction]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for prediction in predictions:
        for flag in prediction.flags:
            counts[flag] = counts.get(flag, 0) + 1
    return counts


def finish_fold(config: LoraRunConfig, fold: int, record: dict[str, Any]) -> dict[str, Any]:
    """Write a finished fold's record: a rerun of the same ``--out`` resumes after it."""
    path = config.out_dir / f"fold{fold}" / FOLD_RESULT
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)  # atomic: a kill leaves the old state or the new, never half a file
    return record


def resumed_fold(config: LoraRunConfig, fold: int, report: Reporter) -> dict[str, Any] | None:
    """The record of a fold a previous run of this ``--out`` finished, else None."""
    path = config.out_dir / f"fold{fold}" / FOLD_RESULT
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    report(f"fold {fold}: already finished ({path}), skipped")
    return record


def _pool(config: LoraRunConfig, folds: list[dict[str, Any]]) -> dict[str, Any]:
    """All folds ran: score every sample once, and write each system's ``openset_<system>.csv``."""
    from meragent.finetune.lora_pooled import pool_predictions, pooled_scores, write_openset_csv

    samples, systems = pool_predictions(config.out_dir, folds)
    for system, predictions in systems.items():
        write_openset_csv(config.out_dir / f"openset_{system}.csv", samples, predictions)
    return pooled_scores(config.out_dir, folds, grouper_factory(config), config.wheel_dir)


def write_results(
    config: LoraRunConfig,
    report: Reporter,
    strategy: FoldStrategy,
    folds: list[dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    """Assemble per-fold and mean ± std scores and write ``results.json``."""
    from meragent.finetune.ov_eval import summarise

    dataset = strategy.dataset
    results = {
        "task": strategy.task,
        "config": json.loads(config.model_dump_json()),
        "precision": strategy.precision,
        **strategy.extra,
        "n_samples": len(dataset.names),
        "n_examples": len(dataset.samples),
        "skipped": {k: len(v) for k, v in dataset.skipped.items()},
        "grouper": config.grouper
        + (f" (tau={config.grouper_tau})" if config.grouper_tau is not None else ""),
        "folds": folds,
        "summary": {
            language: {
                system: {metric: value.model_dump() for metric, value in metrics.items()}
                for system, metrics in systems.items()
            }
            for language, systems in summarise([f["scores"] for f in folds]).items()
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    if len(folds) == config.folds:
        results["pooled"] = _pool(config, folds)
    path = config.out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    report(f"wrote {path}")
    return results
