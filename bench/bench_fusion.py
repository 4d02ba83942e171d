"""Wall time of the exact MER2024 fusion search on this machine's CPU, next to the machine floor.

Random features with a planted class structure stand in for Train&Val: 5,030 clips, three
branches of 1024 + 768 + 1024 dims, six classes with MER-like imbalance, a few percent of
missing features. The protocol is MER2024's (``--search 50`` combinations x 5 folds x
``--epochs 100``, Adam with weight decay 1e-5, batch 32, full width, no early stop, best held-out
epoch) and it runs to the end: nothing is extrapolated.

The floor is measured in the same run: right after each stack of combinations has trained, a
fused Adam step over tensors of exactly that stack's shapes and the bf16 matmuls of its first
layers (forward and weight gradient of one batch per fold; the held-out forward once per epoch)
are timed over ``--floor-steps`` steps and scaled to the steps the stack ran. Our wall time over
the summed floor is the ratio printed; both see the same machine load (recorded, with
``uptime``: the CPU may be shared). Each ``--precision`` is run in turn (with ``bf16,fp32`` the
CV WAF difference of the best combination is reported). Results land under ``--label`` in the
output file, rewritten after every stack, so an interrupted run keeps what it measured.
With ``--stack-workers N`` the stacks train N at a time (``--threads`` each) and every floor is
measured after the search, alone, on N x ``--threads`` threads; the wall is then the search's.
Usage: ``python bench/bench_fusion.py [--threads 1] [--stack-workers 1] [--search 50]
[--epochs 100] [--precision bf16,fp32] [--label exact] [--out bench/results/fusion.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from meragent.finetune.fusion_data import LABELLED, TrainingRows
from meragent.finetune.fusion_train import FusionTrainConfig, StackTrainer, cross_validate
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


def _uptime() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def _timed(fn: Callable[[], object], steps: int) -> float:
    """Seconds per call of ``fn`` (one warm-up call first)."""
    fn()
    began = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - began) / steps


def stack_floor(trainer: StackTrainer, steps: int) -> dict[str, float]:
    """The machine floor of one trained stack: fused Adam over its shapes, bf16 matmuls."""
    import torch

    params = [torch.zeros_like(p) for p in trainer.params.values()]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    adam = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5, fused=True)
    adam_s = _timed(adam.step, steps)
    del adam, params
    k, batch = trainer.n_folds, trainer.config.batch_size
    width = trainer.plan.val_rows.shape[1]
    weights = [trainer.params[trainer.arch.first_layer(m)[0]] for m in range(len(trainer.xs))]
    shapes = [(w.shape[1], w.shape[2]) for w in weights]
    mats = [
        (
            torch.randn(k, batch, d, dtype=torch.bfloat16),
            torch.randn(k, d, cd, dtype=torch.bfloat16),
            torch.randn(k, batch, cd, dtype=torch.bfloat16),
        )
        for d, cd in shapes
    ]

    def train_matmuls() -> None:
        for x, w, g in mats:
            torch.bmm(x, w)
            torch.bmm(x.transpose(1, 2), g)

    matmul_s = _timed(train_matmuls, steps)
    held_out = [
        (torch.randn(k, width, d, dtype=torch.bfloat16), w)
        for (x, w, g), (d, _) in zip(mats, shapes, strict=True)
    ]

    def val_matmuls() -> None:
        for x, w in held_out:
            torch.bmm(x, w)

    val_s = _timed(val_matmuls, 3)
    steps_per_epoch = math.ceil(trainer.plan.epoch_length / batch)
    n_steps = trainer.epochs_run * steps_per_epoch
    floor = n_steps * (adam_s + matmul_s) + trainer.epochs_run * val_s
    return {
        "params": int(sum(p.numel() for p in trainer.params.values())),
        "steps": n_steps,
        "adam_step_s": round(adam_s, 5),
        "matmul_step_s": round(matmul_s, 5),
        "floor_s": round(floor, 1),
    }


class Recorder:
    """Collects one search's stacks (wall time, floor) and rewrites the results file each time."""

    def __init__(
        self, out: Path, label: str, precision: str, floor_steps: int, floor_threads: int | None
    ) -> None:
        self.out, self.label, self.precision = out, label, precision
        self.floor_steps = floor_steps
        #: None: each stack's floor right after it trained (stacks run one at a time). Else the
        #: stacks train side by side, so their floors are measured after the search, alone, on
        #: this many threads (all the cores the workers used): measuring one while another stack
        #: still trains would inflate it.
        self.floor_threads = floor_threads
        self.deferred: list[StackTrainer] = []
        self.stacks: list[dict[str, object]] = []
        self.entry: dict[str, object] = {}
        self.began = time.perf_counter()
        self.mark = self.began
        self.floor_time = 0.0
        self.search_wall: float | None = None

    def on_stack(self, trainer: StackTrainer) -> None:
        if self.floor_threads is not None:
            self.deferred.append(trainer)
            return
        trained = time.perf_counter() - self.mark
        began = time.perf_counter()
        floor = stack_floor(trainer, self.floor_steps)
        self.floor_time += time.perf_counter() - began
        combos = trainer.combos
        self.stacks.append(
            {
                "hidden": combos[0].hidden,
                "lr": combos[0].lr,
                "combos": len(combos),
                "epochs": trainer.epochs_run,
                "wall_s": round(trained, 1),
                **floor,
                "ratio": round(trained / max(floor["floor_s"], 1e-9), 2),
                "loadavg": list(os.getloadavg()),
            }
        )
        print(f"  stack {self.stacks[-1]}", flush=True)
        self.mark = time.perf_counter()
        self.save(done=False)

    def measure_deferred(self, search_wall: float) -> None:
        """Floors of stacks that trained side by side: each alone, on ``floor_threads``."""
        import torch

        self.search_wall = search_wall
        previous = torch.get_num_threads()
        torch.set_num_threads(int(self.floor_threads or previous))
        began = time.perf_counter()
        try:
            for trainer in self.deferred:
                floor = stack_floor(trainer, self.floor_steps)
                self.stacks.append(
                    {
                        "hidden": trainer.combos[0].hidden,
                        "lr": trainer.combos[0].lr,
                        "combos": len(trainer.combos),
                        "epochs": trainer.epochs_run,
                        **floor,
                        "loadavg": list(os.getloadavg()),
                    }
                )
        finally:
            torch.set_num_threads(previous)
        self.floor_time += time.perf_counter() - began
        self.deferred.clear()

    def save(self, done: bool, best: dict[str, object] | None = None) -> None:
        if self.search_wall is not None:
            wall = self.search_wall
        else:
            wall = sum(float(str(s["wall_s"])) for s in self.stacks)
        floor = sum(float(str(s["floor_s"])) for s in self.stacks)
        self.entry.update(
            {
                "finished": done,
                "stacks_done": len(self.stacks),
                "wall_s": round(wall, 1),
                "floor_s": round(floor, 1),
                "ratio_to_floor": round(wall / floor, 2) if floor else None,
                "stacks": self.stacks,
                "uptime_end": _uptime(),
            }
        )
        if best is not None:
            self.entry["best"] = best
        results = json.loads(self.out.read_text("utf-8")) if self.out.is_file() else {}
        results.setdefault(self.label, {})[self.precision] = self.entry
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(results, indent=2), encoding="utf-8")


def run_search(
    rows: TrainingRows, config: FusionTrainConfig, recorder: Recorder
) -> dict[str, object]:
    import torch

    recorder.entry.update(
        {
            "precision": config.precision,
            "threads": config.threads,
            "stack_workers": config.stack_workers,
            "adam_moments": config.adam_moments,
            "protocol": {
                "search": config.search,
                "folds": config.folds,
                "epochs": config.epochs,
                "batch_size": config.batch_size,
                "weight_decay": config.weight_decay,
                "clips": N_CLIPS,
                "dims": list(DIMS),
            },
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "torch": torch.__version__,
            },
            "uptime_start": _uptime(),
        }
    )
    began = time.perf_counter()
    result = cross_validate(rows, config, lambda m: print("  " + m, flush=True), recorder.on_stack)
    if recorder.floor_threads is not None:
        recorder.measure_deferred(time.perf_counter() - began)
    best = result.best
    summary = {
        "index": best.index,
        "hidden": best.hidden,
        "lr": best.lr,
        "dropout": best.dropout,
        "cv_waf": round(best.waf_mean, 4),
        "cv_waf_std": round(best.waf_std, 4),
        "cv_acc": round(best.acc_mean, 4),
        "best_epochs": best.best_epochs,
    }
    recorder.entry["end_to_end_s"] = round(time.perf_counter() - recorder.began, 1)
    recorder.entry["floor_measuring_s"] = round(recorder.floor_time, 1)
    recorder.save(done=True, best=summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--search", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--precision", default="bf16,fp32", help="comma-separated, run in turn")
    parser.add_argument("--floor-steps", type=int, default=100)
    parser.add_argument(
        "--stack-workers", type=int, default=1, help="stacks trained side by side (threads each)"
    )
    parser.add_argument(
        "--adam-moments", default="fp32", help="fp32|bf16: the first layers' Adam moment storage"
    )
    parser.add_argument("--label", default="exact")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fusion.json"))
    args = parser.parse_args()

    rows = planted_rows()
    wafs: dict[str, float] = {}
    for precision in args.precision.split(","):
        config = FusionTrainConfig(
            search=args.search,
            epochs=args.epochs,
            threads=args.threads,
            seed=0,
            precision=precision,
            stack_workers=args.stack_workers,
            adam_moments=args.adam_moments if precision == "bf16" else "fp32",
        )
        print(
            f"{args.label}: {precision}, {args.stack_workers} stack worker(s) x "
            f"{args.threads} thread(s)",
            flush=True,
        )
        floor_threads = args.stack_workers * args.threads if args.stack_workers > 1 else None
        recorder = Recorder(args.out, args.label, precision, args.floor_steps, floor_threads)
        best = run_search(rows, config, recorder)
        wafs[precision] = float(best["cv_waf"])  # type: ignore[arg-type]
    if "fp32" in wafs and "bf16" in wafs:
        results = json.loads(args.out.read_text("utf-8"))
        delta = round(100 * (wafs["bf16"] - wafs["fp32"]), 2)
        results[args.label]["bf16_minus_fp32_waf_points"] = delta
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"best CV WAF bf16 - fp32: {delta} points")


if __name__ == "__main__":
    main()
