"""GPU suite step: ``meragent fusion train`` through the real CLI at MER2024 size.

Synthetic Train&Val: 5,030 clips, features of 1024 (chinese-hubert-large), 768
(clip-vit-large-patch14) and 1024 (chinese-roberta-wwm-ext-large) values written as
``features/<encoder>/<clip>.npy`` (MERTools' layout; a few percent missing, as in real caches),
with class means planted in a 32-dim subspace of each input and MER-like class shares (the
recipe of ``bench/bench_fusion.py``). The labels go into a CSV manifest (``name, subtitle,
discrete``: a clip with a subtitle needs no media file). Then the paper's protocol runs:
50 combinations × 5 folds × 100 epochs, no early stop, on ``--device``. Recorded: wall time of the
CLI (start and data loading included) and of the search alone (``search.json``), the best
combination and its CV WAF, and the seed, so a CPU run with the same seed can be compared.

Usage: ``python bench/gpu_suite_fusion.py --out fusion.json [--tiny] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from gpu_suite_common import Recorder, device_facts, run_cli, without_stdout

ENCODERS = (
    ("chinese-hubert-large-UTT", 1024),
    ("clip-vit-large-patch14-UTT", 768),
    ("chinese-roberta-wwm-ext-large-UTT", 1024),
)
#: Rough class shares of MER2024 Train&Val (neutral, angry, happy, sad, worried, surprise).
PRIORS = (0.28, 0.22, 0.2, 0.16, 0.1, 0.04)
EMOTIONS = ("neutral", "angry", "happy", "sad", "worried", "surprise")
#: Class-mean strength per input: nearest-mean accuracies near HuBERT / CLIP / text on MER.
STRENGTHS = (0.4, 0.33, 0.25)


def write_features(root: Path, n: int, dims: list[int], seed: int, missing: float) -> list[str]:
    """Planted features under ``root/<encoder>/``; returns the labels (one per clip)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(PRIORS), size=n, p=PRIORS)
    ids = [f"clip_{i:05d}" for i in range(n)]
    for index, ((name, _), dim, strength) in enumerate(zip(ENCODERS, dims, STRENGTHS, strict=True)):
        rank = min(32, dim)
        basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0]
        means = rng.normal(size=(len(PRIORS), rank)) * strength
        x = (rng.normal(size=(n, dim)) + means[labels] @ basis.T).astype(np.float32)
        # Every clip keeps its first input: a clip with no features at all is skipped.
        gone = rng.random(n) < missing if index > 0 else np.zeros(n, dtype=bool)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for clip_id, vector, absent in zip(ids, x, gone, strict=True):
            if not absent:
                np.save(folder / f"{clip_id}.npy", vector)
    return [EMOTIONS[k] for k in labels]


def write_manifest(path: Path, labels: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["name", "subtitle", "discrete"])
        for i, label in enumerate(labels):
            writer.writerow([f"clip_{i:05d}", "。", label])
    return path


def best_from_search(model_dir: Path) -> dict[str, Any]:
    search = json.loads((model_dir / "search.json").read_text(encoding="utf-8"))
    best = next(c for c in search["combos"] if c["index"] == search["best_index"])
    return {
        "search_s": round(search["elapsed_s"], 1),
        "n_train_rows": search["n_train_rows"],
        "best": {
            key: best[key]
            for key in ("index", "hidden", "lr", "dropout", "seed", "waf_mean", "waf_std")
        }
        | {"acc_mean": best["acc_mean"], "best_epochs": best["best_epochs"]},
        "combos": len(search["combos"]),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="result JSON path")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="120 clips, 2 × 2 × 2, toy widths")
    parser.add_argument("--clips", type=int, default=None, help="default 5030 (120 with --tiny)")
    parser.add_argument("--search", type=int, default=None, help="default 50 (2 with --tiny)")
    parser.add_argument("--folds", type=int, default=None, help="default 5 (2 with --tiny)")
    parser.add_argument("--epochs", type=int, default=None, help="default 100 (2 with --tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing", type=float, default=0.03, help="share of absent features")
    parser.add_argument("--cli-timeout", type=float, default=600.0)
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="seconds from the step's start by which the CLI must have stopped (its output kept)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    args = parser.parse_args(argv)
    args.clips = args.clips or (120 if args.tiny else 5030)
    args.search = args.search or (2 if args.tiny else 50)
    args.folds = args.folds or (2 if args.tiny else 5)
    args.epochs = args.epochs or (2 if args.tiny else 100)
    args.dims = [16, 12, 16] if args.tiny else [dim for _, dim in ENCODERS]
    return args


def run(args: argparse.Namespace, work: Path) -> None:
    started = time.perf_counter()
    record = Recorder(args.out, **device_facts(args.device), tiny=args.tiny)
    protocol = {
        "clips": args.clips, "dims": args.dims, "search": args.search, "folds": args.folds,
        "epochs": args.epochs, "seed": args.seed, "patience": None, "pca_dim": None,
    }  # fmt: skip
    record.set("protocol", protocol)
    t0 = time.perf_counter()
    labels = write_features(work / "features", args.clips, args.dims, args.seed, args.missing)
    manifest = write_manifest(work / "labels.csv", labels)
    record.set("write_features_s", round(time.perf_counter() - t0, 1))
    cli = [
        "fusion", "train", str(manifest),
        "--encoders", ",".join(name for name, _ in ENCODERS),
        "--features", str(work / "features"), "--out", str(work / "model"),
        "--folds", str(args.folds), "--search", str(args.search), "--epochs", str(args.epochs),
        "--seed", str(args.seed), "--device", args.device,
    ]  # fmt: skip
    timeout_s = args.cli_timeout
    if args.deadline_s is not None:
        # Stop the CLI ourselves before the suite kills the step: its progress lines survive.
        timeout_s = min(timeout_s, max(5.0, args.deadline_s - (time.perf_counter() - started)))
    result = run_cli(cli, timeout_s=timeout_s)
    record.set("cli", without_stdout(result))
    # Exit code 1 means "finished, but some clips lack a feature" (the planted missing ones):
    # the model is written all the same.
    if result.get("rc") in (0, 1) and (work / "model" / "search.json").is_file():
        for key, value in best_from_search(work / "model").items():
            record.set(key, value)
        record.finish()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)
        return
    with tempfile.TemporaryDirectory(prefix="gpu-suite-fusion-") as work:
        run(args, Path(work))


if __name__ == "__main__":
    main()
