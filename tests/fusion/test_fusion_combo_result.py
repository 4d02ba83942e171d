"""A combination's CV result from its per-fold scores, and the summary a saved model keeps."""

from __future__ import annotations

import pytest

from meragent.finetune.fusion_config import Combo, ComboResult
from meragent.tools.fusion_model import CVSummary


def _result(mse: list[float] | None) -> ComboResult:
    folds = {"score": [0.5, 0.7], "waf": [0.4, 0.6], "acc": [0.45, 0.65], "mse": mse}
    combo = Combo(index=3, hidden=64, lr=1e-3, dropout=0.2, seed=11)
    return ComboResult.of_folds(combo, folds, best_epochs=[4, 9], epochs_run=10)


def test_of_folds_keeps_the_combination_the_folds_and_their_population_mean_and_std() -> None:
    result = _result([1.0, 3.0])
    assert (result.index, result.hidden, result.lr, result.dropout, result.seed) == (
        3,
        64,
        1e-3,
        0.2,
        11,
    )
    assert (result.fold_score, result.fold_waf, result.fold_acc) == (
        [0.5, 0.7],
        [0.4, 0.6],
        [0.45, 0.65],
    )
    assert (result.score_mean, result.score_std) == pytest.approx((0.6, 0.1))
    assert (result.waf_mean, result.waf_std) == pytest.approx((0.5, 0.1))
    assert (result.acc_mean, result.acc_std) == pytest.approx((0.55, 0.1))
    assert (result.fold_mse, result.mse_mean, result.mse_std) == ([1.0, 3.0], 2.0, 1.0)
    assert (result.best_epochs, result.epochs_run) == ([4, 9], 10)


def test_without_valence_the_mse_fields_are_none() -> None:
    result = _result(None)
    assert (result.fold_mse, result.mse_mean, result.mse_std) == (None, None, None)


def test_cv_summary_is_the_saved_subset_of_the_result() -> None:
    result = _result([1.0, 3.0])
    summary = result.cv_summary()
    assert type(summary) is CVSummary
    assert summary.model_dump() == {name: getattr(result, name) for name in CVSummary.model_fields}
