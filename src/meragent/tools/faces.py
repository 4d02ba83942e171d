"""Face detection and cropping on sampled frames (OpenCV Haar cascade, or YuNet from an ONNX file).

Each frame keeps its largest face, cropped square with a margin and resized to 224 × 224; YuNet's
eye landmarks also rotate the crop so the eyes are level. Frames without a face are dropped; when
no frame has one, every frame is centre-cropped instead and the result carries the ``no_face``
flag, so a tool can still run (clips that are already face crops often defeat the detectors).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from meragent.errors import ModelLoadError

CROP_SIZE = 224
#: Extra context around the detected box on each side, as a fraction of the box size.
CROP_MARGIN = 0.25
NO_FACE = "no_face"


@dataclass(frozen=True)
class FaceBox:
    """A face in pixel coordinates; ``eyes`` = ((right_x, right_y), (left_x, left_y)) if known."""

    x: int
    y: int
    w: int
    h: int
    score: float = 1.0
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None

    @property
    def area(self) -> int:
        return self.w * self.h


class FaceDetector(Protocol):
    """Finds faces in one RGB uint8 frame."""

    name: str

    def detect(self, frame: np.ndarray) -> list[FaceBox]: ...


@dataclass
class HaarFaceDetector:
    """OpenCV's bundled frontal-face Haar cascade (no extra files needed)."""

    cascade: Any
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size_fraction: float = 0.08
    name: str = "haar"

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        import cv2

        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        min_side = max(20, int(min(gray.shape) * self.min_size_fraction))
        found = self.cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
        )
        return [FaceBox(int(x), int(y), int(w), int(h)) for x, y, w, h in found]


@dataclass
class YuNetFaceDetector:
    """OpenCV's YuNet (``cv2.FaceDetectorYN``) from a local ONNX file; gives eye landmarks."""

    model_path: Path
    score_threshold: float = 0.7
    name: str = "yunet"
    _detector: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        import cv2

        height, width = frame.shape[:2]
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        # The input size is detector state: parallel clips must not interleave set + detect.
        with self._lock:
            if self._detector is None:
                self._detector = cv2.FaceDetectorYN.create(
                    str(self.model_path), "", (width, height), self.score_threshold
                )
            self._detector.setInputSize((width, height))
            _, found = self._detector.detect(bgr)
        if found is None:
            return []
        return [_yunet_box(row) for row in found]


def _yunet_box(row: np.ndarray) -> FaceBox:
    x, y, w, h = (round(v) for v in row[:4])
    right_eye = (float(row[4]), float(row[5]))
    left_eye = (float(row[6]), float(row[7]))
    return FaceBox(x, y, w, h, score=float(row[14]), eyes=(right_eye, left_eye))


def load_face_detector(yunet_onnx: str | Path | None = None) -> FaceDetector:
    """YuNet when an ONNX path is given, else OpenCV's Haar cascade."""
    import cv2

    if yunet_onnx:
        path = Path(yunet_onnx).expanduser()
        if not path.is_file():
            raise ModelLoadError("face_detector", str(path), "path does not exist")
        return YuNetFaceDetector(model_path=path)
    cascades: str = cv2.data.haarcascades  # type: ignore[attr-defined]
    cascade_path = Path(cascades) / "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(str(cascade_path))
    if cascade.empty():
        raise ModelLoadError("face_detector", str(cascade_path), "OpenCV could not read it")
    return HaarFaceDetector(cascade=cascade)


@dataclass
class FaceCrops:
    """Face crops of a clip's frames: ``crops`` (M, 224, 224, 3) uint8 and where they came from."""

    crops: np.ndarray
    frame_indices: list[int]
    boxes: list[FaceBox | None]
    n_frames: int
    flags: list[str] = field(default_factory=list)

    @property
    def found_faces(self) -> bool:
        return NO_FACE not in self.flags


def square_box_with_margin(box: FaceBox, margin: float) -> tuple[float, float, float]:
    """Centre x, centre y and side of a square around ``box`` grown by ``margin`` per side."""
    side = max(box.w, box.h) * (1.0 + 2.0 * margin)
    return box.x + box.w / 2.0, box.y + box.h / 2.0, side


def crop_face(
    frame: np.ndarray, box: FaceBox, size: int = CROP_SIZE, margin: float = CROP_MARGIN
) -> np.ndarray:
    """A square crop around ``box``, rotated so the eyes are level when landmarks are known.

    One affine warp does crop, rotation and resize together; pixels outside the frame are
    filled by replicating the border so the face is never cut by a black band.
    """
    import cv2

    cx, cy, side = square_box_with_margin(box, margin)
    angle = 0.0
    if box.eyes is not None:
        (rx, ry), (lx, ly) = box.eyes
        angle = float(np.degrees(np.arctan2(ly - ry, lx - rx)))
    scale = size / side
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    matrix[0, 2] += size / 2.0 - cx
    matrix[1, 2] += size / 2.0 - cy
    return cv2.warpAffine(
        frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def centre_crop(frame: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The largest centred square of ``frame``, resized to ``size``."""
    import cv2

    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frame[top : top + side, left : left + side]
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def crop_faces(
    frames: np.ndarray,
    detector: FaceDetector,
    size: int = CROP_SIZE,
    margin: float = CROP_MARGIN,
) -> FaceCrops:
    """Largest face of every frame, cropped; centre crops of all frames (flagged) if none."""
    crops: list[np.ndarray] = []
    indices: list[int] = []
    boxes: list[FaceBox | None] = []
    for index, frame in enumerate(frames):
        found = detector.detect(frame)
        if not found:
            continue
        box = max(found, key=lambda candidate: candidate.area)
        crops.append(crop_face(frame, box, size, margin))
        indices.append(index)
        boxes.append(box)
    if crops:
        return FaceCrops(np.stack(crops), indices, boxes, n_frames=len(frames))
    centred = np.stack([centre_crop(frame, size) for frame in frames])
    return FaceCrops(
        centred,
        list(range(len(frames))),
        [None] * len(frames),
        n_frames=len(frames),
        flags=[NO_FACE],
    )
