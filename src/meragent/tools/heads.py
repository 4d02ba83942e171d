"""Six-class heads: a small MLP per modality over a cached embedding, saved as safetensors + JSON.

A head lives in a folder with ``head.safetensors`` (weights) and ``head.json`` (its shape, the
encoder whose features it reads, the class order). The folder for an encoder's head is
``<models_dir>/heads/<feature name>`` unless a profile gives another path; when no head exists
there, the modality tool reports the embedding only. Training heads is the fusion issue's job;
this module only defines the format and runs them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meragent.errors import DataError, ModelLoadError
from meragent.schema import EMOTIONS
from meragent.tools.model_source import HF_LOAD_LOCK

ROLE = "head"
WEIGHTS_FILE = "head.safetensors"
CONFIG_FILE = "head.json"


@dataclass
class HeadConfig:
    """Shape and provenance of one head; validated on construction."""

    in_dim: int
    hidden_dims: list[int] = field(default_factory=lambda: [256])
    dropout: float = 0.1
    classes: list[str] = field(default_factory=lambda: list(EMOTIONS))
    encoder: str = ""

    def __post_init__(self) -> None:
        if self.in_dim <= 0 or any(h <= 0 for h in self.hidden_dims):
            raise ValueError(
                f"head dims must be positive: in={self.in_dim} hidden={self.hidden_dims}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if list(self.classes) != list(EMOTIONS):
            raise ValueError(f"classes must be {list(EMOTIONS)} in that order, got {self.classes}")


def build_head_module(config: HeadConfig) -> Any:
    """``Linear → ReLU → Dropout`` per hidden layer, then ``Linear`` to the six logits."""
    from torch import nn

    layers: list[Any] = []
    width = config.in_dim
    for hidden in config.hidden_dims:
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
        width = hidden
    layers.append(nn.Linear(width, len(config.classes)))
    return nn.Sequential(*layers)


@dataclass
class EmotionHead:
    """A head ready to score embeddings (eval mode, CPU)."""

    config: HeadConfig
    module: Any
    path: Path | None = None

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(D,) or (N, D) float features → (6,) or (N, 6) softmax probabilities."""
        import torch

        array = np.asarray(features, dtype=np.float32)
        single = array.ndim == 1
        batch = array[None] if single else array
        if batch.ndim != 2 or batch.shape[1] != self.config.in_dim:
            raise DataError(
                f"head expects features of size {self.config.in_dim}, got {array.shape}"
            )
        with torch.inference_mode():
            probs = torch.softmax(self.module(torch.from_numpy(batch)), dim=-1).numpy()
        return probs[0] if single else probs

    def probs_dict(self, features: np.ndarray) -> dict[str, float]:
        probs = self.predict_proba(features)
        return {name: float(probs[i]) for i, name in enumerate(self.config.classes)}


def save_head(module: Any, config: HeadConfig, folder: Path) -> Path:
    """Write ``head.safetensors`` + ``head.json`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2), encoding="utf-8")
    return folder


def head_exists(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file()


def load_head(path: str | Path) -> EmotionHead:
    """Load a head folder written by :func:`save_head`."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(ROLE, str(folder), "path does not exist")
    if not head_exists(folder):
        raise ModelLoadError(ROLE, str(folder), f"needs {WEIGHTS_FILE} and {CONFIG_FILE}")
    from safetensors.torch import load_file

    try:
        config = HeadConfig(**json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
        with HF_LOAD_LOCK:  # no module may be built while from_pretrained patches torch.nn
            module = build_head_module(config)
        module.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(ROLE, str(folder), message) from exc
    module.eval()
    return EmotionHead(config=config, module=module, path=folder)
