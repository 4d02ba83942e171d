"""Subtitle embeddings: a Hugging Face encoder (MERTools' recipe) or the bundled MiniLM.

HF backend: the last ``layers`` hidden states summed, averaged over the real (non-padding)
tokens. Both backends return a zero vector for empty text, as MERTools does for clips without a
subtitle, so the fusion model sees "no words" rather than an embedding of the empty string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from meragent.config import autocast
from meragent.errors import ModelLoadError
from meragent.tools.model_source import load_encoder

ROLE = "text_encoder"
BUNDLED_MINILM = "bundled:minilm"


class TextEncoder(Protocol):
    """Anything that turns texts into an (n, D) float32 matrix."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _with_zero_rows(texts: list[str], dim: int, encode_nonempty: Any) -> np.ndarray:
    """Encode the non-empty texts and put zero rows where the text is empty or blank."""
    output = np.zeros((len(texts), dim), dtype=np.float32)
    keep = [i for i, text in enumerate(texts) if text and text.strip()]
    if keep:
        output[keep] = np.asarray(encode_nonempty([texts[i] for i in keep]), dtype=np.float32)
    return output


@dataclass
class HFTextEncoder:
    """AutoModel + AutoTokenizer, sum of the last ``layers`` hidden states, mean over tokens."""

    model: Any
    tokenizer: Any
    model_id: str
    device: str
    layers: int = 4
    max_length: int = 512
    batch_size: int = 32
    #: ``fp32`` or ``bf16`` (autocast over fp32 weights; pooling stays fp32).
    precision: str = "fp32"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        return _with_zero_rows(list(texts), self.dim, self._encode_batches)

    def _encode_batches(self, texts: list[str]) -> np.ndarray:
        parts = [
            self._encode_batch(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            output = self.model(**tokens, output_hidden_states=True)
        summed = torch.stack([h.float() for h in output.hidden_states[-self.layers :]]).sum(dim=0)
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        pooled = (summed * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return pooled.cpu().numpy().astype(np.float32)


@dataclass
class SentenceTextEncoder:
    """Adapter over ``tools.sentence_encoder`` (normalised sentence embeddings) with zero rows."""

    encoder: Any

    @property
    def model_id(self) -> str:
        return str(self.encoder.model_id)

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        return _with_zero_rows(list(texts), self.dim, self.encoder.encode)


def load_hf_text_encoder(
    model_id_or_path: str,
    *,
    device: str = "cpu",
    layers: int = 4,
    max_length: int = 512,
    dtype: str = "float32",
    precision: str = "fp32",
) -> HFTextEncoder:
    """Load an encoder-style language model and its tokenizer from a hub id or a local folder."""
    return load_encoder(
        HFTextEncoder,
        ROLE,
        model_id_or_path,
        ("AutoTokenizer", "AutoModel"),
        dtype=dtype,
        device=device,
        layers=layers,
        max_length=max_length,
        precision=precision,
    )


def load_text_encoder(
    backend: str,
    model_id_or_path: str | None = None,
    *,
    device: str = "cpu",
    layers: int = 4,
    precision: str = "fp32",
) -> TextEncoder:
    """``backend`` ``hf`` (a hub id / folder) or ``minilm`` (the bundled sentence model).

    ``precision`` applies to ``hf``; the small bundled sentence model always runs in fp32.
    """
    if backend == "hf":
        return load_hf_text_encoder(
            model_id_or_path or "", device=device, layers=layers, precision=precision
        )
    if backend == "minilm":
        from meragent.tools.sentence_encoder import load_sentence_encoder

        return SentenceTextEncoder(
            load_sentence_encoder(model_id_or_path or BUNDLED_MINILM, device=device)
        )
    raise ModelLoadError(ROLE, str(model_id_or_path), f"unknown text encoder backend {backend!r}")
