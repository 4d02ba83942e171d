"""k-fold LoRA tuning of the OV labeler, scored next to the zero-shot base and a lexicon.

``run_lora_cv(config)`` does the whole experiment: load the samples, split by name, load the
base once, score the untuned base on the held-out names, then per fold train a fresh LoRA
copy, save the adapter (+ model card, loss curve, predictions) and score it. Everything lands
under ``config.out_dir``; ``results.json`` holds per-fold and mean ± std scores.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meragent.errors import ConfigError
from meragent.finetune.lora_train import LoraHyperParams
from meragent.finetune.ov_data import Language, OVDataset, OVSample, kfold_split, load_ov_samples
from meragent.finetune.ov_eval import SystemPrediction

Modality = Literal["text", "video"]
Reporter = Callable[[str], None]


class LoraRunConfig(BaseModel):
    """Everything one ``meragent finetune lora`` run needs, validated on construction."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path
    base: str
    out_dir: Path
    modality: Modality = "text"
    language: Language = "english"
    folds: int = Field(default=5, ge=2)
    fold: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=2)
    eval_limit: int | None = Field(default=None, ge=1)
    hyper: LoraHyperParams = Field(default_factory=LoraHyperParams)
    max_length: int = Field(default=512, ge=64)
    max_new_tokens: int = Field(default=48, ge=1)
    eval_batch_size: int = Field(default=4, ge=1)
    device: str = "cpu"
    dtype: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    samples: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    wheel_dir: Path | None = None
    seed: int = 0
    zero_shot: bool = True
    word_forms: Path | None = None
    encoder: str = "bundled:minilm"
    grouper: Literal["embedding", "llm"] = "embedding"
    profile: str | None = None
    grouper_tau: float | None = None
    manifest: Path | None = None
    num_frames: int = Field(default=4, ge=1)
    threads: int | None = Field(default=None, ge=1)
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> LoraRunConfig:
        if self.fold is not None and self.fold >= self.folds:
            raise ConfigError(f"--fold {self.fold} is out of range for {self.folds} folds")
        if self.samples > 1 and self.temperature <= 0:
            raise ConfigError("--samples > 1 (self-consistency) needs --temperature above 0")
        if self.modality == "video" and self.manifest is None:
            raise ConfigError("--modality video needs --manifest (sample name -> video file)")
        return self

    @property
    def resolved_precision(self) -> str:
        from meragent.tools.causal_lm import resolve_device, resolve_precision

        return resolve_precision(self.precision, resolve_device(self.device))

    def decoding(self) -> Any:
        """The labeler's list decoding with this run's answer budget and temperature."""
        from meragent.tools.causal_lm_decoding import LIST_DECODING

        return LIST_DECODING.model_copy(
            update={"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}
        )

    @property
    def max_prompt_tokens(self) -> int:
        # The answer's room comes off the sequence budget, in training and at evaluation alike.
        return self.max_length - self.max_new_tokens


def grouper_factory(config: LoraRunConfig) -> Callable[[], Any]:
    """Fresh groupers for scoring: offline ``embedding`` or the configured ``llm``."""
    from meragent.finetune.ov_eval import embedding_grouper_factory, llm_grouper_factory

    if config.grouper == "llm":
        return llm_grouper_factory(config.profile)
    return embedding_grouper_factory(config.encoder, config.word_forms, config.grouper_tau)


def make_run_config(**fields: Any) -> LoraRunConfig:
    """Build a LoraRunConfig, turning validation errors into one-line ConfigErrors."""
    from pydantic import ValidationError

    try:
        return LoraRunConfig(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise ConfigError(f"invalid finetune option {where}: {first['msg']}") from None


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


def _by_language(samples: list[OVSample]) -> dict[str, list[OVSample]]:
    groups: dict[str, list[OVSample]] = {}
    for sample in samples:
        groups.setdefault(sample.language, []).append(sample)
    return groups


def eval_subset(test: list[OVSample], eval_limit: int | None) -> list[OVSample]:
    """The first ``eval_limit`` held-out names (sorted): the same subset for every system."""
    if eval_limit is None:
        return test
    names = sorted({s.name for s in test})[:eval_limit]
    keep = set(names)
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
    for language, samples in _by_language(test).items():
        index = [i for i, s in enumerate(test) if s.language == language]
        scores[language] = {}
        for system, preds in systems.items():
            chosen = [preds[i] for i in index]
            row = score_system(samples, chosen, grouper_factory)
            if wheel_dir is not None:
                row.update(score_wheel_system(samples, chosen, wheel_dir))
            scores[language][system] = row
    return scores


def write_predictions(
    path: Path, samples: list[OVSample], systems: dict[str, list[SystemPrediction]]
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


def save_adapter(model: Any, tokenizer: Any, base: str, out: Path) -> Path:
    """Save a peft adapter (safetensors + adapter_config.json) that records ``base`` as given."""
    out.mkdir(parents=True, exist_ok=True)
    # peft would record the resolved folder (or the GGUF package path); the spec the user
    # typed is what ``load_causal_lm`` compares against when the adapter is loaded again.
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = base
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


class _Experiment:
    """State shared by the folds of one run: data, split, base model, scorer, reporter."""

    def __init__(self, config: LoraRunConfig, report: Reporter) -> None:
        self.config = config
        self.report = report
        self.dataset = limit_dataset(
            load_ov_samples(config.data_dir, config.language), config.limit, config.seed
        )
        self.split = kfold_split(self.dataset.names, config.folds, config.seed)
        self.grouper_factory = grouper_factory(config)
        self.lexicon = None
        if config.word_forms is not None:
            from meragent.finetune.ov_lexicon import LexiconExtractor

            self.lexicon = LexiconExtractor.from_csv(config.word_forms)

    def folds_to_run(self) -> list[int]:
        return (
            [self.config.fold] if self.config.fold is not None else list(range(self.config.folds))
        )


def run_lora_cv(config: LoraRunConfig, report: Reporter | None = None) -> dict[str, Any]:
    """Run the experiment described by ``config``; returns (and writes) the results dict."""
    if config.threads is not None:
        import torch

        # On a shared CPU, fewer intra-op threads than cores avoids threads waiting on each other.
        torch.set_num_threads(config.threads)
    if config.modality == "video":
        from meragent.finetune.lora_video import run_video_lora_cv

        return run_video_lora_cv(config, report)
    return _run_text(config, report or (lambda message: None))


def _run_text(config: LoraRunConfig, report: Reporter) -> dict[str, Any]:
    from meragent.tools.causal_lm import load_causal_lm_uncached

    started = time.perf_counter()
    experiment = _Experiment(config, report)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    dataset = experiment.dataset
    report(
        f"{len(dataset.samples)} examples from {len(dataset.names)} samples "
        f"({dataset.n_skipped()} rows skipped); folds {experiment.folds_to_run()}"
    )
    t0 = time.perf_counter()
    base = load_causal_lm_uncached(
        config.base, device=config.device, dtype=config.dtype, precision=config.precision
    )
    report(f"loaded {config.base} in {time.perf_counter() - t0:.0f}s; precision {base.precision}")
    if not base.has_chat_template:
        report(f"{config.base} has no chat template: a plain User/Assistant template is used")
    folds = [
        resumed_fold(config, fold, report) or _run_text_fold(experiment, base, fold)
        for fold in experiment.folds_to_run()
    ]
    return write_results(
        config,
        report,
        task="MER-OV labeler LoRA (description -> labels)",
        dataset=experiment.dataset,
        folds=folds,
        started=started,
        extra={"has_chat_template": base.has_chat_template},
    )


def write_results(
    config: LoraRunConfig,
    report: Reporter,
    *,
    task: str,
    dataset: OVDataset,
    folds: list[dict[str, Any]],
    started: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble per-fold and mean ± std scores and write ``results.json``."""
    from meragent.finetune.ov_eval import summarise

    results = {
        "task": task,
        "config": json.loads(config.model_dump_json()),
        **(extra or {}),
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
    path = config.out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    report(f"wrote {path}")
    return results


def _run_text_fold(experiment: _Experiment, base: Any, fold: int) -> dict[str, Any]:
    from meragent.finetune.lora_card import write_model_card
    from meragent.finetune.lora_examples import encode_examples
    from meragent.finetune.lora_train import add_lora, save_loss_curve, train_lora
    from meragent.finetune.ov_data import split_fold
    from meragent.finetune.ov_eval import predict_with_lexicon, predict_with_lm
    from meragent.tools.causal_lm import LoadedLM

    config, report = experiment.config, experiment.report
    fold_dir = config.out_dir / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    train, test = split_fold(experiment.dataset, experiment.split[fold])
    test = eval_subset(test, config.eval_limit)
    tokenizer = base.tokenizer
    examples = encode_examples(tokenizer, train, max_prompt_tokens=config.max_prompt_tokens)
    report(
        f"fold {fold}: {len(train)} training examples "
        f"({sum(e.truncated for e in examples)} shortened), {len(test)} held-out"
    )
    gen: dict[str, Any] = {
        "max_prompt_tokens": config.max_prompt_tokens,
        "decoding": config.decoding(),
        "votes": config.samples,
        "batch_size": config.eval_batch_size,
        "progress": config.progress,
    }
    systems: dict[str, list[SystemPrediction]] = {}
    timings: dict[str, float] = {}
    if config.zero_shot:
        t0 = time.perf_counter()
        systems["zero_shot"] = predict_with_lm(base, test, desc=f"zero-shot f{fold}", **gen)
        timings["zero_shot_eval_s"] = time.perf_counter() - t0
        report(f"fold {fold}: zero-shot done in {timings['zero_shot_eval_s']:.0f}s")
    if experiment.lexicon is not None:
        systems["lexicon"] = predict_with_lexicon(experiment.lexicon, test)

    # A deep copy keeps the base untouched for the next fold (peft injects layers in place).
    model = add_lora(copy.deepcopy(base.model), config.hyper)
    log = train_lora(
        model,
        examples,
        config.hyper,
        pad_token_id=int(tokenizer.pad_token_id),
        progress=config.progress,
        on_step=lambda step, loss: report(f"fold {fold} step {step}: loss {loss:.4f}"),
        precision=base.precision,
    )
    timings["train_s"] = log.seconds
    adapter_dir = save_adapter(model, tokenizer, config.base, fold_dir / "adapter")
    curve = save_loss_curve(log.losses, fold_dir / "loss.png", f"LoRA fold {fold} ({config.base})")
    # The adapter is saved; folding it into the weights makes generation as fast as the base.
    tuned = LoadedLM(
        model=model.merge_and_unload().eval(),
        tokenizer=tokenizer,
        model_id=f"{config.base}+lora",
        has_chat_template=base.has_chat_template,
        precision=base.precision,
    )
    t0 = time.perf_counter()
    systems["lora"] = predict_with_lm(tuned, test, desc=f"lora f{fold}", **gen)
    timings["lora_eval_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores = score_systems(test, systems, experiment.grouper_factory, config.wheel_dir)
    timings["scoring_s"] = time.perf_counter() - t0
    write_predictions(fold_dir / "predictions.jsonl", test, systems)
    write_model_card(
        adapter_dir,
        base=config.base,
        data=str(config.data_dir),
        language=config.language,
        modality=config.modality,
        fold=fold,
        folds=config.folds,
        n_train=len(train),
        n_test=len(test),
        hyper=config.hyper.model_dump(exclude={"target_modules"}),
        scores=scores,
    )
    # The bare model is shared by later folds only through ``base``; drop this copy now.
    del model, tuned
    report(f"fold {fold}: scores {json.dumps(scores)}")
    return finish_fold(
        config,
        fold,
        {
            "fold": fold,
            "n_train": len(train),
            "n_test": len(test),
            "test_names": sorted({s.name for s in test}),
            "train_steps": log.steps,
            "loss_first": log.losses[0],
            "loss_last": log.losses[-1],
            "losses": log.losses,
            "parse_flags": {
                system: flag_counts(preds)
                for system, preds in systems.items()
                if system != "lexicon"
            },
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "precision": base.precision,
            "adapter": str(adapter_dir),
            "loss_curve": str(curve),
            "scores": scores,
        },
    )


FOLD_RESULT = "fold.json"


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


def flag_counts(predictions: list[SystemPrediction]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for prediction in predictions:
        for flag in prediction.flags:
            counts[flag] = counts.get(flag, 0) + 1
    return counts
