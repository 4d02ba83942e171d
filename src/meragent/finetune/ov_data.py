"""The 332 annotated MER-OV samples as labeler training data: loading, k-fold split, chat examples.

Inputs are the EMER-V2 layout: ``descriptions.csv`` (name, chinese, english) and
``openset_labels.csv`` (name, openset as a Python-list string). Each sample becomes one chat
example per language: the labeler's own prompt (``meragent.agents.labeler``, the single source
of truth) with the description, and as answer the label list written by ``format_labels``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from meragent.agents.labeler import format_labels, labeler_messages
from meragent.errors import DataError
from meragent.eval.parsing import OpenSetParseError, parse_openset

Language = Literal["english", "chinese", "both"]
LANGUAGES: tuple[str, ...] = ("english", "chinese")
DESCRIPTIONS_FILE = "descriptions.csv"
LABELS_FILE = "openset_labels.csv"


class OVSample(BaseModel):
    """One description (in one language) with its open-vocabulary ground truth."""

    name: str
    language: str
    description: str
    labels: list[str] = Field(default_factory=list)


class OVDataset(BaseModel):
    """Usable samples plus the rows that were skipped, grouped by reason."""

    samples: list[OVSample]
    skipped: dict[str, list[str]] = Field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Distinct sample names in first-seen order (a name may carry two languages)."""
        return list(dict.fromkeys(sample.name for sample in self.samples))

    def n_skipped(self) -> int:
        return sum(len(names) for names in self.skipped.values())


def _read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = sorted(set(required) - set(reader.fieldnames or []))
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        return [dict(row) for row in reader]


def read_openset_cell(text: str) -> list[str]:
    """One ``openset`` cell as lower-case, de-duplicated labels (``"[]"``/``""``: none)."""
    return list(dict.fromkeys(label.lower() for label in parse_openset(text or "")))


def load_ov_labels(data_dir: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Ground truth by name, plus the label rows that could not be read (by reason)."""
    labels: dict[str, list[str]] = {}
    skipped: dict[str, list[str]] = {}
    for row in _read_csv(data_dir / LABELS_FILE, ("name", "openset")):
        name = (row.get("name") or "").strip()
        try:
            labels[name] = read_openset_cell(row.get("openset") or "")
        except OpenSetParseError:
            skipped.setdefault("unreadable_labels", []).append(name)
    return labels, skipped


def load_ov_samples(data_dir: Path, language: Language = "english") -> OVDataset:
    """Join descriptions with labels; rows without labels or text are skipped and counted."""
    data_dir = Path(data_dir)
    labels, skipped = load_ov_labels(data_dir)
    languages = LANGUAGES if language == "both" else (language,)
    if language not in (*LANGUAGES, "both"):
        raise DataError(f"unknown language {language!r} (english, chinese or both)")
    samples: list[OVSample] = []
    for row in _read_csv(data_dir / DESCRIPTIONS_FILE, ("name", *languages)):
        name = (row.get("name") or "").strip()
        if name not in labels:
            skipped.setdefault("no_labels_row", []).append(name)
            continue
        for lang in languages:
            text = (row.get(lang) or "").strip()
            if not text:
                skipped.setdefault(f"empty_{lang}_description", []).append(name)
                continue
            samples.append(
                OVSample(name=name, language=lang, description=text, labels=labels[name])
            )
    if not samples:
        raise DataError(f"{data_dir}: no usable sample (descriptions joined with labels)")
    return OVDataset(samples=samples, skipped=skipped)


def kfold_split(names: Iterable[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Held-out names per fold: scikit-learn's shuffled ``KFold`` over the sorted names.

    Sorting first makes the split independent of file order; the same names, folds and seed
    always give the same split, and the folds are disjoint and cover every name.
    """
    from sklearn.model_selection import KFold

    unique = sorted(set(names))
    if folds < 2:
        raise DataError(f"need at least 2 folds, got {folds}")
    if folds > len(unique):
        raise DataError(f"{folds} folds but only {len(unique)} samples")
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [sorted(unique[i] for i in test) for _, test in splitter.split(unique)]


def split_fold(dataset: OVDataset, held_out: list[str]) -> tuple[list[OVSample], list[OVSample]]:
    """(train, test) samples for one fold: every language of a name stays on one side."""
    test_names = set(held_out)
    train = [s for s in dataset.samples if s.name not in test_names]
    test = [s for s in dataset.samples if s.name in test_names]
    return train, test


def prompt_messages(description: str) -> list[dict[str, str]]:
    """The labeler's zero-shot prompt: what both the tuned and the untuned model are asked."""
    return labeler_messages(description, few_shot=False)


def training_messages(description: str, labels: list[str]) -> list[dict[str, str]]:
    """Prompt plus the assistant turn the model should learn to write."""
    return [
        *prompt_messages(description),
        {"role": "assistant", "content": format_labels(labels)},
    ]
