"""Fixtures of the eval tests: where the shared MER data lives, and small helpers to write CSVs."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

# Default: the `shared/data` folder beside the repository root (../shared/data from the repo).
_DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared MER data folder (env MERAGENT_SHARED_DATA overrides); skip when absent."""
    root = Path(os.environ.get("MERAGENT_SHARED_DATA", str(_DEFAULT_SHARED_DATA))).resolve()
    if not (root / "ov332" / "openset_labels.csv").is_file():
        pytest.skip(f"shared MER data not found under {root} (set MERAGENT_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def ov332(shared_data: Path) -> Path:
    """The 332 EMER-V2 samples: openset_labels.csv + gpt_synonym_groups.json."""
    return shared_data / "ov332"


@pytest.fixture(scope="session")
def wheel_dir(shared_data: Path) -> Path:
    """The MER2025 emotion-wheel folder (wheels, synonyms, word forms)."""
    return shared_data / "emotion_wheel"


WriteCsv = Callable[[str, Sequence[str], Iterable[Sequence[object]]], Path]


@pytest.fixture
def write_csv(tmp_path: Path) -> WriteCsv:
    """Write ``rows`` under ``header`` to tmp_path/name with the csv module (proper quoting)."""

    def write(name: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
        path = tmp_path / name
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        return path

    return write


@pytest.fixture(scope="session")
def tiny_sentence_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT sentence-transformers model saved to disk (real loading code path)."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny_st")
    hf_dir = root / "hf"
    hf_dir.mkdir()
    words = ["happy", "joyful", "glad", "angry", "furious", "sad", "calm", "worried", "bored"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (hf_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(hf_dir / "vocab.txt")).save_pretrained(hf_dir)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(hf_dir)
    transformer = models.Transformer(str(hf_dir), max_seq_length=16)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model_dir = root / "st"
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(model_dir))
    return model_dir
