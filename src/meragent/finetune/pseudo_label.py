"""MER-SEMI pseudo-labelling: predict the unlabelled pool, keep the confident clips, retrain.

Each round trains the fusion head (k-fold search) on the labelled clips plus every pseudo-label
so far, predicts the clips of the pool not yet taken, and per predicted class keeps the clips
whose confidence (top probability) reaches that class's η-quantile among the pool clips predicted
as that class — or a fixed per-class threshold when one is given. After R rounds a final model is
trained on everything. Labelled clips and test clips can never be selected: they are removed from
the pool up front and the selection is checked again before it is used.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field, field_validator

from meragent.errors import DataError
from meragent.finetune.fusion_predict import predict_clips
from meragent.finetune.fusion_train import FusionTrainConfig, FusionTrainResult, train_fusion
from meragent.schema import EMOTIONS, Clip, normalize_emotion
from meragent.tools.feature_cache import FeatureCache
from meragent.tools.fusion_model import FusionPredictor

Progress = Callable[[str], None]


class PseudoLabelLeakError(DataError):
    """A labelled or test clip was about to receive a pseudo-label (must never happen)."""


class PseudoLabelConfig(BaseModel):
    """Rounds, selection rule and the training run used in every round."""

    rounds: int = Field(default=1, ge=1)
    eta: float = Field(default=0.8, ge=0.0, lt=1.0)
    thresholds: dict[str, float] = Field(default_factory=dict)
    train: FusionTrainConfig = Field(default_factory=FusionTrainConfig)

    @field_validator("thresholds")
    @classmethod
    def _known_classes(cls, value: dict[str, float]) -> dict[str, float]:
        cleaned = {}
        for name, threshold in value.items():
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold for {name!r} must be in [0, 1], got {threshold}")
            cleaned[normalize_emotion(name)] = float(threshold)
        return cleaned


class RoundReport(BaseModel):
    """One round: the thresholds used, how many clips were added per class, the CV score."""

    round: int
    thresholds: dict[str, float]
    added: dict[str, int]
    pool_left: int
    cv_waf_mean: float
    cv_waf_std: float


class PseudoLabel(BaseModel):
    label: str
    confidence: float
    round: int


@dataclass
class PseudoLabelResult:
    final: FusionTrainResult
    rounds: list[RoundReport]
    labels: dict[str, PseudoLabel]
    excluded_from_pool: int = 0
    no_features: list[str] = field(default_factory=list)


def select_confident(
    clip_ids: Sequence[str],
    probs: np.ndarray,
    *,
    eta: float,
    thresholds: Mapping[str, float] | None = None,
) -> tuple[dict[str, tuple[str, float]], dict[str, float]]:
    """Per predicted class, the clips at or above that class's threshold.

    The threshold is ``thresholds[class]`` when given, else the η-quantile of the confidences of
    the clips predicted as that class. Returns ({clip: (class, confidence)}, {class: threshold}).
    """
    fixed = dict(thresholds or {})
    predicted = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, dtype=int)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    chosen: dict[str, tuple[str, float]] = {}
    used: dict[str, float] = {}
    for index, name in enumerate(EMOTIONS):
        members = np.flatnonzero(predicted == index)
        if name in fixed:
            threshold = fixed[name]
        elif len(members):
            threshold = float(np.quantile(confidence[members], eta))
        else:
            continue
        used[name] = threshold
        for row in members:
            if confidence[row] >= threshold:
                chosen[clip_ids[int(row)]] = (name, float(confidence[row]))
    return chosen, used


def _check_no_leak(selected: Collection[str], forbidden: Collection[str]) -> None:
    leaked = sorted(set(selected) & set(forbidden))
    if leaked:
        raise PseudoLabelLeakError(
            f"pseudo-labelling selected {len(leaked)} labelled/test clips: {', '.join(leaked[:5])}"
        )


def pseudo_label_training(
    labelled: Sequence[Clip],
    pool: Sequence[Clip],
    cache: FeatureCache,
    branches: Sequence[Sequence[str]],
    config: PseudoLabelConfig,
    *,
    test_ids: Collection[str] = (),
    augment_cache: FeatureCache | None = None,
    progress: Progress | None = None,
) -> PseudoLabelResult:
    """Run R pseudo-labelling rounds and train the final model (see the module docstring)."""
    say = progress or (lambda _message: None)
    forbidden = {c.id for c in labelled} | set(test_ids)
    candidates = list(dict.fromkeys(c.id for c in pool if c.id not in forbidden))
    excluded = len({c.id for c in pool}) - len(candidates)
    if excluded:
        say(f"pool: left out {excluded} clips that are labelled or in the test set")
    taken: dict[str, PseudoLabel] = {}
    rounds: list[RoundReport] = []
    no_features: list[str] = []
    for number in range(1, config.rounds + 1):
        result = _train(labelled, cache, branches, config, taken, augment_cache, say)
        predictor = FusionPredictor(result.model_config(), result.search.params)
        remaining = [c for c in candidates if c not in taken]
        table = predict_clips(remaining, cache, predictor)
        no_features = table.skipped
        chosen, used = select_confident(
            table.clip_ids, table.probs, eta=config.eta, thresholds=config.thresholds
        )
        _check_no_leak(chosen, forbidden)
        for clip_id, (label, confidence) in chosen.items():
            taken[clip_id] = PseudoLabel(label=label, confidence=confidence, round=number)
        added = {name: sum(1 for v in chosen.values() if v[0] == name) for name in EMOTIONS}
        report = RoundReport(
            round=number,
            thresholds=used,
            added=added,
            pool_left=len(remaining) - len(chosen),
            cv_waf_mean=result.search.best.waf_mean,
            cv_waf_std=result.search.best.waf_std,
        )
        rounds.append(report)
        say(
            f"round {number}: CV WAF {100 * report.cv_waf_mean:.2f}±{100 * report.cv_waf_std:.2f}"
            f", added {sum(added.values())} "
            f"({', '.join(f'{k} {v}' for k, v in added.items())})"
        )
    final = _train(labelled, cache, branches, config, taken, augment_cache, say)
    _check_no_leak(taken, forbidden)
    return PseudoLabelResult(
        final=final,
        rounds=rounds,
        labels=taken,
        excluded_from_pool=excluded,
        no_features=no_features,
    )


def _train(
    labelled: Sequence[Clip],
    cache: FeatureCache,
    branches: Sequence[Sequence[str]],
    config: PseudoLabelConfig,
    taken: Mapping[str, PseudoLabel],
    augment_cache: FeatureCache | None,
    say: Progress,
) -> FusionTrainResult:
    pseudo = {clip_id: label.label for clip_id, label in taken.items()}
    return train_fusion(
        labelled,
        cache,
        branches,
        config.train,
        augment_cache=augment_cache,
        pseudo=pseudo,
        progress=say,
    )
