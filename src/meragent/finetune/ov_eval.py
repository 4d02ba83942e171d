"""Scoring the labeler on held-out folds: greedy generation, the labeler's parser, OV metrics.

Every system (LoRA-tuned model, untuned base with the same prompt, lexicon) is scored with a
fresh synonym grouper fitted on the ground truth plus that system's labels, the way the
organisers group each submission with the ground truth; the sentence encoder is shared.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from meragent.agents.labeler import LabelParse, parse_labels
from meragent.finetune.lora_examples import fit_description
from meragent.finetune.ov_data import OVSample, prompt_messages


class SystemPrediction(BaseModel):
    """One system's answer for one sample: parsed labels plus the raw text and parse flags."""

    labels: list[str] = Field(default_factory=list)
    raw: str = ""
    flags: list[str] = Field(default_factory=list)


class MeanStd(BaseModel):
    """Mean and (population) standard deviation over folds."""

    mean: float
    std: float
    n: int


def predict_with_lm(
    lm: Any,
    samples: Sequence[OVSample],
    *,
    max_prompt_tokens: int,
    max_new_tokens: int,
    batch_size: int = 4,
    progress: bool = True,
    desc: str = "generate",
) -> list[SystemPrediction]:
    """Greedy labels for each sample, in input order (batched by prompt length)."""
    from tqdm.auto import tqdm

    from meragent.tools.causal_lm import generate_chat_batch

    conversations = [
        prompt_messages(fit_description(lm.tokenizer, s.description, max_prompt_tokens)[0])
        for s in samples
    ]
    # Similar lengths in one batch waste less compute on left padding.
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].description))
    results: list[SystemPrediction | None] = [None] * len(samples)
    with tqdm(total=len(samples), desc=desc, unit="sample", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            outputs = generate_chat_batch(
                lm, [conversations[i] for i in chunk], max_new_tokens=max_new_tokens
            )
            for index, output in zip(chunk, outputs, strict=True):
                results[index] = _from_parse(parse_labels(output.text))
            bar.update(len(chunk))
    return [r if r is not None else SystemPrediction() for r in results]


def _from_parse(parse: LabelParse) -> SystemPrediction:
    return SystemPrediction(labels=parse.labels, raw=parse.raw, flags=parse.flags)


def predict_with_lexicon(lexicon: Any, samples: Sequence[OVSample]) -> list[SystemPrediction]:
    """Lexicon labels (words found in the description) for each sample."""
    predictions = []
    for sample in samples:
        labels = lexicon.extract(sample.description)
        predictions.append(SystemPrediction(labels=labels, raw=repr(labels)))
    return predictions


GrouperFactory = Callable[[], Any]


def embedding_grouper_factory(
    encoder_spec: str = "bundled:minilm", word_forms: Path | None = None, tau: float | None = None
) -> GrouperFactory:
    """A factory of fresh ``embedding`` groupers that share one lazily loaded encoder.

    ``encoder_spec="none"`` keeps only exact matches and the word-form pass (no weights).
    """
    encoder: list[Any] = []

    def build() -> Any:
        from meragent.eval.grouping import get_grouper
        from meragent.tools.sentence_encoder import load_sentence_encoder

        if not encoder:
            none = encoder_spec.lower() == "none"
            encoder.append(None if none else load_sentence_encoder(encoder_spec))
        options: dict[str, Any] = {"encoder": encoder[0]}
        if word_forms is not None:
            options["word_forms"] = word_forms
        if tau is not None:
            options["tau"] = tau
        return get_grouper("embedding", **options)

    return build


def llm_grouper_factory(profile: str | None = None) -> GrouperFactory:
    """A factory of ``llm`` groupers on the configured reasoning LLM (answers cached on disk).

    The chat model is built once; every grouper shares it and its on-disk cache of groupings.
    """
    shared: list[Any] = []

    def build() -> Any:
        from meragent.agents.chat import make_chat_model
        from meragent.config import load_settings
        from meragent.eval.grouping import get_grouper

        settings = load_settings(profile=profile)
        if not shared:
            role = settings.role("reasoning_llm")
            shared.append(make_chat_model(role, settings, role_name="reasoning_llm"))
        return get_grouper("llm", chat_model=shared[0], cache_dir=settings.cache_dir / "llm_groups")

    return build


def score_system(
    samples: Sequence[OVSample],
    predictions: Sequence[SystemPrediction],
    grouper_factory: GrouperFactory,
) -> dict[str, float | int]:
    """Set accuracy / recall / average of one system on ``samples`` (one fresh grouper)."""
    from meragent.eval.ov import score_ov

    gt = {s.name: s.labels for s in samples}
    pred = {s.name: p.labels for s, p in zip(samples, predictions, strict=True)}
    report = score_ov(gt, pred, grouper_factory())
    return {
        "accuracy": report.accuracy,
        "recall": report.recall,
        "average": report.average,
        "n_samples": report.n_samples,
        "n_skipped": report.n_skipped,
        "n_empty_predictions": report.n_empty_predictions,
    }


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean ± population std (0 for a single fold)."""
    values = list(values)
    return MeanStd(
        mean=statistics.fmean(values) if values else 0.0,
        std=statistics.pstdev(values) if len(values) > 1 else 0.0,
        n=len(values),
    )


def summarise(
    fold_scores: Sequence[Mapping[str, Mapping[str, Mapping[str, float | int]]]],
) -> dict[str, dict[str, dict[str, MeanStd]]]:
    """Mean ± std over folds: ``{language: {system: {metric: MeanStd}}}``.

    ``fold_scores`` holds one ``{language: {system: scores}}`` per fold; a system missing from
    a fold is averaged over the folds that have it.
    """
    pairs = {(lang, system) for scores in fold_scores for lang, systems in scores.items()
             for system in systems}  # fmt: skip
    summary: dict[str, dict[str, dict[str, MeanStd]]] = {}
    for language, system in sorted(pairs):
        values = [s[language][system] for s in fold_scores if system in s.get(language, {})]
        summary.setdefault(language, {})[system] = {
            metric: mean_std([float(v[metric]) for v in values])
            for metric in ("accuracy", "recall", "average")
        }
    return summary
