"""Parse MER open-set list strings such as ``"['happy', 'relieved']"``.

Two modes:

* ``proper`` (default): the string is a Python-literal or JSON list of strings; quotes are
  respected, so ``"don't believe"`` stays one label. Labels are stripped; empty ones dropped.
* ``words``: also accepts a list/tuple, or words separated by commas or semicolons (manifest
  cells written by hand).
* ``mertools``: reproduces, bit for bit, the ``string_to_list`` that the organisers' MER2024
  open-vocabulary scorer uses (zeroQiaoba/MERTools, ``MER2024/toolkit/utils/functions.py``,
  called from ``MER2024/main-ov.py``). It keeps the text between the first ``[`` and the next
  ``]``, splits it on *every* ``'`` or ``"`` character and keeps the pieces whose stripped form is
  neither empty nor a lone comma, *without* stripping the kept pieces. An apostrophe therefore
  splits a label: ``"['don't believe']"`` -> ``["don", "t believe"]``.

The MER2025 wheel scorer (``MER2025/MER2025_Track23/toolkit/utils/functions.py``) uses a later
``string_to_list`` that also splits on commas and strips each piece; :func:`mertools2025_list`
reproduces it for the wheel metric, whose word-form and synonym files are comma-joined strings.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any, Literal

from meragent.errors import DataError

ParseMode = Literal["proper", "mertools", "words"]
PARSE_MODES: tuple[str, ...] = ("proper", "mertools", "words")

# MER2024's scorer: re.split('[\'\"]', ...); MER2025's adds the comma to the class.
_MER2024_SPLIT = re.compile("['\"]")
_MER2025_SPLIT = re.compile("['\",]")
_DISCARDED_PIECES = ("", ",")
_WORD_SEPARATORS = re.compile(r"[,，;；、]")


class OpenSetParseError(DataError):
    """An open-set list string cannot be read as a list of labels."""


def parse_openset(text: Any, *, mode: ParseMode = "proper") -> list[str]:
    """Return the labels in a MER open-set string (see the module docstring for the modes).

    The one list-string parser of the project (eval files, manifests, the LoRA data).
    """
    if mode == "proper":
        return _parse_proper(text)
    if mode == "mertools":
        return mertools2024_list(text)
    if mode == "words":
        return _parse_words(text)
    raise ValueError(f"unknown parse mode {mode!r} (expected one of {', '.join(PARSE_MODES)})")


def _parse_words(value: object) -> list[str]:
    """A list, a Python/JSON list string, or words separated by commas/semicolons."""
    if _is_missing(value):
        return []
    if isinstance(value, list | tuple):
        items: list[object] = list(value)
    else:
        text = str(value).strip()
        if text.startswith("["):
            literal = _any_literal(text)
            if not isinstance(literal, list):
                raise OpenSetParseError(f"openset {text!r} is not a valid list")
            items = literal
        else:
            items = list(_WORD_SEPARATORS.split(text))
    if not all(isinstance(item, str) for item in items):
        raise OpenSetParseError(f"openset {value!r} is not a list of words")
    return [word for word in (str(item).strip() for item in items) if word]


def _any_literal(source: str) -> object:
    for loader in (json.loads, ast.literal_eval):
        try:
            return loader(source)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def _is_missing(text: object) -> bool:
    # pandas hands the organisers' scorer NaN for an empty cell; it treats NaN like "".
    return text is None or (isinstance(text, float) and math.isnan(text))


def _parse_proper(text: str) -> list[str]:
    if _is_missing(text) or not str(text).strip():
        return []
    source = str(text).strip()
    value = literal_string_list(source)
    if value is None:
        raise OpenSetParseError(f"not a list of strings: {_preview(source)}")
    labels = [label.strip() for label in value]
    return [label for label in labels if label]


def literal_string_list(source: str) -> list[str] | None:
    """``source`` read as a Python (else JSON) literal list of strings; None if it is not one."""
    for loader in (ast.literal_eval, json.loads):
        try:
            value = loader(source)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return list(value)
        return None
    return None


def mertools2024_list(text: str) -> list[str]:
    """MERTools' MER2024 ``string_to_list``, reproduced exactly (pieces are not stripped).

    Where the original crashes (no ``[`` in a non-empty string: ``IndexError``) this raises
    :class:`OpenSetParseError` instead.
    """
    if _is_missing(text) or text == "":
        return []
    parts = str(text).split("[")
    if len(parts) < 2:
        raise OpenSetParseError(f"no '[' in list string: {_preview(str(text))}")
    inner = parts[1].split("]")[0]
    return [
        piece for piece in _MER2024_SPLIT.split(inner) if piece.strip() not in _DISCARDED_PIECES
    ]


def mertools2025_list(text: str) -> list[str]:
    """MERTools' MER2025 ``string_to_list``: drop one leading ``[`` / trailing ``]``, split on
    quotes and commas, strip each piece, drop empty pieces."""
    if _is_missing(text) or text == "":
        return []
    source = str(text)
    if source[0] == "[":
        source = source[1:]
    if source and source[-1] == "]":
        source = source[:-1]
    pieces = (piece.strip() for piece in _MER2025_SPLIT.split(source))
    return [piece for piece in pieces if piece not in _DISCARDED_PIECES]


def _preview(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")
