"""Read MER ground-truth / prediction CSVs and score them: the library side of ``meragent eval``.

Six-class files are ``name,discrete[,valence]``; open-set files are ``name,openset`` with a list
string per row. Bad rows are collected and reported together in one line naming the file, the
line number (the header is line 1) and the reason; duplicate names are an error. Ground-truth
names without a prediction are scored as empty/wrong and counted; prediction-only names are
ignored and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from meragent.errors import DataError
from meragent.eval.csv_rows import read_rows
from meragent.eval.grouping import Grouper
from meragent.eval.ov import OVReport, score_ov
from meragent.eval.parsing import OpenSetParseError, ParseMode, mertools2025_list, parse_openset
from meragent.eval.six import SixClassReport, six_class_metrics
from meragent.eval.wheel import WheelScores, score_wheel
from meragent.schema import MISSING_VALENCE, normalize_emotion


@dataclass(frozen=True)
class DiscreteRow:
    """One six-class row: canonical class name and valence (None when absent or -10)."""

    discrete: str
    valence: float | None


class _Problems:
    """Bad rows of one file, raised together as one DataError line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, line: int, message: str) -> None:
        self.items.append(f"line {line}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            more = f" (and {len(self.items) - 1} more bad rows)" if len(self.items) > 1 else ""
            raise DataError(f"{self.path}: {self.items[0]}{more}")


def _check_name(name: str, line: int, first_line: dict[str, int], problems: _Problems) -> bool:
    if not name:
        problems.add(line, "empty name")
        return False
    if name in first_line:
        problems.add(line, f"duplicate name {name!r} (first at line {first_line[name]})")
        return False
    first_line[name] = line
    return True


def read_openset_csv(
    path: str | Path, *, mode: ParseMode | str = "proper", column: str = "openset"
) -> dict[str, list[str]]:
    """``{name: labels}`` from a ``name,openset`` CSV.

    ``mode``: ``proper`` / ``mertools`` (see :mod:`meragent.eval.parsing`), or ``mertools2025``
    for the wheel scorer's splitter (quotes and commas).
    """
    path = Path(path)
    problems = _Problems(path)
    first_line: dict[str, int] = {}
    table: dict[str, list[str]] = {}
    for line, row in read_rows(path, ("name", column)):
        name = row["name"].strip()
        if not _check_name(name, line, first_line, problems):
            continue
        try:
            table[name] = _parse(row[column], mode)
        except OpenSetParseError as exc:
            problems.add(line, f"{name}: {exc}")
    problems.raise_if_any()
    return table


def _parse(text: str, mode: str) -> list[str]:
    if mode == "mertools2025":
        return mertools2025_list(text)
    if mode not in ("proper", "mertools"):
        raise ValueError(f"unknown parse mode {mode!r}")
    return parse_openset(text, mode=mode)  # type: ignore[arg-type]


def read_discrete_csv(path: str | Path) -> dict[str, DiscreteRow]:
    """``{name: DiscreteRow}`` from a ``name,discrete[,valence]`` CSV."""
    path = Path(path)
    problems = _Problems(path)
    first_line: dict[str, int] = {}
    table: dict[str, DiscreteRow] = {}
    for line, row in read_rows(path, ("name", "discrete")):
        name = row["name"].strip()
        if not _check_name(name, line, first_line, problems):
            continue
        try:
            table[name] = DiscreteRow(
                discrete=normalize_emotion(row["discrete"]),
                valence=_valence(row.get("valence", "")),
            )
        except ValueError as exc:
            problems.add(line, f"{name}: {exc}")
    problems.raise_if_any()
    return table


def _valence(text: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"valence {text!r} is not a number") from None
    return None if math.isnan(value) or value == MISSING_VALENCE else value


def score_six_files(gt_csv: str | Path, pred_csv: str | Path) -> SixClassReport:
    """Six-class report of a prediction CSV against a ground-truth CSV."""
    gt = read_discrete_csv(gt_csv)
    pred = read_discrete_csv(pred_csv)
    if not gt:
        raise DataError(f"{gt_csv}: no rows")
    names = list(gt)
    has_valence = any(row.valence is not None for row in gt.values())
    report = six_class_metrics(
        [gt[n].discrete for n in names],
        [pred[n].discrete if n in pred else None for n in names],
        valence_true=[gt[n].valence for n in names] if has_valence else None,
        valence_pred=[pred[n].valence if n in pred else None for n in names]
        if has_valence
        else None,
    )
    return report.model_copy(update={"n_extra_predictions": sum(1 for n in pred if n not in gt)})


def score_ov_files(
    gt_csv: str | Path,
    pred_csv: str | Path,
    grouper: Grouper | None = None,
    *,
    parse: ParseMode = "proper",
) -> OVReport:
    """MER-OV set metrics of a prediction CSV against a ground-truth CSV."""
    gt = read_openset_csv(gt_csv, mode=parse)
    pred = read_openset_csv(pred_csv, mode=parse)
    return score_ov(gt, pred, grouper)


def score_wheel_files(
    gt_csv: str | Path,
    pred_csv: str | Path,
    wheel_dir: str | Path,
    *,
    parse: ParseMode = "proper",
) -> WheelScores:
    """MER2025 emotion-wheel scores; ``parse="mertools"`` uses the wheel scorer's own splitter."""
    mode = "mertools2025" if parse == "mertools" else parse
    gt = read_openset_csv(gt_csv, mode=mode)
    pred = read_openset_csv(pred_csv, mode=mode)
    return score_wheel(gt, pred, wheel_dir)
