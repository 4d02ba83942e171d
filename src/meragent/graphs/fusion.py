"""Six-class decisions from per-modality scores: late fusion and the trained attention head.

Late fusion is the default until a trained attention-fusion model is named by the profile: a
weighted mean of each modality's six-class probabilities and the reasoning LLM's choice (as a
one-hot vote). The attention head reads the clip's cached embeddings (``Clue.feature_ref``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meragent.agents.reasoning import class_of_word
from meragent.graphs.state import FusionInfo
from meragent.schema import EMOTIONS, Clip, Clue

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
    return {modality: _mean_distribution(dists) for modality, dists in grouped.items()}


def _mean_distribution(dists: Sequence[dict[str, float]]) -> dict[str, float]:
    """The class-wise mean of ``dists``; one distribution is its own mean (np.mean of a single
    value is that value, and numpy's per-call cost was a tenth of a fake clip's fusion step)."""
    if len(dists) == 1:
        return {e: float(dists[0][e]) for e in EMOTIONS}
    return {e: float(np.mean([d[e] for d in dists])) for e in EMOTIONS}


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


def _clue_feature_refs(clues: Sequence[Clue]) -> dict[str, Path]:
    """Encoder name -> cached feature file, from ``feature_ref`` and ``data[*_ref]`` of clues.

    Feature-cache paths are ``<root>/<encoder>/<clip>.npy``, so the folder names the encoder.
    """
    refs: dict[str, Path] = {}
    for clue in clues:
        if not clue.available:
            continue
        candidates = [clue.feature_ref] + [
            v for k, v in clue.data.items() if k.endswith("_ref") and isinstance(v, str)
        ]
        for ref in candidates:
            if ref:
                refs.setdefault(Path(ref).parent.name, Path(ref))
    return refs


def feature_inputs(
    clues: Sequence[Clue],
    encoders: Sequence[str],
    *,
    clip_id: str,
    features_dir: Path | None,
    clip: Clip | None = None,
) -> dict[str, np.ndarray | None]:
    """One vector per encoder the fusion head wants: from the clues' refs, else the cache.

    Features extracted elsewhere (e.g. by MERTools) and dropped into the feature cache are
    found by encoder name even when no tool of this run produced them.
    """
    from meragent.tools.feature_cache import FeatureCache

    refs = _clue_feature_refs(clues)
    cache = FeatureCache(features_dir) if features_dir is not None else None
    features: dict[str, np.ndarray | None] = {}
    for encoder in encoders:
        if encoder in refs and refs[encoder].is_file():
            features[encoder] = FeatureCache(refs[encoder].parent.parent).load(encoder, clip_id)
        elif cache is not None and clip is not None:  # never a vector made from other media
            features[encoder] = cache.lookup_clip(encoder, clip)
        elif cache is not None and cache.has(encoder, clip_id):
            features[encoder] = cache.load(encoder, clip_id)
        else:
            features[encoder] = None
    return features


def attention_fusion(
    predictor: Any,
    clues: Sequence[Clue],
    *,
    clip_id: str,
    features_dir: Path | None = None,
    clip: Clip | None = None,
) -> FusionInfo:
    """Run a trained attention-fusion head on the clip's cached embeddings."""
    encoders = list(predictor.encoders)
    features = feature_inputs(
        clues, encoders, clip_id=clip_id, features_dir=features_dir, clip=clip
    )
    output = predictor.predict(features)
    probs = {e: float(output.probs.get(e, 0.0)) for e in EMOTIONS}
    best = max(EMOTIONS, key=lambda e: (probs[e], -EMOTIONS.index(e)))
    return FusionInfo(
        discrete=best,
        probs=probs,
        valence=None if output.valence is None else float(output.valence),
        source="attention",
        inputs=[e for e, v in features.items() if v is not None],
        attention={str(k): float(v) for k, v in (output.attention or {}).items()},
    )
