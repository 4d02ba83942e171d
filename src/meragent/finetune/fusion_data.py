"""Inputs of fusion training: cached features as dense per-branch matrices, labels, folds.

A *branch* is one encoder (``hubert-large``) or several concatenated (``hubert-large+wav2vec``),
read from the feature cache (``features/<encoder>/<clip>.npy``). A clip whose features are
missing for a branch keeps its other branches (that branch is masked); a clip with no branch at
all is skipped and counted. Rows are *labelled* (they get a fold, train and validate), *augmented*
copies of a labelled clip (features of a corrupted copy; they train only, in the folds that do
not hold their source clip) or *pseudo*-labelled (they train in every fold).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from meragent.errors import DataError
from meragent.schema import EMOTION_TO_ID, EMOTIONS, Clip
from meragent.tools.feature_cache import FeatureCache
from meragent.tools.fusion_model import BranchConfig

#: Row kinds of :class:`TrainingRows`.
LABELLED, AUGMENTED, PSEUDO = 0, 1, 2
#: How many clip ids a report lists before saying "and N more".
LIST_LIMIT = 10


def parse_branches(spec: str | Sequence[str]) -> list[tuple[str, ...]]:
    """``"hubert,clip+dino,text"`` -> ``[("hubert",), ("clip", "dino"), ("text",)]``."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    branches: list[tuple[str, ...]] = []
    for item in items:
        encoders = tuple(part.strip() for part in str(item).split("+") if part.strip())
        if not encoders:
            continue
        if encoders in branches:
            raise DataError(f"fusion input {'+'.join(encoders)!r} is listed twice")
        branches.append(encoders)
    if not branches:
        raise DataError("no encoders given for fusion (e.g. --encoders hubert-large,clip-large)")
    return branches


def short_list(items: Sequence[str], limit: int = LIST_LIMIT) -> str:
    """``a, b, c`` or ``a, b, … and 7 more``."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, … and {len(items) - limit} more"


@dataclass
class FeatureTable:
    """Features of N clips: ``features[m]`` is ``(N, D_m)`` float32, ``present`` ``(N, M)`` bool."""

    clip_ids: list[str]
    branches: list[BranchConfig]
    features: list[np.ndarray]
    present: np.ndarray
    encoder_dims: dict[str, int] = field(default_factory=dict)

    def missing_by_branch(self) -> dict[str, list[str]]:
        return {
            branch.name: [
                c for c, ok in zip(self.clip_ids, self.present[:, m], strict=True) if not ok
            ]
            for m, branch in enumerate(self.branches)
        }

    def rows_with_features(self) -> np.ndarray:
        return np.flatnonzero(self.present.any(axis=1))


def _load_vector(cache: FeatureCache, encoder: str, clip: str | Clip) -> np.ndarray | None:
    """A name reads the folder as it is; a clip also refuses a vector recorded from other media
    (a MER-NOISE copy extracted into the same folder), which then counts as missing."""
    try:
        if isinstance(clip, str):
            return cache.load(encoder, clip)
        return cache.lookup_clip(encoder, clip)
    except FileNotFoundError:
        return None


def _dimension_error(clip_id: str, encoder: str, got: int, want: int, reference: str) -> DataError:
    return DataError(
        f"feature dimension mismatch: clip {clip_id!r}, encoder {encoder!r} has {got} values, "
        f"expected {want} ({reference})"
    )


def _encoder_column(
    cache: FeatureCache,
    encoder: str,
    clips: Sequence[str | Clip],
    clip_ids: list[str],
    want: int | None,
    require: bool,
) -> tuple[list[np.ndarray | None], int]:
    """One encoder's vector per clip (None where missing) and their checked width."""
    column = [_load_vector(cache, encoder, clip) for clip in clips]
    reference = "the width the model was trained with"
    first = next((i for i, v in enumerate(column) if v is not None), None)
    if first is None and (require or want is None):
        raise DataError(
            f"no features for encoder {encoder!r} under {cache.root / encoder} "
            f"for any of the {len(clip_ids)} clips"
        )
    if want is None and first is not None:
        want = int(np.asarray(column[first]).shape[0])
        reference = f"as in clip {clip_ids[first]!r}"
    assert want is not None
    for clip_id, vector in zip(clip_ids, column, strict=True):
        if vector is not None and vector.shape[0] != want:
            raise _dimension_error(clip_id, encoder, int(vector.shape[0]), want, reference)
    return column, want


def load_feature_table(
    cache: FeatureCache,
    clips: Sequence[str | Clip],
    branches: Sequence[Sequence[str]],
    *,
    expected_dims: Mapping[str, int] | None = None,
    require_every_encoder: bool = True,
) -> FeatureTable:
    """Read every (branch, clip) feature; a missing file masks that branch for that clip.

    A clip given as a ``Clip`` (not a bare name) refuses a vector its folder records as made
    from other media: it counts as missing, so train/predict report it instead of using it.

    ``expected_dims`` (encoder -> width, e.g. from a trained model) fixes the widths; otherwise
    the first clip that has an encoder's feature sets it. A different width is a DataError naming
    the clip and the encoder. An encoder with no feature for any clip is a DataError too, unless
    ``require_every_encoder`` is False and its width is known (then its branches are masked).
    """
    clip_ids = [c if isinstance(c, str) else c.id for c in clips]
    expected = dict(expected_dims or {})
    encoders = list(dict.fromkeys(e for branch in branches for e in branch))
    vectors: dict[str, list[np.ndarray | None]] = {}
    dims: dict[str, int] = {}
    for encoder in encoders:
        vectors[encoder], dims[encoder] = _encoder_column(
            cache, encoder, clips, clip_ids, expected.get(encoder), require_every_encoder
        )
    configs, matrices = [], []
    present = np.zeros((len(clip_ids), len(branches)), dtype=bool)
    for m, branch in enumerate(branches):
        width = sum(dims[e] for e in branch)
        matrix = np.zeros((len(clip_ids), width), dtype=np.float32)
        for i in range(len(clip_ids)):
            parts = [vectors[e][i] for e in branch]
            if all(p is not None for p in parts):
                matrix[i] = np.concatenate([np.asarray(p) for p in parts])
                present[i, m] = True
        configs.append(
            BranchConfig(
                name="+".join(branch),
                encoders=list(branch),
                dim=width,
                encoder_dims=[dims[e] for e in branch],
            )
        )
        matrices.append(matrix)
    return FeatureTable(list(clip_ids), configs, matrices, present, dims)


@dataclass
class DataReport:
    """What went into training and what was left out (and why)."""

    n_clips: int = 0
    n_labelled: int = 0
    unlabelled: list[str] = field(default_factory=list)
    no_features: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)
    n_augmented: int = 0
    n_pseudo: int = 0
    warnings: list[str] = field(default_factory=list)

    def lacking_features(self) -> list[str]:
        """Labelled clips left out for having no features, then those with a branch masked."""
        masked = dict.fromkeys(c for clips in self.missing.values() for c in clips)
        return list(dict.fromkeys([*self.no_features, *masked]))

    def lines(self) -> list[str]:
        """A few human-readable lines for the CLI."""
        out = [f"{self.n_labelled} labelled clips used (of {self.n_clips} in the source)"]
        if self.unlabelled:
            out.append(f"skipped {len(self.unlabelled)} clips without a six-class label")
        if self.no_features:
            out.append(
                f"skipped {len(self.no_features)} clips with no features at all: "
                f"{short_list(self.no_features)}"
            )
        for branch, clips in self.missing.items():
            if clips:
                out.append(
                    f"{branch}: features missing for {len(clips)} clips (masked): "
                    f"{short_list(clips)}"
                )
        if self.n_augmented:
            out.append(f"{self.n_augmented} augmented (corrupted-copy) rows")
        if self.n_pseudo:
            out.append(f"{self.n_pseudo} pseudo-labelled rows")
        out.extend(f"warning: {w}" for w in self.warnings)
        return out


@dataclass
class TrainingRows:
    """Dense training data. ``kind``: LABELLED / AUGMENTED / PSEUDO; ``source``: the labelled
    row an augmented row copies (its own index for labelled rows, -1 for pseudo rows)."""

    clip_ids: list[str]
    branches: list[BranchConfig]
    features: list[np.ndarray]
    present: np.ndarray
    labels: np.ndarray
    valence: np.ndarray
    kind: np.ndarray
    source: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.clip_ids)

    @property
    def labelled_rows(self) -> np.ndarray:
        return np.flatnonzero(self.kind == LABELLED)


def _label_ids(clips: Sequence[Clip]) -> np.ndarray:
    return np.array([EMOTION_TO_ID[c.discrete] for c in clips if c.discrete], dtype=np.int64)


def _valences(clips: Sequence[Clip]) -> np.ndarray:
    return np.array([np.nan if c.valence is None else c.valence for c in clips], dtype=np.float32)


def build_training_rows(
    clips: Sequence[Clip],
    cache: FeatureCache,
    branches: Sequence[Sequence[str]],
    *,
    augment_cache: FeatureCache | None = None,
    pseudo: Mapping[str, str] | None = None,
) -> tuple[TrainingRows, DataReport]:
    """Labelled clips (+ corrupted copies from ``augment_cache``, + ``pseudo`` id -> class).

    Clips without a six-class label are skipped (counted); so are clips with no features.
    """
    report = DataReport(n_clips=len(clips))
    labelled = [c for c in clips if c.discrete is not None]
    report.unlabelled = [c.id for c in clips if c.discrete is None]
    table = load_feature_table(cache, labelled, branches)
    keep = table.rows_with_features()
    without = np.ones(len(labelled), dtype=bool)
    without[keep] = False
    report.no_features = [labelled[i].id for i in np.flatnonzero(without)]
    kept = [labelled[i] for i in keep]
    features = [f[keep] for f in table.features]
    present = table.present[keep]
    report.n_labelled = len(kept)
    report.missing = {
        b.name: [kept[i].id for i in np.flatnonzero(~present[:, m])]
        for m, b in enumerate(table.branches)
    }
    labels = _label_ids(kept)
    counts = np.bincount(labels, minlength=len(EMOTIONS))
    report.class_counts = {e: int(counts[i]) for i, e in enumerate(EMOTIONS)}
    absent = [e for e, n in report.class_counts.items() if n == 0]
    if absent and len(kept):
        report.warnings.append(
            f"no training clip of class {', '.join(absent)}: the model can still output it, "
            "but has learnt nothing for it (WAF weighs classes by support, so it stays defined)"
        )
    rows = TrainingRows(
        clip_ids=[c.id for c in kept],
        branches=table.branches,
        features=features,
        present=present,
        labels=labels,
        valence=_valences(kept),
        kind=np.full(len(kept), LABELLED, dtype=np.int8),
        source=np.arange(len(kept), dtype=np.int64),
    )
    dims = table.encoder_dims
    if augment_cache is not None:
        rows = _with_augmented(rows, augment_cache, branches, dims, report)
    if pseudo:
        rows = _with_pseudo(rows, cache, branches, dims, pseudo, report)
    return rows, report


def _append_rows(
    rows: TrainingRows,
    table: FeatureTable,
    keep: np.ndarray,
    labels: np.ndarray,
    valence: np.ndarray,
    kind: int,
    source: np.ndarray,
) -> TrainingRows:
    for m, (mine, theirs) in enumerate(zip(rows.branches, table.branches, strict=True)):
        if mine.dim != theirs.dim:
            raise DataError(
                f"fusion input {mine.name!r}: extra rows have {theirs.dim} values, "
                f"labelled rows {rows.branches[m].dim}"
            )
    return TrainingRows(
        clip_ids=rows.clip_ids + [table.clip_ids[i] for i in keep],
        branches=rows.branches,
        features=[
            np.concatenate([a, b[keep]]) for a, b in zip(rows.features, table.features, strict=True)
        ],
        present=np.concatenate([rows.present, table.present[keep]]),
        labels=np.concatenate([rows.labels, labels]),
        valence=np.concatenate([rows.valence, valence]),
        kind=np.concatenate([rows.kind, np.full(len(keep), kind, dtype=np.int8)]),
        source=np.concatenate([rows.source, source]),
    )


def _with_augmented(
    rows: TrainingRows,
    cache: FeatureCache,
    branches: Sequence[Sequence[str]],
    dims: Mapping[str, int],
    report: DataReport,
) -> TrainingRows:
    labelled = rows.labelled_rows
    ids = [rows.clip_ids[i] for i in labelled]
    table = load_feature_table(
        cache, ids, branches, expected_dims=dims, require_every_encoder=False
    )
    keep = table.rows_with_features()
    if len(keep) < len(ids):
        report.warnings.append(
            f"--augment: {len(ids) - len(keep)} labelled clips have no corrupted-copy features"
        )
    report.n_augmented = len(keep)
    source = labelled[keep]
    return _append_rows(
        rows, table, keep, rows.labels[source], rows.valence[source], AUGMENTED, source
    )


def _with_pseudo(
    rows: TrainingRows,
    cache: FeatureCache,
    branches: Sequence[Sequence[str]],
    dims: Mapping[str, int],
    pseudo: Mapping[str, str],
    report: DataReport,
) -> TrainingRows:
    clash = sorted(set(pseudo) & set(rows.clip_ids))
    if clash:
        raise DataError(f"pseudo-labelled clips are also labelled: {short_list(clash)}")
    ids = list(pseudo)
    table = load_feature_table(cache, ids, branches, expected_dims=dims)
    keep = table.rows_with_features()
    report.n_pseudo = len(keep)
    labels = np.array([EMOTION_TO_ID[pseudo[ids[i]]] for i in keep], dtype=np.int64)
    valence = np.full(len(keep), np.nan, dtype=np.float32)
    source = np.full(len(keep), -1, dtype=np.int64)
    return _append_rows(rows, table, keep, labels, valence, PSEUDO, source)


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """A fold id per row from scikit-learn's ``StratifiedKFold(shuffle=True, random_state=seed)``.

    Every fold keeps the class proportions (its size differs from the others' by at most one) and
    the same seed gives the same folds. Raises DataError when there are fewer rows than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    if n_folds < 2:
        raise DataError(f"--folds must be at least 2, got {n_folds}")
    if len(labels) < n_folds:
        raise DataError(
            f"only {len(labels)} labelled clips with features: fewer than --folds {n_folds}"
        )
    folds = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class rarer than the fold count is legitimate here (it just misses some folds).
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            folds[held_out] = fold
    return folds
