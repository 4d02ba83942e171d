"""Human-readable output of the metrics: plain-text tables, plots and a markdown summary.

Plots use matplotlib's non-interactive Agg backend, imported only when a report is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meragent.eval.calibrate import CalibrationReport
from meragent.eval.ov import OVReport
from meragent.eval.six import SixClassReport
from meragent.eval.wheel import LEVELS, WHEELS, WheelScores

CONFUSION_PNG = "confusion_matrix.png"
PER_CLASS_PNG = "per_class_f1.png"
SUMMARY_MD = "summary.md"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def six_table(report: SixClassReport) -> str:
    """Headline numbers, then per-class precision/recall/F1/support."""
    head = [
        f"samples: {report.n_samples}  missing predictions: {report.n_missing_predictions}  "
        f"extra predictions: {report.n_extra_predictions}",
        f"accuracy: {_pct(report.accuracy)}  WAF: {_pct(report.waf)}",
    ]
    if report.mse is not None:
        head.append(
            f"valence MSE: {report.mse:.4f} (n={report.n_valence})  "
            f"MER2023 score (WAF - 0.25*MSE): {report.mer2023_score:.4f}"
        )
    rows = [
        [name, _pct(s.precision), _pct(s.recall), _pct(s.f1), str(s.support)]
        for name, s in report.per_class.items()
    ]
    table = _table(["class", "precision", "recall", "f1", "support"], rows)
    return "\n".join(head) + "\n\n" + table


def ov_table(report: OVReport) -> str:
    """Set accuracy/recall/average and the input bookkeeping."""
    rows = [
        ["set accuracy", _pct(report.accuracy)],
        ["set recall", _pct(report.recall)],
        ["average", _pct(report.average)],
        ["samples scored", str(report.n_samples)],
        ["skipped (empty ground truth)", str(report.n_skipped)],
        ["missing predictions (scored empty)", str(report.n_missing_predictions)],
        ["empty predictions", str(report.n_empty_predictions)],
        ["extra predictions (ignored)", str(report.n_extra_predictions)],
    ]
    return f"grouping: {report.grouping}\n" + _table(["metric", "value"], rows)


def wheel_table(scores: WheelScores) -> str:
    """F / P / R per wheel and level, then the averages over wheels."""
    rows = []
    for wheel in WHEELS:
        for level in LEVELS:
            s = scores.per_wheel[wheel][level]
            rows.append(
                [wheel, level, _pct(s.fscore), _pct(s.precision), _pct(s.recall), str(s.n_samples)]
            )
    table = _table(["wheel", "level", "F", "P", "R", "samples"], rows)
    tail = (
        f"level1 F: {_pct(scores.level1)}  level2 F: {_pct(scores.level2)}  "
        f"average: {_pct(scores.average)}  missing predictions: {scores.n_missing_predictions}  "
        f"extra predictions: {scores.n_extra_predictions}"
    )
    return table + "\n" + tail


def calibration_table(report: CalibrationReport) -> str:
    """The threshold sweep (one row per tau) and the chosen tau with its OV comparison."""
    rows = [
        [
            f"{row.tau:.2f}" + (" *" if row.tau == report.best_tau else ""),
            _pct(row.precision),
            _pct(row.recall),
            _pct(row.f1),
            str(row.n_groups),
            _pct(row.ov_average),
            f"{100 * row.ov_difference:+.2f}",
        ]
        for row in report.table
    ]
    table = _table(["tau", "pair P", "pair R", "pair F1", "groups", "OV avg", "diff"], rows)
    tail = [
        f"encoder: {report.encoder}  scope: {report.scope}  word forms: {report.word_forms or '-'}",
        f"samples: {report.n_samples}  labels: {report.n_labels}  label pairs: {report.n_pairs} "
        f"(together in GPT groups: {report.n_together_pairs})",
        f"predictions: {report.prediction_source}",
        f"best tau: {report.best_tau:.2f}  pairwise agreement F1: {_pct(report.best.f1)}",
        f"OV average: cached GPT {_pct(report.cached_ov.average)}, embedding "
        f"{_pct(report.embedding_ov.average)} (difference {100 * report.ov_difference:+.2f} "
        "points)",
    ]
    return table + "\n\n" + "\n".join(tail)


def write_six_report(report: SixClassReport, out_dir: str | Path) -> list[Path]:
    """Write the confusion-matrix PNG, per-class bars PNG and a markdown summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        _plot_confusion(report, out_dir / CONFUSION_PNG),
        _plot_per_class(report, out_dir / PER_CLASS_PNG),
    ]
    summary = out_dir / SUMMARY_MD
    summary.write_text(six_markdown(report), encoding="utf-8")
    return [*paths, summary]


def six_markdown(report: SixClassReport) -> str:
    """Markdown summary with the headline numbers, per-class table and links to the plots."""
    lines = [
        "# Six-class evaluation",
        "",
        f"- samples: {report.n_samples} (missing predictions: {report.n_missing_predictions}, "
        f"extra predictions: {report.n_extra_predictions})",
        f"- accuracy: {_pct(report.accuracy)}",
        f"- WAF: {_pct(report.waf)}",
    ]
    if report.mse is not None and report.mer2023_score is not None:
        lines.append(f"- valence MSE: {report.mse:.4f} (n={report.n_valence})")
        lines.append(f"- MER2023 score (WAF - 0.25 x MSE): {report.mer2023_score:.4f}")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, s in report.per_class.items():
        lines.append(
            f"| {name} | {_pct(s.precision)} | {_pct(s.recall)} | {_pct(s.f1)} | {s.support} |"
        )
    lines += ["", f"![confusion matrix]({CONFUSION_PNG})", "", f"![per-class F1]({PER_CLASS_PNG})"]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_confusion(report: SixClassReport, path: Path) -> Path:
    plt = _pyplot()
    matrix = np.asarray(report.confusion, dtype=np.float64)
    row_sums = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, row_sums, out=np.zeros_like(matrix), where=row_sums > 0)
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(report.labels))
    ax.set_xticks(ticks, report.labels, rotation=30, ha="right")
    ax.set_yticks(ticks, report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=colour)
    fig.colorbar(image, ax=ax, label="share of true class")
    ax.set_title(f"accuracy {_pct(report.accuracy)}  WAF {_pct(report.waf)}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_per_class(report: SixClassReport, path: Path) -> Path:
    plt = _pyplot()
    names = list(report.per_class)
    x = np.arange(len(names))
    width = 0.27
    fig, ax = plt.subplots(figsize=(7, 4))
    for offset, metric in ((-width, "precision"), (0.0, "recall"), (width, "f1")):
        values = [getattr(report.per_class[n], metric) for n in names]
        ax.bar(x + offset, values, width, label=metric)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0.0, 1.0)
    ax.legend()
    ax.set_title("per-class scores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
