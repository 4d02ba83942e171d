"""Report of the full 5-fold LoRA run on the 332 samples (issue 14): JSON, PNGs, openset CSV.

The run itself is ``meragent finetune lora --folds 5`` (one process for all folds, or one
``--fold k`` process per fold writing into the same ``--out``; either way each fold leaves
``fold<k>/fold.json`` + ``predictions.jsonl`` and a rerun resumes after them). This script reads
those folders, checks that every sample was predicted exactly once by the fold that held it out,
scores the three systems (zero-shot base, lexicon, LoRA) per fold and pooled with the MER2024
set metrics (embedding grouper at its calibrated default tau, with the word forms) and the
MER2025 emotion-wheel F-scores, and writes:

* ``bench/results/lora_5fold.json`` — config, precision, wall time, per-fold and pooled scores,
  mean ± std over folds, the folds that are missing (a partial run is labelled ``partial``);
* ``bench/results/lora_5fold.png`` — loss curves of the folds and per-fold set-avg / EW-mean bars;
* ``bench/results/lora_5fold_openset.csv`` — the LoRA labels of every predicted sample;
* the README table on stdout.

Usage: ``python bench/bench_lora_5fold.py --run runs/lora5 [--started 2026-12-01T20:05:00Z]``.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from meragent.finetune.lora_pooled import pool_predictions, pooled_scores, write_openset_csv
from meragent.finetune.ov_eval import embedding_grouper_factory, summarise

SYSTEMS = ("zero_shot", "lexicon", "lora")
SHOWN = {"zero_shot": "zero-shot base", "lexicon": "lexicon extractor", "lora": "LoRA"}
RESULTS = Path("bench/results")
FOLD_FIELDS: tuple[str, ...] = ("fold", "n_train", "n_test", "train_steps", "loss_first")
FOLD_FIELDS += ("loss_last", "losses", "parse_flags", "scores", "timings_s")


def read_folds(run: Path, folds: int) -> tuple[list[dict[str, Any]], list[int]]:
    records, missing = [], []
    for fold in range(folds):
        path = run / f"fold{fold}" / "fold.json"
        if path.is_file():
            records.append(json.loads(path.read_text(encoding="utf-8")))
        else:
            missing.append(fold)
    return records, missing


def merge_side_zero_shot(
    run: Path, records: list[dict[str, Any]], grouper: Any, wheel: Path
) -> list[int]:
    """Folds run with ``--no-zero-shot`` whose base predictions a separate process wrote.

    ``<run>_zero_shot/fold<k>.jsonl`` (rows ``{"name", "zero_shot"}``, the same prompt, decoding
    and held-out names) is merged into the fold's ``predictions.jsonl`` and scored like the rest.
    """
    from meragent.finetune.lora_fold import score_systems
    from meragent.finetune.ov_data import OVSample
    from meragent.finetune.ov_eval import SystemPrediction

    merged = []
    for record in records:
        side = run.parent / f"{run.name}_zero_shot" / f"fold{record['fold']}.jsonl"
        if "zero_shot" in record["scores"]["english"] or not side.is_file():
            continue
        extra = {
            row["name"]: row["zero_shot"]
            for row in map(json.loads, side.read_text(encoding="utf-8").splitlines())
        }
        path = run / f"fold{record['fold']}" / "predictions.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if {r["name"] for r in rows} != set(extra):
            raise SystemExit(f"{side}: not the held-out names of fold {record['fold']}")
        for row in rows:
            row["zero_shot"] = extra[row["name"]]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
        samples = [
            OVSample(
                name=r["name"], language=r["language"], description="", labels=r["ground_truth"]
            )
            for r in rows
        ]
        predictions = {"zero_shot": [SystemPrediction(**r["zero_shot"]) for r in rows]}
        scores = score_systems(samples, predictions, grouper, wheel)
        record["scores"]["english"]["zero_shot"] = scores["english"]["zero_shot"]
        merged.append(record["fold"])
    return merged


def run_config(run: Path) -> dict[str, Any]:
    """The run's options (``results.json`` of any of its processes; ``fold`` differs only)."""
    path = run / "results.json"
    if not path.is_file():
        return {}
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["config"]
    config.pop("fold", None)
    return config


def wall_seconds(run: Path, records: list[dict[str, Any]], started: str | None) -> float | None:
    if started is None or not records:
        return None
    start = datetime.fromisoformat(started.replace("Z", "+00:00"))
    ends = [(run / f"fold{r['fold']}" / "fold.json").stat().st_mtime for r in records]
    return round(max(ends) - start.timestamp(), 1)


def plot(records: list[dict[str, Any]], out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    curves, bars = fig.subplots(1, 2)
    for record in records:
        losses = record["losses"]
        curves.plot(range(1, len(losses) + 1), losses, label=f"fold {record['fold']}")
    curves.set_xlabel("optimizer step")
    curves.set_ylabel("answer-token loss")
    curves.set_title("LoRA training loss per fold")
    curves.legend()
    curves.grid(alpha=0.3)
    width = 0.13
    for offset, (system, metric) in enumerate(
        (s, m) for s in SYSTEMS for m in ("average", "wheel_mean")
    ):
        xs = [r["fold"] + (offset - 2.5) * width for r in records]
        ys = [r["scores"]["english"][system][metric] for r in records]
        label = f"{SHOWN[system]} {'set-avg' if metric == 'average' else 'EW-mean'}"
        bars.bar(xs, ys, width=width, label=label, hatch="//" if metric == "wheel_mean" else "")
    bars.set_xticks([r["fold"] for r in records])
    bars.set_xlabel("fold")
    bars.set_ylim(0, 1)
    bars.set_title("held-out scores per fold")
    bars.legend(fontsize=7, ncol=3, loc="upper center")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def table(summary: dict[str, Any], pooled: dict[str, Any], n_folds: int) -> str:
    lines = [
        f"| system | set-avg (mean ± std, {n_folds} folds) | EW-mean (mean ± std) "
        "| set-avg pooled | EW-mean pooled |",
        "|---|---|---|---|---|",
    ]
    for system in SYSTEMS:
        fold = summary["english"][system]
        whole = pooled["scores"]["english"][system]
        lines.append(
            f"| {SHOWN[system]} | {fold['average'].mean:.3f} ± {fold['average'].std:.3f} "
            f"| {fold['wheel_mean'].mean:.3f} ± {fold['wheel_mean'].std:.3f} "
            f"| {whole['average']:.3f} | {whole['wheel_mean']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/lora5"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--started", default=None, help="UTC start of the run (ISO 8601).")
    parser.add_argument("--wheel-dir", type=Path, default=Path("../shared/data/emotion_wheel"))
    parser.add_argument("--encoder", default="bundled:minilm")
    args = parser.parse_args()
    records, missing = read_folds(args.run, args.folds)
    if not records:
        raise SystemExit(f"no finished fold under {args.run}")
    forms = args.wheel_dir / "word_forms.csv"
    grouper = embedding_grouper_factory(args.encoder, forms, None)  # calibrated default tau
    side_zero_shot = merge_side_zero_shot(args.run, records, grouper, args.wheel_dir)
    pooled = pooled_scores(args.run, records, grouper, args.wheel_dir)
    samples, systems = pool_predictions(args.run, records)
    csv_path = write_openset_csv(RESULTS / "lora_5fold_openset.csv", samples, systems["lora"])
    summary = summarise([r["scores"] for r in records])
    png = plot(records, RESULTS / "lora_5fold.png")
    result = {
        "task": "MER-OV labeler: zero-shot base vs lexicon vs LoRA, k-fold on ov332",
        "status": "complete" if not missing else f"partial: folds {missing} did not finish",
        "config": run_config(args.run),
        "precision": sorted({r.get("precision", "?") for r in records}),
        "zero_shot_by_separate_process": side_zero_shot,
        "wall_seconds": wall_seconds(args.run, records, args.started),
        "scoring": {
            "grouper": f"embedding ({args.encoder}, word forms, default tau)",
            "wheel": str(args.wheel_dir),
        },
        "folds": [{k: r[k] for k in FOLD_FIELDS} for r in records],
        "summary": {
            lang: {s: {m: v.model_dump() for m, v in ms.items()} for s, ms in systems_.items()}
            for lang, systems_ in summary.items()
        },
        "pooled": pooled,
        "openset_csv": str(csv_path),
        "plot": str(png),
    }
    out = RESULTS / "lora_5fold.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print(table(summary, pooled, len(records)))
    print(f"\n{result['status']}; wrote {out}, {png}, {csv_path}")


if __name__ == "__main__":
    main()
