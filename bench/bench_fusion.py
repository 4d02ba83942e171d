"""Wall time of the fusion random search at MER2024 size on this machine's CPU.

Random features with a planted class structure stand in for Train&Val: 5,030 clips, three
branches of 1024 + 768 + 1024 dims, six classes with MER-like imbalance, a few percent of
missing features. Two measurements:

* ``exact`` — the paper's protocol (50 combinations × 5 folds × 100 epochs, no early stop, full
  width). Running it to the end takes long on a 2-core CPU, so every stack of the real 50-draw
  search is timed for ``--exact-epochs`` epochs and the epoch time is extrapolated to 100.
  ``--exact-full`` runs it to the end instead.
* ``fast`` — the same search run to the end with the optional speed-ups
  (``--patience``, ``--pca-dim``).

Both report CV WAF of the best combination, so the cost of the speed-ups is visible. The load
average is recorded: on a CPU shared with other work, the times are pessimistic. Results of runs
with different ``--threads`` are stored side by side (``threads=N``) in the output file.
Usage: ``python bench/bench_fusion.py [--threads 2] [--exact-epochs 2] [--patience 10]
[--pca-dim 128] [--out bench/results/fusion.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from meragent.finetune.fusion_data import LABELLED, TrainingRows
from meragent.finetune.fusion_train import (
    FusionTrainConfig,
    _stacks,
    cross_validate,
    sample_combos,
)
from meragent.tools.fusion_model import BranchConfig

N_CLIPS = 5030
DIMS = (1024, 768, 1024)
#: Rough class shares of MER2024 Train&Val (neutral, angry, happy, sad, worried, surprise).
PRIORS = (0.28, 0.22, 0.2, 0.16, 0.1, 0.04)


def planted_rows(seed: int = 0, missing: float = 0.03) -> TrainingRows:
    """Class means in a 32-dim subspace of each branch plus unit isotropic noise. The strengths
    give nearest-true-mean accuracies of about 0.84 / 0.57 / 0.72 per branch (like HuBERT,
    a Chinese text encoder and CLIP on MER), so fusion has something to add."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(PRIORS), size=N_CLIPS, p=PRIORS)
    features, present = [], np.ones((N_CLIPS, len(DIMS)), dtype=bool)
    for m, (dim, strength) in enumerate(zip(DIMS, (0.4, 0.25, 0.33), strict=True)):
        basis = np.linalg.qr(rng.normal(size=(dim, 32)))[0]
        means = rng.normal(size=(len(PRIORS), 32)) * strength
        x = rng.normal(size=(N_CLIPS, dim)) + means[labels] @ basis.T
        gone = rng.random(N_CLIPS) < missing
        x[gone] = 0.0
        present[gone, m] = False
        features.append(x.astype(np.float32))
    # A clip keeps at least one branch, as training would skip it otherwise.
    present[~present.any(axis=1), 0] = True
    return TrainingRows(
        clip_ids=[f"clip_{i:05d}" for i in range(N_CLIPS)],
        branches=[
            BranchConfig(name=name, encoders=[name], dim=dim)
            for name, dim in zip(("hubert-large", "text-768", "clip-large"), DIMS, strict=True)
        ],
        features=features,
        present=present,
        labels=labels.astype(np.int64),
        valence=np.full(N_CLIPS, np.nan, dtype=np.float32),
        kind=np.full(N_CLIPS, LABELLED, dtype=np.int8),
        source=np.arange(N_CLIPS, dtype=np.int64),
    )


def timed_search(rows: TrainingRows, config: FusionTrainConfig) -> dict[str, object]:
    lines: list[str] = []

    def progress(message: str) -> None:
        lines.append(message)
        print("  " + message, flush=True)

    load_start = list(os.getloadavg())
    started = time.perf_counter()
    result = cross_validate(rows, config, progress)
    elapsed = time.perf_counter() - started
    best = result.best
    return {
        "wall_s": round(elapsed, 1),
        "load_avg": [load_start, list(os.getloadavg())],
        "best": {
            "index": best.index,
            "hidden": best.hidden,
            "lr": best.lr,
            "dropout": best.dropout,
            "cv_waf": round(best.waf_mean, 4),
            "cv_waf_std": round(best.waf_std, 4),
            "cv_acc": round(best.acc_mean, 4),
            "best_epochs": best.best_epochs,
        },
        "stacks": lines,
        "mean_epochs_run": float(np.mean([c.epochs_run for c in result.combos])),
    }


def exact_extrapolated(
    rows: TrainingRows, base: FusionTrainConfig, epochs: int
) -> dict[str, object]:
    """Time each stack of the real draw for ``epochs`` epochs; scale to ``base.epochs``."""
    combos = sample_combos(base)
    load_start = list(os.getloadavg())
    total, per_stack = 0.0, []
    groups = _stacks(combos, {h: 1 for h in base.hidden}, 10**9)
    for group in groups:
        config = base.model_copy(
            update={
                "search": len(group),
                "hidden": [group[0].hidden],
                "lr": [group[0].lr],
                "dropout": sorted({c.dropout for c in group}),
                "epochs": epochs,
            }
        )
        started = time.perf_counter()
        cross_validate(rows, config)
        seconds = time.perf_counter() - started
        scaled = seconds / epochs * base.epochs
        total += scaled
        per_stack.append(
            {
                "hidden": group[0].hidden,
                "lr": group[0].lr,
                "combos": len(group),
                "measured_s": round(seconds, 1),
                "epochs_measured": epochs,
                "extrapolated_s": round(scaled, 1),
            }
        )
        print(
            f"  exact d={group[0].hidden} lr={group[0].lr:g} ×{len(group)}: {seconds:.1f}s "
            f"for {epochs} epochs -> {scaled:.0f}s for {base.epochs}",
            flush=True,
        )
    return {
        "extrapolated_wall_s": round(total, 1),
        "load_avg": [load_start, list(os.getloadavg())],
        "stacks": per_stack,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--search", type=int, default=50)
    parser.add_argument("--exact-epochs", type=int, default=2)
    parser.add_argument("--exact-full", action="store_true")
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--pca-dim", type=int, default=128)
    parser.add_argument("--unique", action="store_true")
    parser.add_argument(
        "--exact-combo",
        help="d,lr,dropout: also train this one combination under the exact protocol "
        "(full width, 100 epochs, no early stop) to price the speed-ups in CV WAF",
    )
    parser.add_argument("--skip-fast", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fusion.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = planted_rows()
    base = FusionTrainConfig(search=args.search, threads=args.threads, seed=0)
    report: dict[str, object] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "data": {"clips": N_CLIPS, "dims": list(DIMS), "folds": 5, "search": args.search},
    }
    if not args.skip_exact:
        print("exact protocol (extrapolated)" if not args.exact_full else "exact protocol")
        if args.exact_full:
            report["exact"] = timed_search(rows, base)
        else:
            report["exact"] = exact_extrapolated(rows, base, args.exact_epochs)
    if not args.skip_fast:
        fast = base.model_copy(
            update={"patience": args.patience, "pca_dim": args.pca_dim, "unique": args.unique}
        )
        print(f"fast: patience={args.patience} pca_dim={args.pca_dim} unique={args.unique}")
        report["fast"] = {
            "patience": args.patience,
            "pca_dim": args.pca_dim,
            "unique": args.unique,
            **timed_search(rows, fast),
        }
    if args.exact_combo:
        hidden, lr, dropout = args.exact_combo.split(",")
        single = base.model_copy(
            update={
                "search": 1,
                "hidden": [int(hidden)],
                "lr": [float(lr)],
                "dropout": [float(dropout)],
            }
        )
        print(f"exact protocol, one combination d={hidden} lr={lr} dropout={dropout}")
        for variant, update in (
            ("exact", {}),
            ("fast", {"patience": args.patience, "pca_dim": args.pca_dim}),
        ):
            report[f"single_combo_{variant}"] = timed_search(rows, single.model_copy(update=update))
    # Runs with different thread counts are kept side by side in one results file.
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    previous = results.get(f"threads={args.threads}", {})
    results[f"threads={args.threads}"] = {**previous, **report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
