"""Subtitle encoders (tiny random BERT through the HF backend; bundled MiniLM) and heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meragent.errors import DataError, ModelLoadError
from meragent.schema import EMOTIONS
from meragent.tools.heads import HeadConfig, build_head_module, load_head, save_head
from meragent.tools.text_encoder import load_hf_text_encoder, load_text_encoder


def test_hf_encoder_sums_last_layers_and_averages_real_tokens(tiny_bert: Path) -> None:
    import torch

    encoder = load_hf_text_encoder(str(tiny_bert), layers=2)
    texts = ["i am so happy today", "bad news", ""]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    tokens = encoder.tokenizer("bad news", return_tensors="pt")
    with torch.inference_mode():
        states = encoder.model(**tokens, output_hidden_states=True).hidden_states
    expected = (states[-1] + states[-2])[0].mean(dim=0).numpy()
    # Padded next to a longer text in the batch, it must equal its unpadded reference.
    assert np.allclose(vectors[1], expected, atol=1e-5)
    assert np.all(vectors[2] == 0.0)
    assert np.all(encoder.encode(["   "]) == 0.0)


def test_text_encoder_bad_inputs(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="text_encoder"):
        load_text_encoder("hf", str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="layers=7"):
        load_hf_text_encoder(str(tiny_bert), layers=7)
    with pytest.raises(ModelLoadError, match="backend"):
        load_text_encoder("word2vec", "x")


@pytest.mark.slow
def test_minilm_similarity_ordering_and_zero_rows() -> None:
    encoder = load_text_encoder("minilm", "bundled:minilm")
    vectors = encoder.encode(["joyful", "happy", "angry", ""])
    assert vectors.shape == (4, 384) and encoder.dim == 384
    joyful, happy, angry = vectors[:3]
    assert float(joyful @ happy) > float(joyful @ angry)
    assert np.all(vectors[3] == 0.0)


def test_head_round_trip_and_validation(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    config = HeadConfig(in_dim=8, hidden_dims=[4], encoder="tiny")
    module = build_head_module(config).eval()
    folder = save_head(module, config, tmp_path / "head")
    assert {p.name for p in folder.iterdir()} == {"head.safetensors", "head.json"}
    head = load_head(folder)
    features = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.softmax(module(torch.from_numpy(features)), dim=-1).numpy()
    assert np.allclose(head.predict_proba(features), expected, atol=1e-6)
    probs = head.probs_dict(features[0])
    assert list(probs) == list(EMOTIONS) and sum(probs.values()) == pytest.approx(1.0)
    with pytest.raises(DataError, match="size 8"):
        head.predict_proba(np.zeros(5, dtype=np.float32))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_head(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="classes"):
        HeadConfig(in_dim=8, classes=["happy", "sad"])
    (folder / "head.json").write_text('{"in_dim": 9, "hidden_dims": [4]}', encoding="utf-8")
    with pytest.raises(ModelLoadError, match="head"):
        load_head(folder)
