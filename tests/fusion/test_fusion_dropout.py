"""ComboDropout's masks: each combination's own stream, exactly 0 or 1/(1-p)."""

from __future__ import annotations

import torch

from meragent.finetune.fusion_stack import ComboDropout

RATES = [0.2, 0.35, 0.5]


def _generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(10 + c) for c in range(len(RATES))]


def test_keep_draws_each_combination_from_its_own_generator_exactly() -> None:
    keep = ComboDropout(RATES, _generators(), "cpu").keep((5, 32, 16))
    assert keep.shape == (3, 5, 32, 16) and keep.dtype == torch.float32
    for c, (rate, generator) in enumerate(zip(RATES, _generators(), strict=True)):
        uniform = torch.empty((5, 32, 16)).uniform_(generator=generator)
        expected = torch.where(uniform >= rate, torch.tensor(1.0 / (1.0 - rate)), 0.0)
        assert torch.equal(keep[c], expected), c
        assert set(keep[c].unique().tolist()) == {0.0, float(torch.tensor(1 / (1 - rate)))}
