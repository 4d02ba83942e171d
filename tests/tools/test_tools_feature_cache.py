"""FeatureCache provenance records: recipes, source stamps, the no-media contract, races.

Unit-level companions of ``test_tools_feature_provenance.py`` (issue 11, defect 1).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from meragent.schema import Clip
from meragent.tools.feature_cache import (
    META_FILE,
    FeatureCache,
    FeatureConflictError,
    FeatureRecipe,
    SourceStamp,
)

RECIPE = FeatureRecipe("/models/a/final", {"layers": 4, "pooling": "mean"})


def test_a_recipe_conflict_names_both_and_keeps_the_old_vectors(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.save("final-UTT", "c", np.ones(3), recipe=RECIPE)
    other = FeatureRecipe("/models/b/final", {"layers": 4, "pooling": "mean"})
    with pytest.raises(FeatureConflictError) as caught:
        cache.lookup("final-UTT", "c", recipe=other)
    assert "/models/a/final" in str(caught.value) and "/models/b/final" in str(caught.value)
    with pytest.raises(FeatureConflictError):
        cache.save("final-UTT", "c", np.zeros(3), recipe=other)
    with pytest.raises(FeatureConflictError):  # another recipe of the same model, too
        cache.has("final-UTT", "c", recipe=FeatureRecipe("/models/a/final", {"layers": 2}))
    np.testing.assert_array_equal(cache.load("final-UTT", "c"), np.ones(3))


def test_stamps_follow_path_size_and_mtime(tmp_path: Path) -> None:
    media = tmp_path / "a.wav"
    media.write_bytes(b"abc")
    stamp = SourceStamp.of_files([media])
    cache = FeatureCache(tmp_path / "features")
    cache.save("f", "a", np.ones(2), source=stamp, recipe=RECIPE)
    assert cache.has("f", "a", source=SourceStamp.of_files([media]), recipe=RECIPE)
    media.write_bytes(b"abcd")
    assert not cache.has("f", "a", source=SourceStamp.of_files([media]), recipe=RECIPE)
    copy = tmp_path / "b.wav"
    shutil.copy2(media, copy)  # same bytes and mtime, another file
    assert not cache.has("f", "a", source=SourceStamp.of_files([copy]), recipe=RECIPE)
    assert SourceStamp.of_clip(Clip(id="a")) is None


# ---------------------------------------------------------------- the no-media contract


def test_lookups_without_media_take_whatever_is_stored(tmp_path: Path) -> None:
    """Fusion training from labels + features has no media to compare against."""
    media = tmp_path / "c.mp4"
    media.write_bytes(b"clean")
    cache = FeatureCache(tmp_path / "features")
    cache.save("f", "c", np.full(3, 2.0), source=SourceStamp.of_files([media]), recipe=RECIPE)
    assert cache.has("f", "c") and cache.lookup("f", "c", recipe=RECIPE) is not None
    np.testing.assert_array_equal(cache.lookup_clip("f", Clip(id="c")), np.full(3, 2.0))
    np.testing.assert_array_equal(
        cache.lookup_clip("f", Clip(id="c", video=media)), np.full(3, 2.0)
    )
    noisy = tmp_path / "noisy.mp4"
    noisy.write_bytes(b"noisy!")
    assert cache.lookup_clip("f", Clip(id="c", video=noisy)) is None
    with pytest.raises(Exception, match="other media"):
        cache.load("f", "c", source=SourceStamp.of_files([noisy]))


# ---------------------------------------------------------------- concurrent writers


def test_concurrent_writers_keep_every_record_consistent(tmp_path: Path) -> None:
    media = []
    for index in range(12):
        path = tmp_path / f"m{index}.wav"
        path.write_bytes(bytes([index]) * (index + 1))
        media.append(path)
    root = tmp_path / "features"
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        cache = FeatureCache(root)  # one instance per "process", sharing the folder
        try:
            for index, path in enumerate(media):
                value = np.full(4, seed * 100 + index, dtype=np.float32)
                cache.save(
                    "f", f"c{index}", value, source=SourceStamp.of_files([path]), recipe=RECIPE
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    cache = FeatureCache(root)
    for index, path in enumerate(media):
        vector = cache.lookup("f", f"c{index}", source=SourceStamp.of_files([path]), recipe=RECIPE)
        stored = np.load(cache.path("f", f"c{index}"))
        # Whichever writer won, the record vouches for exactly the vector on disk (or for none).
        assert vector is None or np.array_equal(vector, stored)
        assert int(stored[0]) % 100 == index
    assert not [p for p in (root / "f").iterdir() if p.name.endswith(".tmp")]


def test_a_record_that_lost_the_race_vouches_for_nothing(tmp_path: Path) -> None:
    media = tmp_path / "m.wav"
    media.write_bytes(b"x")
    stamp = SourceStamp.of_files([media])
    cache = FeatureCache(tmp_path / "features")
    cache.save("f", "c", np.ones(2), source=stamp, recipe=RECIPE)
    np.save(cache.path("f", "c"), np.zeros(2, dtype=np.float32))  # another writer's vector
    assert cache.lookup("f", "c", source=stamp, recipe=RECIPE) is None


def test_concurrent_first_writers_with_different_recipes_one_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "features"
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def writer(seed: int) -> None:
        recipe = FeatureRecipe(f"/models/{seed % 2}", {})
        barrier.wait()
        try:
            FeatureCache(root).save("f", f"c{seed}", np.ones(2), recipe=recipe)
            outcomes.append(recipe.model)
        except FeatureConflictError:
            outcomes.append("refused")

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winner = json.loads((root / "f" / META_FILE).read_text())["model"]
    assert sorted(outcomes) == sorted([winner] * 3 + ["refused"] * 3)


def test_graph_fusion_reads_no_cached_vector_of_other_media(tmp_path: Path) -> None:
    """The attention-fusion node's fallback to the cache (encoders no tool of the run ran)."""
    from meragent.graphs.fusion import feature_inputs

    clean, noisy = tmp_path / "clean.mp4", tmp_path / "noisy.mp4"
    clean.write_bytes(b"clean")
    noisy.write_bytes(b"noisy!")
    root = tmp_path / "features"
    cache = FeatureCache(root)
    cache.save("f-UTT", "c", np.ones(3), source=SourceStamp.of_files([clean]), recipe=RECIPE)
    (root / "mertools-UTT").mkdir()
    np.save(root / "mertools-UTT" / "c.npy", np.full(2, 5.0, dtype=np.float32))

    def inputs(clip: Clip) -> dict[str, np.ndarray | None]:
        encoders = ["f-UTT", "mertools-UTT"]
        return feature_inputs([], encoders, clip_id="c", features_dir=root, clip=clip)

    on_noisy = inputs(Clip(id="c", video=noisy))
    assert on_noisy["f-UTT"] is None  # made from the clean file: not this clip's
    np.testing.assert_array_equal(on_noisy["mertools-UTT"], np.full(2, 5.0))  # plain: as is
    assert inputs(Clip(id="c", video=clean))["f-UTT"] is not None
    assert inputs(Clip(id="c"))["f-UTT"] is not None  # no media: nothing to compare against


WRITER = """
import sys
from pathlib import Path
import numpy as np
from meragent.tools.feature_cache import FeatureCache, FeatureRecipe, SourceStamp
root, media, seed = Path(sys.argv[1]), sorted(Path(sys.argv[2]).glob("*.wav")), int(sys.argv[3])
cache = FeatureCache(root)
recipe = FeatureRecipe("/models/a/final", {"layers": 4, "pooling": "mean"})
for round_ in range(5):
    for index, path in enumerate(media):
        value = np.full(4, seed * 1000 + round_ * 100 + index, dtype=np.float32)
        stamp = SourceStamp.of_files([path])
        cache.save("f", f"c{index}", value, source=stamp, recipe=recipe)
        cache.lookup("f", f"c{index}", source=stamp, recipe=recipe)
"""


def test_several_processes_writing_one_folder_leave_it_consistent(tmp_path: Path) -> None:
    """Ray workers or parallel `features extract` runs share a folder with no lock."""
    import subprocess
    import sys

    media_dir = tmp_path / "media"
    media_dir.mkdir()
    media = []
    for index in range(10):
        path = media_dir / f"m{index:02d}.wav"
        path.write_bytes(bytes([index]) * (index + 1))
        media.append(path)
    root = tmp_path / "features"
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    args = [str(root), str(media_dir)]
    procs = [
        subprocess.Popen([sys.executable, str(script), *args, str(seed)]) for seed in (1, 2, 3)
    ]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0, 0]
    cache = FeatureCache(root)
    for index, path in enumerate(media):
        vector = cache.lookup("f", f"c{index}", source=SourceStamp.of_files([path]), recipe=RECIPE)
        stored = np.load(cache.path("f", f"c{index}"))
        assert int(stored[0]) % 100 == index
        # A record vouches for exactly the vector on disk, or (lost race) for none: recomputed.
        assert vector is None or np.array_equal(vector, stored)
    assert not [p for p in (root / "f").iterdir() if p.name.endswith(".tmp")]
