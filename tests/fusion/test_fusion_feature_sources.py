"""Fusion reads no cached vector that its folder records as made from other media (MER-NOISE)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meragent.finetune.fusion_data import load_feature_table
from meragent.schema import Clip
from meragent.tools.feature_cache import FeatureCache, FeatureRecipe, SourceStamp

RECIPE = FeatureRecipe(model="prosody", settings={"sample_rate": 16000})


def _cache_with_noisy_vector(tmp_path: Path) -> tuple[FeatureCache, Path, Path]:
    """A folder whose vector for clip ``c`` was extracted from the noisy copy, as happens when
    the noisy manifest is extracted after the clean one into the same MERAGENT_HOME."""
    clean = tmp_path / "clean" / "c.mp4"
    noisy = tmp_path / "noisy" / "c.mp4"
    for path, payload in ((clean, b"clean"), (noisy, b"noisy!")):
        path.parent.mkdir(parents=True)
        path.write_bytes(payload)
    cache = FeatureCache(tmp_path / "features")
    cache.save("f", "c", np.full(3, 7.0), source=SourceStamp.of_files([noisy]), recipe=RECIPE)
    cache.save("f", "d", np.full(3, 1.0), source=SourceStamp.of_files([clean]), recipe=RECIPE)
    return cache, clean, noisy


def test_training_on_clean_clips_does_not_read_the_noisy_copys_vector(tmp_path: Path) -> None:
    cache, clean, _noisy = _cache_with_noisy_vector(tmp_path)
    clips = [Clip(id="c", video=clean), Clip(id="d", video=clean)]
    table = load_feature_table(cache, clips, [("f",)], require_every_encoder=False)
    # c's stored vector came from the noisy file: it is missing for the clean clip, not used.
    assert table.present[:, 0].tolist() == [False, True]
    np.testing.assert_array_equal(table.features[0][1], np.full(3, 1.0))
    assert not table.features[0][0].any()


def test_the_noisy_clip_and_bare_names_still_read_the_vector(tmp_path: Path) -> None:
    cache, _clean, noisy = _cache_with_noisy_vector(tmp_path)
    table = load_feature_table(cache, [Clip(id="c", video=noisy)], [("f",)])
    np.testing.assert_array_equal(table.features[0][0], np.full(3, 7.0))
    by_name = load_feature_table(cache, ["c"], [("f",)])  # labels + features, no media known
    np.testing.assert_array_equal(by_name.features[0][0], np.full(3, 7.0))
