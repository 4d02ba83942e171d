"""k-fold search on planted features: accuracy, determinism, folds, bad input, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fusion_fixtures import planted_clips, write_planted_features
from sklearn.metrics import f1_score

from meragent.errors import DataError
from meragent.finetune.fusion_data import (
    AUGMENTED,
    LABELLED,
    build_training_rows,
    load_feature_table,
    parse_branches,
    stratified_folds,
)
from meragent.finetune.fusion_predict import predict_clips, write_submission
from meragent.finetune.fusion_train import (
    FusionTrainConfig,
    cross_validate,
    fold_plan,
    sample_combos,
    save_fusion_model,
    train_fusion,
    waf_acc,
)
from meragent.schema import EMOTIONS
from meragent.tools.feature_cache import FeatureCache
from meragent.tools.fusion_model import load_fusion_model

BRANCHES = [("audio",), ("text",), ("video",)]
QUICK = {"folds": 3, "epochs": 12, "threads": 1, "hidden": [16], "lr": [1e-2]}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, FeatureCache]:
    clips = planted_clips(180)
    cache = write_planted_features(tmp_path_factory.mktemp("features"), clips)
    return clips, cache


def test_planted_structure_is_learnt_well_above_chance(planted) -> None:
    clips, cache = planted
    config = FusionTrainConfig(search=2, dropout=[0.2, 0.3], **QUICK)
    result = train_fusion(clips, cache, BRANCHES, config)
    assert len(result.search.combos) == 2
    best = result.search.best
    assert best.waf_mean > 0.6  # chance with six balanced classes is ~0.17
    assert len(best.fold_waf) == 3 and len(best.best_epochs) == 3
    assert all(1 <= e <= 12 for e in best.best_epochs)
    oof = result.search.oof_probs
    assert oof.shape == (180, 6)
    np.testing.assert_allclose(oof.sum(axis=1), 1.0, rtol=1e-5)


def test_same_seed_same_numbers_and_predictions(planted, tmp_path: Path) -> None:
    clips, cache = planted
    config = FusionTrainConfig(search=2, seed=3, dropout=[0.3, 0.5], **QUICK)
    first = train_fusion(clips, cache, BRANCHES, config)
    second = train_fusion(clips, cache, BRANCHES, config)
    assert [c.model_dump() for c in first.search.combos] == [
        c.model_dump() for c in second.search.combos
    ]
    for name, tensor in first.search.params.items():
        assert torch.equal(tensor, second.search.params[name]), name
    paths = []
    for k, result in enumerate((first, second)):
        model = save_fusion_model(result, tmp_path / f"m{k}")
        table = predict_clips([c.id for c in clips], cache, load_fusion_model(model))
        paths.append(write_submission(table, tmp_path / f"s{k}.csv"))
    assert paths[0].read_text() == paths[1].read_text()
    other = train_fusion(clips, cache, BRANCHES, config.model_copy(update={"seed": 4}))
    # Another seed: other folds and other weights (the planted scores may both saturate at 1.0).
    assert not np.array_equal(other.search.folds, first.search.folds)
    assert not np.array_equal(other.search.oof_probs, first.search.oof_probs)
    assert not torch.equal(other.search.params["enc0.weight"], first.search.params["enc0.weight"])


def test_folds_are_disjoint_cover_all_and_stratified() -> None:
    labels = np.repeat(np.arange(6), [40, 30, 20, 12, 7, 3])
    folds = stratified_folds(labels, 5, seed=0)
    assert set(folds) == set(range(5))
    members = [set(np.flatnonzero(folds == k)) for k in range(5)]
    assert sum(len(m) for m in members) == len(labels)
    assert set().union(*members) == set(range(len(labels)))
    sizes = [len(m) for m in members]
    assert max(sizes) - min(sizes) <= 1
    for cls in range(6):
        per_fold = np.bincount(folds[labels == cls], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    assert np.array_equal(folds, stratified_folds(labels, 5, seed=0))
    assert not np.array_equal(folds, stratified_folds(labels, 5, seed=1))


def test_fewer_clips_than_folds_is_an_error(tmp_path: Path) -> None:
    clips = planted_clips(4)
    cache = write_planted_features(tmp_path, clips)
    with pytest.raises(
        DataError, match="only 4 labelled clips with features: fewer than --folds 5"
    ):
        train_fusion(clips, cache, BRANCHES, FusionTrainConfig(folds=5, search=1, epochs=1))


def test_missing_features_are_masked_or_skipped_and_counted(tmp_path: Path) -> None:
    clips = planted_clips(30)
    skip = {"audio": {"clip_0001", "clip_0002"}, "text": {"clip_0002"}, "video": {"clip_0002"}}
    cache = write_planted_features(tmp_path, clips, skip=skip)
    rows, report = build_training_rows(clips, cache, BRANCHES)
    assert report.no_features == ["clip_0002"]
    assert report.missing["audio"] == ["clip_0001"]
    assert report.missing["text"] == []
    assert rows.n_rows == 29
    assert not rows.present[rows.clip_ids.index("clip_0001"), 0]
    assert any("no features at all: clip_0002" in line for line in report.lines())
    result = cross_validate(rows, FusionTrainConfig(search=1, **QUICK))
    assert 0.0 <= result.best.waf_mean <= 1.0


def test_dimension_mismatch_names_clip_and_encoder(tmp_path: Path) -> None:
    clips = planted_clips(12)
    cache = write_planted_features(tmp_path, clips)
    cache.save("text", "clip_0005", np.zeros(9, dtype=np.float32))
    with pytest.raises(
        DataError, match=r"clip 'clip_0005', encoder 'text' has 9 values, expected 8"
    ):
        build_training_rows(clips, cache, BRANCHES)


def test_unknown_encoder_is_an_error(planted) -> None:
    clips, cache = planted
    with pytest.raises(DataError, match="no features for encoder 'nope'"):
        build_training_rows(clips, cache, [("audio",), ("nope",)])


def test_absent_class_is_warned_and_metrics_stay_defined(tmp_path: Path) -> None:
    clips = [c for c in planted_clips(60) if c.discrete != "surprise"]
    cache = write_planted_features(tmp_path, clips)
    result = train_fusion(clips, cache, BRANCHES, FusionTrainConfig(search=1, **QUICK))
    assert any("surprise" in w for w in result.report.warnings)
    assert result.report.class_counts["surprise"] == 0
    assert np.isfinite(result.search.best.waf_mean)


def test_concatenated_branch_and_valence_head(tmp_path: Path) -> None:
    clips = planted_clips(90, with_valence=True)
    cache = write_planted_features(tmp_path, clips)
    branches = parse_branches("audio+text,video")
    assert branches == [("audio", "text"), ("video",)]
    result = train_fusion(clips, cache, branches, FusionTrainConfig(search=1, **QUICK))
    assert result.branches[0].dim == 20 and result.branches[0].encoder_dims == [12, 8]
    assert result.search.with_valence
    assert result.search.best.fold_mse is not None
    model = load_fusion_model(save_fusion_model(result, tmp_path / "model"))
    assert model.encoders == ["audio", "text", "video"]
    out = model.predict(
        {
            "audio": cache.load("audio", "clip_0000"),
            "text": None,
            "video": cache.load("video", "clip_0000"),
        }
    )
    assert out.attention["audio+text"] == 0.0 and out.valence is not None


def test_mertools_variant_trains_with_modality_dropout_and_pca(planted) -> None:
    clips, cache = planted
    config = FusionTrainConfig(
        model="mertools_attention", search=1, modality_dropout=0.3, pca_dim=6, **QUICK
    )
    result = train_fusion(clips, cache, BRANCHES, config)
    assert result.search.best.waf_mean > 0.5
    # PCA is folded back: the saved first layer reads the full 12-dim audio features.
    assert result.search.params["enc0.l1.weight"].shape == (3, 12, 16)


def test_pca_model_predicts_like_its_cv(planted, tmp_path: Path) -> None:
    clips, cache = planted
    result = train_fusion(clips, cache, BRANCHES, FusionTrainConfig(search=1, pca_dim=5, **QUICK))
    predictor = load_fusion_model(save_fusion_model(result, tmp_path / "pca"))
    table = predict_clips([c.id for c in clips], cache, predictor)
    truth = [c.discrete for c in clips]
    # The fold ensemble saw every clip in training, so it must beat its own held-out score.
    assert f1_score(truth, table.discrete(), average="weighted") >= result.search.best.waf_mean


def test_augmented_rows_train_only_outside_their_source_fold(tmp_path: Path) -> None:
    clips = planted_clips(36)
    cache = write_planted_features(tmp_path / "clean", clips)
    noisy = write_planted_features(tmp_path / "noisy", clips[:30], seed=1)
    rows, report = build_training_rows(clips, cache, BRANCHES, augment_cache=noisy)
    assert report.n_augmented == 30 and rows.n_rows == 66
    assert (rows.kind == AUGMENTED).sum() == 30
    folds = stratified_folds(rows.labels[rows.kind == LABELLED], 3, seed=0)
    plan = fold_plan(rows, folds, 3, "cpu")
    for k in range(3):
        val = set(plan.val_index[k])
        assert all(rows.kind[i] == LABELLED for i in val)
        train = set(plan.train_rows[k])
        assert not val & train
        for i in train:
            if rows.kind[i] == AUGMENTED:
                assert folds[rows.source[i]] != k
    result = cross_validate(rows, FusionTrainConfig(search=1, **QUICK))
    assert result.n_train_rows == 66


def test_sample_combos_is_seeded_and_covers_the_grid() -> None:
    config = FusionTrainConfig(search=50, seed=7)
    combos = sample_combos(config)
    assert combos == sample_combos(config)
    grid = {(c.hidden, c.lr, c.dropout) for c in combos}
    assert len(grid) == 24  # 3 x 2 x 4: two full passes cover every point
    assert len({c.seed for c in combos}) == 50
    assert len(sample_combos(config.model_copy(update={"unique": True}))) == 24
    assert {c.hidden for c in combos} == {64, 128, 256}


def test_torch_waf_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, (3, 40))
    predicted = rng.integers(0, 6, (3, 40, 2))
    valid = np.ones((3, 40), dtype=bool)
    valid[2, 30:] = False
    waf, acc = waf_acc(torch.as_tensor(predicted), torch.as_tensor(truth), torch.as_tensor(valid))
    for k in range(3):
        for c in range(2):
            n = valid[k].sum()
            expected = f1_score(truth[k, :n], predicted[k, :n, c], average="weighted")
            assert waf[k, c].item() == pytest.approx(expected, abs=1e-6)
            assert acc[k, c].item() == pytest.approx(np.mean(truth[k, :n] == predicted[k, :n, c]))


def test_prediction_skips_clips_without_features(planted, tmp_path: Path) -> None:
    clips, cache = planted
    result = train_fusion(clips, cache, BRANCHES, FusionTrainConfig(search=1, **QUICK))
    predictor = load_fusion_model(save_fusion_model(result, tmp_path / "m"))
    table = predict_clips([clips[0].id, "ghost"], cache, predictor)
    assert table.clip_ids == [clips[0].id] and table.skipped == ["ghost"]
    csv_text = write_submission(table, tmp_path / "sub.csv").read_text()
    assert csv_text.splitlines()[0] == "name,discrete"
    assert csv_text.splitlines()[1].split(",")[1] in EMOTIONS
    table = load_feature_table(cache, [clips[0].id], BRANCHES)
    assert table.present.all()


def test_prediction_in_chunks_matches_one_pass(planted, tmp_path: Path) -> None:
    clips, cache = planted
    result = train_fusion(clips, cache, BRANCHES, FusionTrainConfig(search=1, **QUICK))
    predictor = load_fusion_model(save_fusion_model(result, tmp_path / "m"))
    ids = [c.id for c in clips[:50]] + ["ghost"]
    whole = predict_clips(ids, cache, predictor)
    chunked = predict_clips(ids, cache, predictor, chunk=7)
    assert chunked.clip_ids == whole.clip_ids and chunked.skipped == ["ghost"]
    np.testing.assert_allclose(chunked.probs, whole.probs, rtol=1e-5, atol=1e-7)
