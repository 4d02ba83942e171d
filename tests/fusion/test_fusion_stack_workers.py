"""Stacks trained side by side (``stack_workers``) give exactly the one-at-a-time results.

Every stack replays the same batch order, draws only from its own combinations' generators and
runs on the same torch thread count either way, so in fp32 the results are bit-identical, not
merely close; bf16 (the compiled CastingAdam from two threads) is checked the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from fusion_fixtures import planted_clips, write_planted_features

from meragent.finetune.fusion_data import build_training_rows
from meragent.finetune.fusion_search import train_stacks
from meragent.finetune.fusion_train import FusionTrainConfig, StackTrainer, cross_validate

BRANCHES = [("audio",), ("text",), ("video",)]
# Two hidden sizes x two learning rates: up to four stacks, more than the two workers.
GRID = {"folds": 3, "search": 6, "epochs": 3, "threads": 1, "hidden": [8, 16], "lr": [1e-2, 1e-3]}


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory):
    clips = planted_clips(60)
    cache = write_planted_features(tmp_path_factory.mktemp("features"), clips)
    return build_training_rows(clips, cache, BRANCHES)[0]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_workers_match_one_worker_bit_for_bit(rows, precision: str) -> None:
    stacks_seen: list[StackTrainer] = []
    one = cross_validate(rows, FusionTrainConfig(precision=precision, **GRID))
    two = cross_validate(
        rows,
        FusionTrainConfig(precision=precision, stack_workers=2, **GRID),
        on_stack=stacks_seen.append,
    )
    assert len(stacks_seen) >= 3  # more stacks than workers
    assert [c.index for c in one.combos] == [c.index for c in two.combos]
    assert [c.fold_waf for c in one.combos] == [c.fold_waf for c in two.combos]
    assert [c.best_epochs for c in one.combos] == [c.best_epochs for c in two.combos]
    assert one.best.index == two.best.index
    for name in one.params:
        assert torch.equal(one.params[name], two.params[name]), name
    assert np.array_equal(one.oof_probs, two.oof_probs)


def test_workers_run_at_once_largest_first_and_return_in_stack_order() -> None:
    from meragent.finetune.fusion_config import Combo

    stacks = [[Combo(i, hidden, 1e-3, 0.2, i)] for i, hidden in enumerate((8, 64, 16))]
    started: list[int] = []
    both_running = threading.Barrier(2, timeout=10)
    threads_seen: list[int] = []

    def train(stack: Sequence[Combo]) -> int:
        started.append(stack[0].hidden)
        threads_seen.append(torch.get_num_threads())
        if len(started) <= 2:
            both_running.wait()  # deadlocks (times out) unless two stacks run at once
        return stack[0].index

    outcomes = train_stacks(stacks, train, workers=2, threads=1)
    assert outcomes == [0, 1, 2]
    assert started[:2] == [64, 16] and started[2] == 8
    assert threads_seen == [1, 1, 1]
