"""The row-level vocabulary every manifest layout shares: what a row needs, why one is unusable.

``ManifestLoad`` (clips + row errors) is what ``load_manifest`` returns; ``RowError`` is one
unusable row as a single line; ``Collector`` gathers clips and errors and rejects duplicate
names; the checks here (names, labels, valence, open-set lists, paths that must stay inside the
data root) turn a bad value into a ``RowProblem`` that becomes a ``RowError``, never a crash.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from meragent.data.manifest.csv_records import printable
from meragent.data.media import VIDEO_EXTENSIONS
from meragent.errors import DataError
from meragent.eval.parsing import OpenSetParseError, parse_openset
from meragent.schema import Clip, normalize_emotion

#: Whether a row needs media (CSV/JSONL: or a subtitle); described in ``meragent.data.manifest``.
MediaPolicy = Literal["required", "optional"]
#: ``subtitle_language`` -> the transcript column it reads (MER transcripts carry both).
SUBTITLE_COLUMNS: dict[str, str] = {"zh": "chinese", "en": "english"}
#: Column spellings accepted for each manifest field (first present wins).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "name": ("name", "id", "clip", "clip_id"),
    "video": ("video", "video_path", "path"),
    "audio": ("audio", "audio_path"),
    "subtitle": ("subtitle", "text", "transcription", "sentence", "chinese", "english"),
    "language": ("language", "lang"),
    "discrete": ("discrete", "emotion", "label"),
    "valence": ("valence", "val"),
    "openset": ("openset", "open_set", "ov_labels"),
    "split": ("split",),
}

RowErrorKind = Literal[
    "missing_file",
    "path_escape",
    "unknown_label",
    "malformed",
    "duplicate",
    "encoding",
    "bad_value",
    "unreadable_media",
    "invalid",
]


class RowError(BaseModel):
    """One unusable row (or label entry) of a source; ``str()`` is a single line.

    ``row`` is the line number in ``file`` (header = 1) when the source has lines.
    """

    row: int | None = None
    clip_id: str | None = None
    reason: str
    kind: RowErrorKind = "invalid"
    file: str | None = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.clip_id is not None:
            where.append(f"clip {self.clip_id!r}")
        prefix = ", ".join(where) or "manifest"
        return f"{prefix}: {' '.join(self.reason.split())}"


class ManifestLoad(BaseModel):
    """The clips a source yielded, the rows it could not use, and how it was read."""

    layout: str
    source: Path
    root: Path
    split: str | None = None
    splits: list[str] = Field(default_factory=list)
    media: MediaPolicy = "required"
    clips: list[Clip] = Field(default_factory=list)
    errors: list[RowError] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def n_without_media(self) -> int:
        """Clips with neither a video nor an audio file (text-only or labels-only)."""
        return sum(clip.video is None and clip.audio is None for clip in self.clips)


class RowProblem(ValueError):
    """Why one row is unusable; becomes a RowError and the load goes on."""

    def __init__(self, reason: str, kind: RowErrorKind = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class Wanted:
    """What the caller asked of every row: whether it needs media, which subtitle language."""

    media: MediaPolicy = "required"
    subtitle_language: str | None = None

    @property
    def subtitle_column(self) -> str | None:
        return SUBTITLE_COLUMNS[self.subtitle_language] if self.subtitle_language else None


def absolute_path(path: Path) -> Path:
    return Path(os.path.abspath(path))


def reject_split(split: str | None, what: str) -> None:
    if split is not None:
        raise DataError(f"--split {split!r} does not apply to {what} (it has no splits)")


def resolve_inside(root: Path, value: str | Path) -> Path:
    """Resolve a manifest path against ``root``; raise if it points outside ``root``.

    The check is lexical (after normalising ``..``): symlinks that the data owner placed inside
    the root are trusted, while a row cannot name ``../../etc/passwd`` or an absolute path
    elsewhere.
    """
    text = str(value).strip()
    if not text:
        raise RowProblem("empty path", "missing_file")
    if "\x00" in text:
        raise RowProblem("path contains a NUL byte", "path_escape")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    normalised = Path(os.path.normpath(candidate))
    if not normalised.is_relative_to(root):
        raise RowProblem(f"path {text!r} escapes the data root {root}", "path_escape")
    return normalised


def check_name(name: Any) -> str:
    text = "" if name is None else str(name).strip()
    if not text:
        raise RowProblem("missing clip name", "malformed")
    # Names become file names in the feature cache (features/<encoder>/<name>.npy).
    if "/" in text or "\\" in text or text in (".", "..") or any(ord(c) < 32 for c in text):
        raise RowProblem(f"clip name {text!r} is not a plain file name", "path_escape")
    return text


def parse_label(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        return normalize_emotion(text)
    except ValueError as exc:
        raise RowProblem(str(exc), "unknown_label") from None


def parse_valence(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowProblem(f"valence {value!r} is not a number", "bad_value") from None
    return None if np.isnan(number) else number


def openset_cell(value: Any) -> list[str] | None:
    """Open-vocabulary labels from a list, a Python/JSON list string, or comma-separated words."""
    try:
        words = parse_openset(value, mode="words")
    except OpenSetParseError as exc:
        raise RowProblem(str(exc), "bad_value") from None
    return words or None


def clean_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def find_video(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for ext in VIDEO_EXTENSIONS:
            candidate = folder / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def existing_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise RowProblem(f"{what} file not found: {path}", "missing_file")
    return path


class Collector:
    """Accumulates clips and row errors, rejecting duplicate names."""

    def __init__(self, file: str | None = None) -> None:
        self.file = file
        self.clips: list[Clip] = []
        self.errors: list[RowError] = []
        self._first_row: dict[str, int | None] = {}

    def add(self, row: int | None, clip_id: str | None, build: Callable[[], Clip]) -> None:
        try:
            clip = build()
            if clip.id in self._first_row:
                first = self._first_row[clip.id]
                where = f" (first at row {first})" if first is not None else ""
                raise RowProblem(f"duplicate clip name{where}", "duplicate")
        except RowProblem as problem:
            self.error(row, clip_id, problem.reason, problem.kind)
            return
        except ValidationError as exc:
            detail = exc.errors()[0]
            field = ".".join(str(part) for part in detail["loc"]) or "row"
            self.error(row, clip_id, f"{field}: {detail['msg']}", "invalid")
            return
        self._first_row[clip.id] = row
        self.clips.append(clip)

    def error(
        self,
        row: int | None,
        clip_id: str | None,
        reason: str,
        kind: RowErrorKind,
        *,
        file: str | None = None,
    ) -> None:
        self.errors.append(
            RowError(row=row, clip_id=clip_id, reason=reason, kind=kind, file=file or self.file)
        )

    def load(
        self,
        layout: str,
        source: Path,
        root: Path,
        split: str | None = None,
        splits: list[str] | None = None,
    ) -> ManifestLoad:
        """What a layout read: the clips and errors gathered here, and where they came from."""
        return ManifestLoad(
            layout=layout,
            source=source,
            root=root,
            split=split,
            splits=splits or [],
            clips=self.clips,
            errors=self.errors,
        )


def field_text(fields: list[str], index: int) -> str | None:
    """A field as printable text (bad bytes shown as U+FFFD), None when the row is too short."""
    return printable(fields[index]).strip() or None if index < len(fields) else None


def column_map(header: list[str], path: Path, subtitle_column: str | None = None) -> dict[str, int]:
    mapping: dict[str, int] = {}
    for field, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in header:
                mapping[field] = header.index(alias)
                break
    if "name" not in mapping:
        raise DataError(f"manifest {path} has no 'name' column (columns: {', '.join(header)})")
    if subtitle_column is not None:
        if subtitle_column not in header:
            raise DataError(
                f"{path} has no {subtitle_column!r} subtitle column (columns: {', '.join(header)})"
            )
        mapping["subtitle"] = header.index(subtitle_column)
    return mapping
