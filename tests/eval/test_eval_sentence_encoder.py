"""load_sentence_encoder: local paths (tiny random model), errors, and the bundled MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meragent.errors import ModelLoadError
from meragent.tools.sentence_encoder import load_sentence_encoder


def test_local_path_loads_and_encodes_normalised_float32(tiny_sentence_model: Path) -> None:
    encoder = load_sentence_encoder(str(tiny_sentence_model))
    assert encoder.dim == 32
    assert encoder.model_id == str(tiny_sentence_model)
    vectors = encoder.encode(["happy", "angry sad", "calm"], batch_size=2)
    assert vectors.shape == (3, 32)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 32)


def test_missing_path_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="text_encoder") as info:
        load_sentence_encoder(str(tmp_path / "absent"))
    assert info.value.role == "text_encoder"
    assert "does not exist" in str(info.value)


def test_folder_without_a_model_is_a_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="cannot load text_encoder"):
        load_sentence_encoder(str(tmp_path / "empty"))


@pytest.mark.slow
def test_bundled_minilm_ranks_synonyms_above_opposites() -> None:
    encoder = load_sentence_encoder("bundled:minilm")
    assert (encoder.dim, encoder.model_id) == (384, "bundled:minilm")
    joyful, happy, angry = encoder.encode(["joyful", "happy", "angry"])
    assert float(joyful @ happy) > float(joyful @ angry)
