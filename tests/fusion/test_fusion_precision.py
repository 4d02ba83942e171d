"""Fusion training precision: bf16 reaches the stacked first layers, fp32 stays bit-reproducible.

The dtype checks spy on the matmul the first layers run (``fusion_arch._shared_linear``) and on the
trainer's tensors; no timings here (those live in bench/bench_fusion.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fusion_fixtures import planted_clips, write_csv_manifest, write_planted_features
from sklearn.model_selection import StratifiedKFold
from typer.testing import CliRunner

from meragent.cli import app
from meragent.errors import DataError
from meragent.finetune.fusion_data import build_training_rows, stratified_folds
from meragent.finetune.fusion_train import (
    FusionTrainConfig,
    StackTrainer,
    cross_validate,
    save_fusion_model,
    train_fusion,
)
from meragent.tools import fusion_arch

BRANCHES = [("audio",), ("text",), ("video",)]
TINY = {"folds": 3, "search": 2, "epochs": 4, "threads": 1, "hidden": [8], "lr": [1e-2]}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    clips = planted_clips(72, with_valence=True)
    cache = write_planted_features(tmp_path_factory.mktemp("features"), clips)
    return clips, cache


def _spy_first_layers(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """Record the weight dtype of every first-layer matmul."""
    seen: list[torch.dtype] = []
    real = fusion_arch._shared_linear

    def spy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        seen.append(weight.dtype)
        out = real(x, weight, bias)
        assert out.dtype == torch.float32  # the output (and what follows) stays fp32
        return out

    monkeypatch.setattr(fusion_arch, "_shared_linear", spy)
    return seen


def test_bf16_runs_first_layers_in_bf16_with_fp32_masters_and_records_it(
    planted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips, cache = planted
    seen = _spy_first_layers(monkeypatch)
    trainers: list[StackTrainer] = []
    rows, _ = build_training_rows(clips, cache, BRANCHES)
    config = FusionTrainConfig(precision="bf16", **TINY)
    result = cross_validate(rows, config, on_stack=trainers.append)
    assert seen and set(seen) == {torch.bfloat16}
    (trainer,) = trainers
    assert {x.dtype for x in trainer.xs} == {torch.bfloat16}
    assert {w.dtype for w in trainer.low_weights.values()} == {torch.bfloat16}
    assert {g.dtype for g in trainer.low_grads.values()} == {torch.bfloat16}
    # Master weights, their gradients and Adam's moments stay fp32.
    assert {p.dtype for p in trainer.params.values()} == {torch.float32}
    assert {p.grad.dtype for p in trainer.params.values() if p.grad is not None} == {torch.float32}
    moments = [s["exp_avg"].dtype for s in trainer.optimizer.state.values()]
    assert moments and set(moments) == {torch.float32}
    # The first-layer weights are stepped by CastingAdam: fp32 masters and moments, bf16
    # gradients, and bf16 copies that equal the masters after the last step.
    casting = trainer.casting_adam
    assert casting is not None and [m.dtype for m in casting.state] == [torch.float32] * 2
    head_steps = int(next(iter(trainer.optimizer.state.values()))["step"])
    assert casting.steps == head_steps > 0
    for name, low in trainer.low_weights.items():
        assert trainer.params[name].dtype == torch.float32
        assert torch.equal(low, trainer.params[name].to(torch.bfloat16))
    assert {p.dtype for p in result.params.values()} == {torch.float32}
    assert 0.0 < result.best.waf_mean <= 1.0

    model = save_fusion_model(train_fusion(clips, cache, BRANCHES, config), tmp_path / "bf16-model")
    assert json.loads((model / "config.json").read_text())["precision"] == "bf16"
    assert json.loads((model / "search.json").read_text())["config"]["precision"] == "bf16"


def test_bf16_moments_pack_the_first_layers_moments_and_train_as_well(planted) -> None:
    clips, cache = planted
    rows, _ = build_training_rows(clips, cache, BRANCHES)
    trainers: list[StackTrainer] = []
    packed = cross_validate(
        rows,
        FusionTrainConfig(precision="bf16", adam_moments="bf16", **TINY),
        on_stack=trainers.append,
    )
    casting = trainers[0].casting_adam
    assert casting is not None and [m.dtype for m in casting.state] == [torch.int32]
    assert casting.state[0].numel() == casting.master.numel()  # 4 bytes for both moments
    # The head keeps torch's fp32 Adam.
    moments = [s["exp_avg"].dtype for s in trainers[0].optimizer.state.values()]
    assert moments and set(moments) == {torch.float32}
    reference = cross_validate(rows, FusionTrainConfig(precision="bf16", **TINY))
    for mine, theirs in zip(packed.combos, reference.combos, strict=True):
        assert abs(mine.waf_mean - theirs.waf_mean) < 0.05


def test_bf16_moments_with_fp32_first_layers_are_refused() -> None:
    with pytest.raises(ValueError, match="bf16 Adam moments need precision bf16"):
        FusionTrainConfig(adam_moments="bf16", **TINY)


def test_fp32_first_layers_stay_fp32(planted, monkeypatch: pytest.MonkeyPatch) -> None:
    clips, cache = planted
    seen = _spy_first_layers(monkeypatch)
    trainers: list[StackTrainer] = []
    rows, _ = build_training_rows(clips, cache, BRANCHES)
    cross_validate(rows, FusionTrainConfig(**TINY), on_stack=trainers.append)
    assert seen and set(seen) == {torch.float32}
    assert trainers[0].low_weights == {} and {x.dtype for x in trainers[0].xs} == {torch.float32}


def test_bf16_mertools_variant_trains_under_autocast(planted) -> None:
    clips, cache = planted
    rows, _ = build_training_rows(clips, cache, BRANCHES)
    config = FusionTrainConfig(model="mertools_attention", precision="bf16", **TINY)
    result = cross_validate(rows, config)
    assert {p.dtype for p in result.params.values()} == {torch.float32}
    assert np.isfinite(result.oof_probs).all()
    assert np.allclose(result.oof_probs.sum(axis=1), 1.0, atol=1e-5)


def test_two_fp32_runs_with_the_same_seed_are_bit_identical(planted) -> None:
    clips, cache = planted
    rows, _ = build_training_rows(clips, cache, BRANCHES)
    config = FusionTrainConfig(precision="fp32", **TINY)
    first, second = cross_validate(rows, config), cross_validate(rows, config)
    assert first.params.keys() == second.params.keys()
    for name in first.params:
        assert torch.equal(first.params[name], second.params[name]), name
    assert [c.fold_waf for c in first.combos] == [c.fold_waf for c in second.combos]
    assert [c.best_epochs for c in first.combos] == [c.best_epochs for c in second.combos]
    assert np.array_equal(first.oof_probs, second.oof_probs)


@pytest.mark.filterwarnings("ignore:The least populated class")
@pytest.mark.parametrize("seed", [0, 3])
def test_folds_are_sklearn_stratified_kfold(seed: int) -> None:
    labels = np.repeat(np.arange(6), [40, 30, 20, 12, 7, 3])
    folds = stratified_folds(labels, 5, seed=seed)
    splitter = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        assert np.array_equal(np.flatnonzero(folds == k), np.sort(held_out))


def test_fewer_rows_than_folds_is_a_data_error() -> None:
    with pytest.raises(DataError, match="fewer than --folds 5"):
        stratified_folds(np.array([0, 1, 2]), 5, seed=0)


def test_cli_precision_option_is_recorded_in_the_model(tmp_path: Path) -> None:
    clips = planted_clips(36)
    features = tmp_path / "features"
    write_planted_features(features, clips)
    manifest = write_csv_manifest(tmp_path / "data" / "manifest.csv", clips)
    model = tmp_path / "model"
    args = [
        "fusion", "train", str(manifest), "--encoders", "audio,text,video", "--out", str(model),
        "--features", str(features), "--folds", "3", "--search", "1", "--epochs", "2",
        "--threads", "1", "--hidden", "8", "--device", "cpu", "--precision", "bf16",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((model / "config.json").read_text())["precision"] == "bf16"
    bad = CliRunner().invoke(app, [*args[:-1], "fp16"])
    assert bad.exit_code == 2

    packed = CliRunner().invoke(app, [*args, "--adam-moments", "bf16"])
    assert packed.exit_code == 0, packed.output
    assert json.loads((model / "search.json").read_text())["config"]["adam_moments"] == "bf16"
    # bf16 moments are CastingAdam's: with fp32 first layers they would be silently ignored.
    refused = CliRunner().invoke(app, [*args[:-1], "fp32", "--adam-moments", "bf16"])
    assert refused.exit_code == 2
    assert "bf16 Adam moments need precision bf16" in refused.output
