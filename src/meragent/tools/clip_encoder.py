"""Clip-level visual embeddings from CLIP's image tower (MERTools' recipe for CLIP features).

Every face crop goes through ``get_image_features`` (the projected image embedding); the clip's
vector is the mean over its frames, float32 (D,) with D the projection size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from meragent.config import autocast
from meragent.errors import DataError
from meragent.tools.model_source import load_encoder

ROLE = "visual_encoder"


@dataclass
class ClipImageEncoder:
    """A loaded CLIP model + image processor."""

    model: Any
    processor: Any
    model_id: str
    device: str
    #: ``fp32`` or ``bf16`` (autocast over fp32 weights; the frame mean stays fp32).
    precision: str = "fp32"

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def encode_frames(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB → (N, D) float32 image features."""
        import torch

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise DataError(f"expected (N, H, W, 3) RGB frames, got shape {images.shape}")
        outputs: list[np.ndarray] = []
        for start in range(0, len(images), max(1, batch_size)):
            batch = list(images[start : start + max(1, batch_size)])
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            with torch.inference_mode(), autocast(self.device, self.precision):
                features = self.model.get_image_features(
                    pixel_values=pixels.to(self.device, self.model.dtype)
                )
            # transformers 5 returns an output object; its pooler_output is the projection.
            features = getattr(features, "pooler_output", features)
            outputs.append(features.float().cpu().numpy())
        return np.concatenate(outputs).astype(np.float32)

    def encode_clip(self, images: np.ndarray) -> np.ndarray:
        """Mean of the per-frame features → (D,) float32."""
        return self.encode_frames(images).mean(axis=0).astype(np.float32)

    def encode_many(self, clips: list[np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        """Several clips' frames in shared forward passes; one (D,) mean vector per clip."""
        if not clips:
            return []
        counts = [len(images) for images in clips]
        features = self.encode_frames(np.concatenate(clips), batch_size=batch_size)
        bounds = np.cumsum([0, *counts])
        return [
            features[bounds[i] : bounds[i + 1]].mean(axis=0).astype(np.float32)
            for i in range(len(clips))
        ]


def load_clip_encoder(
    model_id_or_path: str, *, device: str = "cpu", dtype: str = "float32", precision: str = "fp32"
) -> ClipImageEncoder:
    """Load a CLIP model and its image processor from a hub id or a local folder."""
    return load_encoder(
        ClipImageEncoder,
        ROLE,
        model_id_or_path,
        ("CLIPImageProcessor", "CLIPModel"),
        dtype=dtype,
        device=device,
        precision=precision,
    )
