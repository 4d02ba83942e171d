"""Feature cache in MERTools' layout: ``<root>/<encoder>/<clip>.npy``, float32, shape (D,).

Features extracted by MERTools can be dropped in, and ours read by MERTools.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from meragent.errors import DataError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _checked_name(kind: str, name: str) -> str:
    if not _SAFE_NAME.match(name) or ".." in name:
        raise DataError(f"invalid {kind} name for the feature cache: {name!r}")
    return name


class FeatureCache:
    """Read and write one vector per (encoder, clip)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, encoder: str, clip_id: str) -> Path:
        encoder = _checked_name("encoder", encoder)
        return self.root / encoder / f"{_checked_name('clip', clip_id)}.npy"

    def has(self, encoder: str, clip_id: str) -> bool:
        return self.path(encoder, clip_id).is_file()

    def save(self, encoder: str, clip_id: str, vector: np.ndarray) -> Path:
        """Write atomically (tmp file + rename) so a killed run never leaves half a file."""
        array = np.asarray(vector, dtype=np.float32)
        if array.ndim != 1:
            raise DataError(f"{encoder}/{clip_id}: feature must be 1-D, got shape {array.shape}")
        target = self.path(encoder, clip_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, array)
        os.replace(tmp, target)
        return target

    def load(self, encoder: str, clip_id: str) -> np.ndarray:
        """Load one vector; MERTools files of shape (1, D) or (T, D) are mean-pooled to (D,)."""
        path = self.path(encoder, clip_id)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError) as exc:
            raise DataError(f"{encoder}/{clip_id}: unreadable feature file {path}: {exc}") from exc
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 2:
            array = array.mean(axis=0)
        if array.ndim != 1:
            raise DataError(f"{encoder}/{clip_id}: feature has shape {array.shape}, expected (D,)")
        return array

    def encoders(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def clip_ids(self, encoder: str) -> list[str]:
        folder = self.root / _checked_name("encoder", encoder)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.npy") if not p.name.startswith("."))

    def missing(self, encoder: str, clip_ids: Iterable[str]) -> list[str]:
        return [clip for clip in clip_ids if not self.has(encoder, clip)]
