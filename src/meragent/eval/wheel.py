"""MER2025 emotion-wheel metric for open-vocabulary labels.

Reproduces the organisers' ``wheel_metric_calculation`` (zeroQiaoba/MERTools,
``MER2025/MER2025_Track23/my_affectgpt/evaluation/wheel.py``, metric ``case3``) over the files of
one wheel folder:

* ``word_forms.csv`` (``name,format``): every form maps back to its word (``read_format2raws``);
* ``synonyms.csv`` (``word_runK,synonym_runK`` for K=1..8): each synonym maps to the wheel words it
  was generated for, merged over the eight runs (``read_candidate_synonym_merge``);
* ``wheel1.csv`` .. ``wheel5.csv`` (``level1,level2,level3``, blank cells repeat the cell above):
  at ``level1`` every word of a wheel maps to its level-1 word, at ``level2`` to its level-2 word
  (a level-1 word to the alphabetically first of its level-2 words).

A label is lower-cased and stripped, mapped label -> word (forms) -> wheel words (synonyms); the
alphabetically first wheel word that the wheel knows gives the cluster; labels that reach no
cluster are dropped. Per sample P = |Y n Y-hat| / |Y-hat|, R = |Y n Y-hat| / |Y| (0 and 0 for an
empty prediction; a sample whose ground truth maps to nothing is skipped), P and R are averaged
over samples and F = 2PR / (P + R). Scores are averaged over the five wheels per level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from meragent.errors import DataError
from meragent.eval.csv_rows import read_rows
from meragent.eval.grouping import register_grouper
from meragent.eval.ov import set_precision_recall
from meragent.eval.parsing import mertools2025_list

WHEELS: tuple[str, ...] = ("wheel1", "wheel2", "wheel3", "wheel4", "wheel5")
LEVELS: tuple[str, ...] = ("level1", "level2")
SYNONYM_RUNS = 8
#: How a missing wheel file is named in the error.
WHEEL_FILE = "emotion-wheel file"
WORD_FORMS_FILE = "word_forms.csv"
SYNONYMS_FILE = "synonyms.csv"


class WheelLevelScore(BaseModel):
    """Sample-averaged precision/recall and their F-score on one wheel at one level."""

    fscore: float
    precision: float
    recall: float
    n_samples: int
    n_skipped: int


class WheelScores(BaseModel):
    """Per-wheel scores and the averages over the five wheels (``average`` = mean of levels)."""

    per_wheel: dict[str, dict[str, WheelLevelScore]]
    level1: float
    level2: float
    average: float
    level1_precision: float
    level1_recall: float
    level2_precision: float
    level2_recall: float
    n_missing_predictions: int = 0
    n_extra_predictions: int = 0


@dataclass(frozen=True)
class WheelVocabulary:
    """The lookup tables of one wheel folder (see the module docstring)."""

    form_to_words: dict[str, list[str]]
    word_to_wheel_words: dict[str, list[str]]
    clusters: dict[tuple[str, str], dict[str, str]]

    def cluster_of(self, label: str, wheel: str, level: str) -> str:
        """The wheel cluster of one label, or "" when it reaches none (the official case3)."""
        words = self.form_to_words.get(label)
        if words is None:
            return ""
        candidates = [w for word in words for w in self.word_to_wheel_words.get(word, ())]
        cluster_map = self.clusters[(wheel, level)]
        for candidate in sorted(candidates):
            if candidate in cluster_map:
                return cluster_map[candidate]
        return ""


def load_wheel_vocabulary(wheel_dir: str | Path) -> WheelVocabulary:
    """Read word forms, synonym runs and the five wheels from ``wheel_dir``."""
    wheel_dir = Path(wheel_dir)
    if not wheel_dir.is_dir():
        raise DataError(f"emotion-wheel folder not found: {wheel_dir}")
    wheels = {wheel: _read_wheel(wheel_dir / f"{wheel}.csv") for wheel in WHEELS}
    clusters = {
        (wheel, level): _wheel_clusters(tree, level)
        for wheel, tree in wheels.items()
        for level in LEVELS
    }
    return WheelVocabulary(
        form_to_words=_read_form_to_words(wheel_dir / WORD_FORMS_FILE),
        word_to_wheel_words=_read_synonym_runs(wheel_dir / SYNONYMS_FILE, _wheel_words(wheels)),
        clusters=clusters,
    )


def score_wheel(
    gt: Mapping[str, Sequence[str]],
    pred: Mapping[str, Sequence[str]],
    wheel_dir: str | Path,
    *,
    vocabulary: WheelVocabulary | None = None,
) -> WheelScores:
    """Emotion-wheel scores of open-set predictions (missing predictions scored as empty)."""
    vocab = vocabulary if vocabulary is not None else load_wheel_vocabulary(wheel_dir)
    per_wheel: dict[str, dict[str, WheelLevelScore]] = {}
    for wheel in WHEELS:
        per_wheel[wheel] = {level: _score_one(gt, pred, vocab, wheel, level) for level in LEVELS}
    summary = {level: _mean_over_wheels(per_wheel, level) for level in LEVELS}
    return WheelScores(
        per_wheel=per_wheel,
        level1=summary["level1"][0],
        level2=summary["level2"][0],
        average=float(np.mean([summary["level1"][0], summary["level2"][0]])),
        level1_precision=summary["level1"][1],
        level1_recall=summary["level1"][2],
        level2_precision=summary["level2"][1],
        level2_recall=summary["level2"][2],
        n_missing_predictions=sum(1 for name in gt if name not in pred),
        n_extra_predictions=sum(1 for name in pred if name not in gt),
    )


def _score_one(
    gt: Mapping[str, Sequence[str]],
    pred: Mapping[str, Sequence[str]],
    vocab: WheelVocabulary,
    wheel: str,
    level: str,
) -> WheelLevelScore:
    precision: list[float] = []
    recall: list[float] = []
    skipped = 0
    for name, truth in gt.items():
        truth_ids = _clusters(truth, vocab, wheel, level)
        if not truth_ids:
            skipped += 1
            continue
        pred_ids = _clusters(pred.get(name, ()), vocab, wheel, level)
        sample_precision, sample_recall = set_precision_recall(truth_ids, pred_ids)
        precision.append(sample_precision)
        recall.append(sample_recall)
    p = float(np.mean(precision)) if precision else 0.0
    r = float(np.mean(recall)) if recall else 0.0
    # The original divides unguarded (NaN when P = R = 0); 0 is the meaningful value.
    f = 2 * (p * r) / (p + r) if p + r > 0 else 0.0
    return WheelLevelScore(
        fscore=f, precision=p, recall=r, n_samples=len(precision), n_skipped=skipped
    )


def _clusters(labels: Sequence[str], vocab: WheelVocabulary, wheel: str, level: str) -> set[str]:
    mapped = (vocab.cluster_of(label.lower().strip(), wheel, level) for label in labels)
    return {cluster for cluster in mapped if cluster}


def _mean_over_wheels(
    per_wheel: dict[str, dict[str, WheelLevelScore]], level: str
) -> tuple[float, float, float]:
    rows = [[s.fscore, s.precision, s.recall] for s in (per_wheel[w][level] for w in WHEELS)]
    f, p, r = np.mean(rows, axis=0).tolist()
    return float(f), float(p), float(r)


# --------------------------------------------------------------------------- file readers


WheelTree = dict[str, dict[str, list[str]]]


def _read_wheel(path: Path) -> WheelTree:
    # Blank cells repeat the last non-blank value of their column (the original's forward fill).
    tree: WheelTree = {}
    level1 = level2 = level3 = ""
    for _, row in read_rows(path, (*LEVELS, "level3"), what=WHEEL_FILE):
        level1 = row["level1"] if row["level1"] != "" else level1
        level2 = row["level2"] if row["level2"] != "" else level2
        level3 = row["level3"] if row["level3"] != "" else level3
        level1, level2, level3 = (v.lower().strip() for v in (level1, level2, level3))
        tree.setdefault(level1, {}).setdefault(level2, []).append(level3)
    return tree


def _wheel_clusters(tree: WheelTree, level: str) -> dict[str, str]:
    # Same assignment order as the original, so a word listed twice ends where it ends there.
    clusters: dict[str, str] = {}
    for level1, branches in tree.items():
        clusters[level1] = level1 if level == "level1" else sorted(branches)[0]
        for level2, leaves in branches.items():
            target = level1 if level == "level1" else level2
            clusters[level2] = target
            for level3 in leaves:
                clusters[level3] = target
    return clusters


def _wheel_words(wheels: Mapping[str, WheelTree]) -> set[str]:
    words: set[str] = set()
    for tree in wheels.values():
        for level1, branches in tree.items():
            words.add(level1)
            for level2, leaves in branches.items():
                words.add(level2)
                words.update(leaves)
    return words


def _read_form_to_words(path: Path) -> dict[str, list[str]]:
    form_to_words: dict[str, list[str]] = {}
    for _, row in read_rows(path, ("name", "format"), what=WHEEL_FILE):
        word = row["name"]
        for form in mertools2025_list(row["format"]):
            form_to_words.setdefault(form, []).append(word)
        form_to_words.setdefault(word, []).append(word)
    return form_to_words


def _read_synonym_runs(path: Path, wheel_words: set[str]) -> dict[str, list[str]]:
    merged: dict[str, set[str]] = {}
    for line, row in read_rows(path, _synonym_columns(), what=WHEEL_FILE):
        for run in range(1, SYNONYM_RUNS + 1):
            word = row[f"word_run{run}"].strip().lower()
            if not word:
                continue
            if word not in wheel_words:
                raise DataError(f"{path}: line {line}: {word!r} (run {run}) is on no wheel")
            merged.setdefault(word, set()).add(word)
            for synonym in mertools2025_list(row[f"synonym_run{run}"]):
                merged.setdefault(synonym.strip().lower(), set()).add(word)
    return {label: sorted(words) for label, words in merged.items()}


def _synonym_columns() -> list[str]:
    return [
        f"{kind}_run{run}" for run in range(1, SYNONYM_RUNS + 1) for kind in ("word", "synonym")
    ]


@register_grouper("wheel")
class WheelGrouper:
    """Groups labels by their cluster on one wheel at one level (unmapped labels stay as is).

    With :func:`meragent.eval.ov.score_ov` this gives set accuracy/recall under wheel clusters;
    the official MER2025 wheel metric (which drops unmapped labels) is :func:`score_wheel`.
    """

    name = "wheel"

    def __init__(
        self, wheel_dir: str | Path, *, wheel: str = "wheel1", level: str = "level1"
    ) -> None:
        if wheel not in WHEELS or level not in LEVELS:
            raise ValueError(f"wheel must be one of {WHEELS} and level one of {LEVELS}")
        self.vocabulary = load_wheel_vocabulary(wheel_dir)
        self.wheel = wheel
        self.level = level

    def group_ids(self, sample: str, labels: Sequence[str]) -> list[str]:
        keys = [label.lower() for label in labels]
        mapped = [self.vocabulary.cluster_of(key.strip(), self.wheel, self.level) for key in keys]
        return [cluster or key for cluster, key in zip(mapped, keys, strict=True)]
