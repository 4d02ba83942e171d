"""The columns that carry a clip between the Ray stages, and their codecs.

A row holds plain columns: ``seq`` and ``clip`` (Clip JSON), arrays as ``.npy`` bytes (``b""``
when absent), small metadata and errors as JSON text (``""`` when absent). Errors travel as
``{kind, base, message}`` and are rebuilt with the same class name, message and meragent base
class, so per-clip failure handling (stage names, unavailable clues) is unchanged. No column is
ever null, which keeps every block's Arrow schema identical.
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import numpy as np

from meragent.data.media_types import DecodedMedia
from meragent.errors import (
    ConfigError,
    DataError,
    LLMError,
    MediaError,
    MeragentError,
    ModelLoadError,
)

SEQ = "seq"
CLIP = "clip"
CLIP_ID = "clip_id"
MEDIA = "media"
AUDIO = "audio"
FRAMES = "frames"
FRAME_TIMES = "frame_times"
DECODE_ERROR = "decode_error"
STATUS = "status"
PAYLOAD = "payload"
USAGE = "usage"
#: Error classes rebuilt by name; any other class is recreated under its own name on the nearest
#: of these bases, so ``isinstance`` checks downstream (MediaError, LLMError, ...) still hold.
_KNOWN_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        MediaError,
        DataError,
        ModelLoadError,
        LLMError,
        ConfigError,
        MeragentError,
        ValueError,
        RuntimeError,
        OSError,
        TypeError,
    )
}
_REBUILT: dict[tuple[str, str], type[Exception]] = {}
_REBUILT_LOCK = threading.Lock()


def vector_column(modality: str) -> str:
    return f"vec_{modality}"


def error_column(modality: str) -> str:
    return f"err_{modality}"


def recipe_column(modality: str) -> str:
    """The recipe digest the encoder stage's tool computed the vectors with."""
    return f"recipe_{modality}"


# --------------------------------------------------------------------------- column codecs


def array_bytes(array: np.ndarray | None) -> bytes:
    """``.npy`` bytes of an array (``b""`` for None): exact dtype and shape, no pickle."""
    if array is None:
        return b""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def bytes_array(data: bytes | None) -> np.ndarray | None:
    if not data:
        return None
    return np.load(io.BytesIO(bytes(data)), allow_pickle=False)


def error_json(exc: BaseException) -> str:
    """An exception as JSON: its class name, nearest known base and message."""
    base = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _KNOWN_ERRORS), "")
    return json.dumps({"kind": type(exc).__name__, "base": base, "message": str(exc)})


def rebuild_error(text: str) -> Exception:
    """The exception :func:`error_json` described: same class name, message and base class."""
    data = json.loads(text)
    kind, base, message = str(data["kind"]), str(data.get("base") or ""), str(data["message"])
    cls = _KNOWN_ERRORS.get(kind)
    if cls is None:
        with _REBUILT_LOCK:
            key = (kind, base)
            if key not in _REBUILT:
                parent = _KNOWN_ERRORS.get(base, Exception)
                _REBUILT[key] = type(kind, (parent,), {"__module__": __name__})
            cls = _REBUILT[key]
    # Bypass custom __init__ signatures (ModelLoadError takes three arguments): only the class
    # and the message matter to the code that handles the error.
    error = cls.__new__(cls)
    error.args = (message,)
    return error


def objects(values: list[Any]) -> np.ndarray:
    """A 1-D object column (np.array would try to stack equal-length bytes or lists)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def media_json(media: DecodedMedia) -> str:
    return json.dumps(
        {
            "clip_id": media.clip_id,
            "sample_rate": int(media.sample_rate),
            "duration": float(media.duration),
            "fps": None if media.fps is None else float(media.fps),
            "flags": list(media.flags),
        }
    )


def media_from_row(meta: str, audio: bytes, frames: bytes, frame_times: bytes) -> DecodedMedia:
    data = json.loads(meta)
    return DecodedMedia(
        clip_id=data["clip_id"],
        sample_rate=int(data["sample_rate"]),
        duration=float(data["duration"]),
        audio=bytes_array(audio),
        frames=bytes_array(frames),
        frame_times=bytes_array(frame_times),
        fps=data["fps"],
        flags=list(data["flags"]),
    )


def row_media(batch: dict[str, np.ndarray], index: int) -> DecodedMedia | None:
    """The clip's decoded media from stage 1's columns (None when decoding failed)."""
    if batch[DECODE_ERROR][index]:
        return None
    return media_from_row(
        str(batch[MEDIA][index]),
        batch[AUDIO][index],
        batch[FRAMES][index],
        batch[FRAME_TIMES][index],
    )


def json_safe(value: Any) -> Any:
    """Plain JSON data, encoded exactly as the trace store would encode it."""
    from meragent.graphs.trace import dumps

    text = dumps(value)
    return None if text is None else json.loads(text)
