"""Six-class decisions from per-modality scores: late fusion and the trained attention head.

Late fusion is the default until a trained attention-fusion model is named by the profile: a
weighted mean of each modality's six-class probabilities and the reasoning LLM's choice (as a
one-hot vote). The attention head reads the clip's cached embeddings (``Clue.feature_ref``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from meragent.agents.reasoning import class_of_word
from meragent.graphs.state import FusionInfo
from meragent.schema import EMOTIONS, Clue

#: Answer given when nothing at all points to a class (the most frequent MER class).
DEFAULT_CLASS = "neutral"


def six_class_distribution(probs: Mapping[str, float]) -> dict[str, float] | None:
    """Map a tool's class scores onto the six classes (synonyms merged), renormalised.

    Classes outside the six (e.g. FER's "disgust") are dropped; None when nothing is left.
    """
    merged = dict.fromkeys(EMOTIONS, 0.0)
    for name, value in probs.items():
        emotion = class_of_word(name)
        if emotion is not None and np.isfinite(value) and value > 0:
            merged[emotion] += float(value)
    total = sum(merged.values())
    if total <= 0:
        return None
    return {name: value / total for name, value in merged.items()}


def modality_probs(clues: Sequence[Clue]) -> dict[str, dict[str, float]]:
    """One six-class distribution per modality (the mean when several tools gave scores)."""
    grouped: dict[str, list[dict[str, float]]] = {}
    for clue in clues:
        if not clue.available or not clue.probs:
            continue
        dist = six_class_distribution(clue.probs)
        if dist is not None:
            grouped.setdefault(clue.modality.value, []).append(dist)
    return {
        modality: {e: float(np.mean([d[e] for d in dists])) for e in EMOTIONS}
        for modality, dists in grouped.items()
    }


def late_fusion(
    per_modality: Mapping[str, Mapping[str, float]],
    llm_choice: str | None,
    *,
    weights: Mapping[str, float] | None = None,
    llm_weight: float = 1.0,
) -> FusionInfo:
    """Weighted mean of the modalities' distributions and the LLM's one-hot vote.

    Ties go to the earlier class in ``EMOTIONS`` order; with no input at all the answer is
    ``DEFAULT_CLASS`` and ``source`` says so.
    """
    weights = weights or {}
    total = dict.fromkeys(EMOTIONS, 0.0)
    weight_sum = 0.0
    inputs: list[str] = []
    for modality, dist in per_modality.items():
        weight = float(weights.get(modality, 1.0))
        if weight <= 0:
            continue
        for emotion in EMOTIONS:
            total[emotion] += weight * float(dist.get(emotion, 0.0))
        weight_sum += weight
        inputs.append(modality)
    if llm_choice in total and llm_weight > 0:
        total[llm_choice] += llm_weight
        weight_sum += llm_weight
        inputs.append("llm")
    if weight_sum == 0:
        uniform = {e: 1.0 / len(EMOTIONS) for e in EMOTIONS}
        return FusionInfo(discrete=DEFAULT_CLASS, probs=uniform, source="default", inputs=[])
    probs = {e: total[e] / weight_sum for e in EMOTIONS}
    best = max(EMOTIONS, key=lambda e: (probs[e], -EMOTIONS.index(e)))
    return FusionInfo(discrete=best, probs=probs, source="late", inputs=inputs, valence=None)


def feature_inputs(
    clues: Sequence[Clue], modalities: Sequence[str]
) -> dict[str, np.ndarray | None]:
    """Cached embeddings per modality from the clues' ``feature_ref`` (None when absent)."""
    features: dict[str, np.ndarray | None] = dict.fromkeys(modalities)
    for clue in clues:
        modality = clue.modality.value
        if modality in features and clue.available and clue.feature_ref:
            array = np.load(clue.feature_ref, allow_pickle=False)
            features[modality] = np.asarray(array, dtype=np.float32).reshape(-1)
    return features


def attention_fusion(predictor: Any, clues: Sequence[Clue]) -> FusionInfo:
    """Run a trained attention-fusion head on the clip's cached embeddings."""
    encoders = getattr(predictor, "encoders", None) or {}
    modalities = (
        list(encoders) if isinstance(encoders, Mapping) else ["acoustic", "visual", "lexical"]
    )
    output = predictor.predict(feature_inputs(clues, modalities))
    scores = np.asarray(output.probs, dtype=np.float64).reshape(-1)
    probs = {e: float(scores[i]) for i, e in enumerate(EMOTIONS)}
    best = max(EMOTIONS, key=lambda e: (probs[e], -EMOTIONS.index(e)))
    attention = getattr(output, "attention", None)
    attention_map = None
    if attention is not None:
        values = np.asarray(attention, dtype=np.float64).reshape(-1)
        attention_map = {m: float(values[i]) for i, m in enumerate(modalities[: len(values)])}
    valence = getattr(output, "valence", None)
    return FusionInfo(
        discrete=best,
        probs=probs,
        valence=None if valence is None else float(valence),
        source="attention",
        inputs=list(modalities),
        attention=attention_map,
    )
