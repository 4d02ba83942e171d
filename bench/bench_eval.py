"""Benchmark: MER-OV scoring of 115,595 synthetic samples with the embedding grouper on CPU.

The vocabulary is the emotion-wheel word list (``word_forms.csv``: 1,255 words, topped up with
their forms to ``--vocab`` labels). Each sample draws 1-6 ground-truth and 0-6 predicted labels
with Zipf-like frequencies (a prediction reuses some ground-truth labels or their forms, as real
ones do). Timed: loading the bundled MiniLM, embedding every distinct label once (``fit``), and
grouping + scoring every sample. Acceptance (issue 5): the whole run under 30 s on 2 CPU cores.

    .venv/bin/python bench/bench_eval.py [--samples 115595] [--vocab 2000] [--shared-data DIR]

Writes ``bench/results/eval.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from meragent.eval.embedding_grouper import DEFAULT_TAU, EmbeddingGrouper, read_word_forms
from meragent.eval.ov import score_ov
from meragent.tools.sentence_encoder import load_sentence_encoder

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "eval.json"
MER2024_CANDIDATES = 115_595  # size of the MER2024 unlabeled candidate set


def _shared_data(given: str | None) -> Path:
    default = REPO / ".." / "shared" / "data"
    return Path(given or os.environ.get("MERAGENT_SHARED_DATA", str(default))).resolve()


def build_vocabulary(word_forms: Path, size: int) -> tuple[list[str], dict[str, list[str]]]:
    """Wheel words first, then their forms until ``size``; and each word's in-vocabulary forms."""
    families = read_word_forms(word_forms)
    vocab = list(dict.fromkeys(family[0] for family in families))
    for family in families:
        for form in family[1:]:
            if len(vocab) >= size:
                break
            if form not in vocab:
                vocab.append(form)
    vocab = vocab[:size]
    known = set(vocab)
    forms = {f[0]: [w for w in f if w in known] for f in families if f[0] in known}
    return vocab, forms


def synthetic_samples(
    n: int, vocab: list[str], forms: dict[str, list[str]], seed: int
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 0.8  # Zipf-like: few common words
    weights /= weights.sum()
    # Draw everything at once (per-sample rng.choice with p= is slow); up to 6 + 3 per sample.
    truth_draws = rng.choice(len(vocab), size=(n, 6), p=weights)
    extra_draws = rng.choice(len(vocab), size=(n, 3), p=weights)
    truth_sizes = rng.integers(1, 7, size=n)
    extra_sizes = rng.integers(0, 4, size=n)
    keep = rng.random((n, 6)) < 0.5
    reform = rng.random((n, 6)) < 0.3
    pick = rng.integers(0, 1 << 30, size=(n, 6))
    gt: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for i in range(n):
        name = f"sample_{i:08d}"
        truth = [vocab[k] for k in truth_draws[i, : truth_sizes[i]]]
        kept = []
        for j, label in enumerate(truth):
            if not keep[i, j]:
                continue
            # Some kept labels come back as another form ("happy" -> "happiness").
            alternatives = forms.get(label)
            kept.append(
                alternatives[pick[i, j] % len(alternatives)]
                if alternatives and reform[i, j]
                else label
            )
        gt[name] = truth
        pred[name] = kept + [vocab[k] for k in extra_draws[i, : extra_sizes[i]]]
    return gt, pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=MER2024_CANDIDATES)
    parser.add_argument("--vocab", type=int, default=2000, help="distinct labels in the pool")
    parser.add_argument("--shared-data", default=None, help="folder with emotion_wheel/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    word_forms = _shared_data(args.shared_data) / "emotion_wheel" / "word_forms.csv"
    vocab, forms = build_vocabulary(word_forms, args.vocab)
    gt, pred = synthetic_samples(args.samples, vocab, forms, args.seed)
    distinct = len({label for labels in (*gt.values(), *pred.values()) for label in labels})

    load_before = os.getloadavg()[0]
    clock = _Clock()
    encoder = load_sentence_encoder("bundled:minilm", device="cpu")
    clock.lap("load_encoder")
    grouper = EmbeddingGrouper(encoder, tau=DEFAULT_TAU, word_forms=word_forms)
    grouper.fit(label for labels in (*gt.values(), *pred.values()) for label in labels)
    clock.lap("embed_labels")
    report = score_ov(gt, pred, grouper)  # fit() again is a no-op: every label is known
    clock.lap("group_and_score")

    threads = _torch_threads()
    wall_total = sum(clock.wall.values())
    # On a shared machine wall time includes waiting for the CPU. Process CPU time does not:
    # loading and scoring run on one thread, embedding on `threads`, so this estimates the
    # wall time of the same run on an otherwise idle machine with that many cores.
    idle_estimate = (
        clock.cpu["load_encoder"]
        + clock.cpu["embed_labels"] / threads
        + clock.cpu["group_and_score"]
    )
    result = {
        "samples": args.samples,
        "distinct_labels": distinct,
        "grouper": {"name": "embedding", "encoder": encoder.model_id, "tau": grouper.tau,
                    "scope": grouper.scope, "word_forms": True},
        "wall_seconds": {**clock.rounded(clock.wall), "total": round(wall_total, 3)},
        "cpu_seconds": clock.rounded(clock.cpu),
        "idle_machine_estimate_seconds": round(idle_estimate, 3),
        "scoring_samples_per_second": round(args.samples / clock.wall["group_and_score"], 1),
        "under_30s_wall": wall_total < 30.0,
        "load_average_at_start": round(load_before, 2),
        "scores": report.model_dump(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch_threads": threads},
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        json.dumps({key: result[key] for key in ("wall_seconds", "cpu_seconds")}),
        f"idle-machine estimate: {result['idle_machine_estimate_seconds']} s",
        f"distinct labels: {distinct}",
        f"-> {RESULTS}",
    )


class _Clock:
    """Wall and process-CPU seconds per named stage."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def lap(self, stage: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[stage], self.cpu[stage] = wall - self._wall, cpu - self._cpu
        self._wall, self._cpu = wall, cpu

    @staticmethod
    def rounded(values: dict[str, float]) -> dict[str, float]:
        return {key: round(value, 3) for key, value in values.items()}


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


if __name__ == "__main__":
    main()
