"""Utterance embeddings from a HuBERT / wav2vec2-family speech encoder (MERTools' recipe).

The waveform is cut into equal chunks of at most ``chunk_s`` seconds that run through the model
as one batch; the last ``layers`` hidden states are summed and averaged over every frame of every
chunk, giving one float32 vector of the model's hidden size per clip.

Chunks of one clip have equal length (``ceil(len / chunk)`` parts), so a single clip never needs
padding; a batch of several clips is padded to its longest chunk, with the attention mask when
the feature extractor asks for one and with padded frames excluded from the pooling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from meragent.config import autocast
from meragent.errors import DataError, ModelLoadError
from meragent.tools.model_source import load_encoder, resolve_model_source

ROLE = "acoustic_encoder"
Pooling = Literal["mean", "max"]
POOLINGS: tuple[str, ...] = ("mean", "max")


def split_into_chunks(audio: np.ndarray, chunk_samples: int) -> list[np.ndarray]:
    """Cut ``audio`` into ``ceil(len / chunk_samples)`` parts of equal length (last zero-padded).

    Equal parts keep the padding below one sample per chunk, so pooling never averages silence
    that the recording did not contain.
    """
    if audio.ndim != 1:
        raise DataError(f"audio must be mono 1-D, got shape {audio.shape}")
    n_chunks = max(1, math.ceil(len(audio) / chunk_samples))
    part = math.ceil(len(audio) / n_chunks)
    padded = np.zeros(part * n_chunks, dtype=np.float32)
    padded[: len(audio)] = audio
    return list(padded.reshape(n_chunks, part))


def pool_hidden_states(hidden_states: Any, frame_mask: Any, layers: int, pooling: str) -> Any:
    """Sum the last ``layers`` hidden states, then pool over the frames where ``frame_mask`` is 1.

    ``hidden_states``: tuple of (B, T, D) tensors; ``frame_mask``: (B, T) bool. All B rows belong
    to one clip, so frames of every row are pooled together. Returns a (D,) float32 tensor.
    """
    import torch

    # fp32 before the sum: bf16 hidden states (autocast) are pooled in full precision.
    summed = torch.stack([h.float() for h in hidden_states[-layers:]], dim=0).sum(dim=0)
    frames = summed[frame_mask]
    if frames.shape[0] == 0:
        raise DataError("audio is too short to produce a single encoder frame")
    if pooling == "max":
        return frames.max(dim=0).values
    return frames.mean(dim=0)


@dataclass
class AcousticEncoder:
    """A loaded speech encoder: ``encode(audio)`` → (D,) float32."""

    model: Any
    feature_extractor: Any
    model_id: str
    device: str
    layers: int = 4
    pooling: str = "mean"
    chunk_s: float = 10.0
    #: ``fp32`` or ``bf16`` (autocast over fp32 weights; pooling stays fp32).
    precision: str = "fp32"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def sample_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    def encode(self, audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
        """One clip's waveform (float32 mono) → its (D,) embedding."""
        return self.encode_many([audio], sample_rate=sample_rate)[0]

    def encode_many(
        self, audios: list[np.ndarray], sample_rate: int = 16000, batch_size: int = 16
    ) -> list[np.ndarray]:
        """Embed several clips; chunks of up to ``batch_size`` clips share one forward pass."""
        if sample_rate != self.sample_rate:
            raise DataError(
                f"{self.model_id} expects {self.sample_rate} Hz audio, got {sample_rate} Hz"
            )
        chunk_samples = round(self.chunk_s * self.sample_rate)
        results: list[np.ndarray] = []
        for start in range(0, len(audios), max(1, batch_size)):
            group = audios[start : start + max(1, batch_size)]
            chunks = [split_into_chunks(np.asarray(a, np.float32), chunk_samples) for a in group]
            for clip_chunks in chunks:
                self._check_long_enough(len(clip_chunks[0]))
            results.extend(self._forward_clips(chunks))
        return results

    def _check_long_enough(self, n_samples: int) -> None:
        """The conv front-end needs a minimum number of samples to emit one frame."""
        import torch

        frames = int(self.model._get_feat_extract_output_lengths(torch.tensor(n_samples)))
        if frames < 1:
            raise DataError(
                f"audio is too short for {self.model_id}: {n_samples} samples give no frame"
            )

    def _forward_clips(self, chunks_per_clip: list[list[np.ndarray]]) -> list[np.ndarray]:
        import torch

        flat = [chunk for chunks in chunks_per_clip for chunk in chunks]
        inputs = self.feature_extractor(
            flat,
            sampling_rate=self.sample_rate,
            padding=True,
            return_tensors="pt",
            return_attention_mask=True,
        )
        sample_mask = inputs["attention_mask"]
        kwargs: dict[str, Any] = {"input_values": inputs["input_values"].to(self.device)}
        kwargs["input_values"] = kwargs["input_values"].to(self.model.dtype)
        # Models whose extractor does not use a mask (group-norm wav2vec2/HuBERT base) were
        # trained without one; padded frames are still excluded from pooling below.
        if getattr(self.feature_extractor, "return_attention_mask", False):
            kwargs["attention_mask"] = sample_mask.to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            output = self.model(**kwargs, output_hidden_states=True)
        hidden = output.hidden_states
        n_frames = hidden[-1].shape[1]
        valid = self.model._get_feat_extract_output_lengths(sample_mask.sum(-1)).to(self.device)
        frame_mask = torch.arange(n_frames, device=self.device)[None, :] < valid[:, None]
        vectors: list[np.ndarray] = []
        row = 0
        for chunks in chunks_per_clip:
            rows = slice(row, row + len(chunks))
            clip_hidden = tuple(h[rows] for h in hidden)
            pooled = pool_hidden_states(clip_hidden, frame_mask[rows], self.layers, self.pooling)
            vectors.append(pooled.cpu().numpy().astype(np.float32))
            row += len(chunks)
        return vectors


def load_acoustic_encoder(
    model_id_or_path: str,
    *,
    device: str = "cpu",
    layers: int = 4,
    pooling: str = "mean",
    chunk_s: float = 10.0,
    dtype: str = "float32",
    precision: str = "fp32",
) -> AcousticEncoder:
    """Load a HuBERT/wav2vec2 encoder + its feature extractor from a hub id or a local folder."""
    source = resolve_model_source(ROLE, model_id_or_path)
    if pooling not in POOLINGS:
        raise ModelLoadError(ROLE, source, f"unknown pooling {pooling!r} ({', '.join(POOLINGS)})")
    if chunk_s <= 0:
        raise ModelLoadError(ROLE, source, f"chunk_s must be positive, got {chunk_s}")
    return load_encoder(
        AcousticEncoder,
        ROLE,
        model_id_or_path,
        ("Wav2Vec2FeatureExtractor", "AutoModel"),
        dtype=dtype,
        device=device,
        layers=layers,
        pooling=pooling,
        chunk_s=chunk_s,
        precision=precision,
    )
