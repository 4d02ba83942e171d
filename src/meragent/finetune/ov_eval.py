"""Scoring the labeler on held-out folds: greedy generation, the labeler's parser, OV metrics.

Every system (LoRA-tuned model, untuned base with the same prompt, lexicon) is scored with a
fresh synonym grouper fitted on the ground truth plus that system's labels, the way the
organisers group each submission with the ground truth; the sentence encoder is shared.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from meragent.agents.labeler import parse_labels
from meragent.errors import ConfigError
from meragent.finetune.lora_examples import fit_description
from meragent.finetune.ov_data import OVSample, prompt_messages

if TYPE_CHECKING:
    from meragent.tools.causal_lm_decoding import DecodingSettings


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
    decoding: DecodingSettings | None = None,
    votes: int = 1,
    batch_size: int = 4,
    progress: bool = True,
    desc: str = "generate",
) -> list[SystemPrediction]:
    """Labels for each sample, in input order (batched by prompt length).

    ``decoding`` defaults to the labeler's list decoding (greedy, stop at the end of the list
    or at a repeated item). ``votes`` > 1 is self-consistency: that many sampled answers per
    sample (``decoding.temperature`` must be > 0), keeping the labels most of them name.
    """
    from tqdm.auto import tqdm

    from meragent.tools.causal_lm_decoding import LIST_DECODING

    settings = decoding if decoding is not None else LIST_DECODING
    if votes > 1 and settings.temperature <= 0:
        raise ConfigError("self-consistency (--samples > 1) needs a temperature above 0")
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
            answers = _answers(lm, [conversations[i] for i in chunk], settings, votes)
            for index, prediction in zip(chunk, answers, strict=True):
                results[index] = prediction
            bar.update(len(chunk))
    return [r if r is not None else SystemPrediction() for r in results]


def _answers(
    lm: Any, conversations: list[Any], settings: DecodingSettings, votes: int
) -> list[SystemPrediction]:
    from meragent.tools.causal_lm import generate_chat_batch

    rounds = [
        [
            parse_generation(out.text, hit_cap=out.hit_cap)
            for out in generate_chat_batch(lm, conversations, decoding=settings)
        ]
        for _ in range(votes)
    ]
    if votes == 1:
        return rounds[0]
    return [vote([r[i] for r in rounds]) for i in range(len(conversations))]


def parse_generation(text: str, *, hit_cap: bool = False) -> SystemPrediction:
    """The labeler's parse of one answer; a list cut by the token cap loses its cut last item.

    The parser collapses repeated labels; dropping the unfinished tail keeps a half-written
    word (``'frust``) from becoming a label nobody wrote.
    """
    flags: list[str] = []
    if hit_cap and "]" not in text:
        cut = max(text.rfind(","), text.rfind("，"))
        text = text[:cut] if cut >= 0 else ""
        flags.append("hit_token_cap")
    parse = parse_labels(text)
    return SystemPrediction(labels=parse.labels, raw=parse.raw, flags=[*parse.flags, *flags])


def vote(predictions: Sequence[SystemPrediction]) -> SystemPrediction:
    """Self-consistency: the labels at least half of the sampled answers name, first seen first.

    Labels are counted case-folded (``Worried`` and ``worried`` are one vote; the first spelling
    is kept). When no label reaches half, the answer whose labels the others support most is
    kept whole (flag ``vote_fallback``): an empty set would score zero although every answer
    named something, and the vote never invents a label no answer gave.
    """
    counts: dict[str, int] = {}
    spelling: dict[str, str] = {}
    for prediction in predictions:
        for label in dict.fromkeys(label.casefold() for label in prediction.labels):
            counts[label] = counts.get(label, 0) + 1
        for label in prediction.labels:
            spelling.setdefault(label.casefold(), label)
    kept = [spelling[label] for label, n in counts.items() if 2 * n >= len(predictions)]
    flags = [*sorted({flag for p in predictions for flag in p.flags}), "voted"]
    if not kept and counts:
        kept = list(_best_supported(predictions, counts).labels)
        flags.append("vote_fallback")
    return SystemPrediction(labels=kept, raw=" || ".join(p.raw for p in predictions), flags=flags)


def _best_supported(
    predictions: Sequence[SystemPrediction], counts: dict[str, int]
) -> SystemPrediction:
    """The answer with the highest mean vote count per label (the first of equals)."""

    def support(prediction: SystemPrediction) -> float:
        labels = {label.casefold() for label in prediction.labels}
        return sum(counts[label] for label in labels) / len(labels) if labels else 0.0

    return max(predictions, key=support)


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


def score_wheel_system(
    samples: Sequence[OVSample], predictions: Sequence[SystemPrediction], wheel_dir: Path
) -> dict[str, float | int]:
    """MER2025 emotion-wheel F-scores (level 1, level 2, their mean) of one system."""
    from meragent.eval.wheel import score_wheel

    gt = {s.name: s.labels for s in samples}
    pred = {s.name: p.labels for s, p in zip(samples, predictions, strict=True)}
    scores = score_wheel(gt, pred, wheel_dir, vocabulary=_wheel_vocabulary(wheel_dir))
    return {
        "wheel_level1": scores.level1,
        "wheel_level2": scores.level2,
        "wheel_mean": scores.average,
    }


def _wheel_vocabulary(wheel_dir: Path) -> Any:
    from meragent.eval.wheel import load_wheel_vocabulary

    key = str(Path(wheel_dir).resolve())
    if key not in _WHEEL_VOCABULARIES:
        _WHEEL_VOCABULARIES[key] = load_wheel_vocabulary(wheel_dir)
    return _WHEEL_VOCABULARIES[key]


_WHEEL_VOCABULARIES: dict[str, Any] = {}
SET_METRICS: tuple[str, ...] = ("accuracy", "recall", "average")
WHEEL_METRICS: tuple[str, ...] = ("wheel_level1", "wheel_level2", "wheel_mean")


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
        metrics = [m for m in (*SET_METRICS, *WHEEL_METRICS) if all(m in v for v in values)]
        summary.setdefault(language, {})[system] = {
            metric: mean_std([float(v[metric]) for v in values]) for metric in metrics
        }
    return summary
