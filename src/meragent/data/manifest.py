"""Read clip lists from the layouts MER data comes in, keeping good rows when some are bad.

Layouts (auto-detected by ``load_manifest``):

* ``mer2024`` — a processed folder: ``video/``, optional ``audio/*.wav``, ``label-6way.npz``
  (``<split>_corpus`` dicts name -> {'emo': ..., 'val': ...}) and an optional transcription CSV
  (``transcription-merge.csv`` name,chinese). MER2023's processed folder has the same shape.
* ``mer2023`` — the release: ``train-label.csv`` / ``test{1,2,3}-label.csv`` (name,discrete,valence;
  valence -10 = missing) with videos in ``<split>/`` or ``video/`` beside them.
* ``csv`` / ``jsonl`` — a manifest with columns name, video, subtitle, language, discrete,
  valence, openset (a Python-list string or a JSON list); relative paths resolve against
  ``data_root`` when given, else against the manifest's folder.
* ``folder`` — a plain folder of videos (``video``: a single video file). A folder holding a
  ``manifest.csv``/``manifest.jsonl`` (what ``meragent data synth`` writes) is read through it.

Every file a row points to must stay inside the data root (the manifest's folder or
``data_root``): a row like ``../../etc/passwd`` is an error, not a read.

``media`` says whether a clip needs something to decode. ``"required"`` (``batch``, ``run``) is
what the pipeline needs: a MER row whose ``<name>.<ext>`` video is not found, or a CSV/JSONL row
with no video, audio or subtitle, is an unusable row. ``"optional"`` (fusion training and
prediction, evaluation, text features) needs labels and cached features only — the MERTools
workflow of ``label-6way.npz`` + feature folders with the videos elsewhere: such rows become
clips without media (counted by ``ManifestLoad.n_without_media``). A row that *names* a file
that is not there, or one outside the data root, stays an error under both policies.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from meragent.data.csv_records import CsvRecord, has_bad_bytes, printable, read_csv_records
from meragent.data.label_npz import read_label_npz
from meragent.data.media import VIDEO_EXTENSIONS
from meragent.errors import DataError
from meragent.schema import Clip, normalize_emotion

MER_LABEL_FILE = "label-6way.npz"
#: Transcription files of MER processed folders, most specific first.
TRANSCRIPTION_FILES: tuple[str, ...] = (
    "transcription-merge.csv",
    "transcription_merge.csv",
    "transcription-engchi-polish.csv",  # MERTools' MER2023 release: name, chinese, english
    "transcription.csv",
)
MER2023_SPLITS: tuple[str, ...] = ("train", "test1", "test2", "test3")
#: Whether a clip needs a media file (or, for CSV/JSONL rows, a subtitle); see the docstring.
MediaPolicy = Literal["required", "optional"]
#: ``subtitle_language`` -> the transcript column it reads (MER transcripts carry both).
SUBTITLE_COLUMNS: dict[str, str] = {"zh": "chinese", "en": "english"}
#: A folder holding one of these is read through it (``meragent data synth`` writes the first).
MANIFEST_FILES: tuple[str, ...] = ("manifest.csv", "manifest.jsonl")
#: Column spellings accepted for each manifest field (first present wins).
_COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
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
_OPENSET_SEPARATORS = re.compile(r"[,，;；、]")
_NAME_IN_JSON = re.compile(r'"name"\s*:\s*"([^"]*)"')


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


class _RowProblem(ValueError):
    """Why one row is unusable; becomes a RowError and the load goes on."""

    def __init__(self, reason: str, kind: RowErrorKind = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def load_manifest(
    source: Path | str,
    *,
    data_root: Path | None = None,
    split: str | None = None,
    media: MediaPolicy = "required",
    subtitle_language: str | None = None,
) -> ManifestLoad:
    """Read ``source`` (a folder or a manifest file) in whichever layout it has.

    Bad rows (missing file, path outside the data root, unknown label, malformed or duplicate
    row, non-UTF-8 text) land in ``errors``; the good rows are still returned in ``clips``.
    ``media="optional"`` keeps rows that have no media to decode (see the module docstring).
    ``subtitle_language`` (``zh``/``en``) reads the subtitle from the ``chinese``/``english``
    column (MER transcripts have both; default: the first subtitle column found, Chinese for
    MER). Raises ``DataError`` only when the source as a whole is unusable.
    """
    if media not in get_args(MediaPolicy):
        raise ValueError(f"media must be one of {get_args(MediaPolicy)}, got {media!r}")
    if subtitle_language is not None and subtitle_language not in SUBTITLE_COLUMNS:
        known = ", ".join(SUBTITLE_COLUMNS)
        raise DataError(f"subtitle language {subtitle_language!r}: expected one of {known}")
    want = _Wanted(media, subtitle_language)
    # Absolute from here on, so every path a row yields can be checked against the root.
    path = _absolute(Path(source).expanduser())
    if not path.exists():
        raise DataError(f"manifest source not found: {path}")
    root = _absolute(Path(data_root).expanduser()) if data_root is not None else None
    if path.is_dir():
        root = root or path
        if (path / MER_LABEL_FILE).is_file():
            loaded = _load_mer_processed(path / MER_LABEL_FILE, root, split, want)
        elif any((path / f"{name}-label.csv").is_file() for name in MER2023_SPLITS):
            loaded = _load_mer2023(path, root, split, want)
        elif manifest := next((path / n for n in MANIFEST_FILES if (path / n).is_file()), None):
            loaded = _load_manifest_file(manifest, root, split, want)
        else:
            _reject_split(split, "a folder of videos")
            loaded = _load_video_folder(path, root)
    else:
        loaded = _load_manifest_file(path, root or path.parent, split, want)
    return loaded.model_copy(update={"media": media})


@dataclass(frozen=True)
class _Wanted:
    """What the caller asked of every row: whether it needs media, which subtitle language."""

    media: MediaPolicy = "required"
    subtitle_language: str | None = None

    @property
    def subtitle_column(self) -> str | None:
        return SUBTITLE_COLUMNS[self.subtitle_language] if self.subtitle_language else None


def _load_manifest_file(path: Path, root: Path, split: str | None, want: _Wanted) -> ManifestLoad:
    suffix = path.suffix.lower()
    if path.name == MER_LABEL_FILE or suffix == ".npz":
        return _load_mer_processed(path, root, split, want)
    if suffix in (".csv", ".tsv"):
        return _load_table(path, root, split, want)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _load_jsonl(path, root, split, want)
    if suffix in VIDEO_EXTENSIONS:
        _reject_split(split, "a single video")
        return _load_single_video(path, root)
    raise DataError(
        f"cannot read {path}: expected a folder, a .csv/.tsv/.jsonl/.json manifest, "
        f"a {MER_LABEL_FILE} or a video ({', '.join(VIDEO_EXTENSIONS)})"
    )


# ---------------------------------------------------------------------------- row helpers


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _reject_split(split: str | None, what: str) -> None:
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
        raise _RowProblem("empty path", "missing_file")
    if "\x00" in text:
        raise _RowProblem("path contains a NUL byte", "path_escape")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    normalised = Path(os.path.normpath(candidate))
    if not normalised.is_relative_to(root):
        raise _RowProblem(f"path {text!r} escapes the data root {root}", "path_escape")
    return normalised


def _check_name(name: Any) -> str:
    text = "" if name is None else str(name).strip()
    if not text:
        raise _RowProblem("missing clip name", "malformed")
    # Names become file names in the feature cache (features/<encoder>/<name>.npy).
    if "/" in text or "\\" in text or text in (".", "..") or any(ord(c) < 32 for c in text):
        raise _RowProblem(f"clip name {text!r} is not a plain file name", "path_escape")
    return text


def _label(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        return normalize_emotion(text)
    except ValueError as exc:
        raise _RowProblem(str(exc), "unknown_label") from None


def _valence(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _RowProblem(f"valence {value!r} is not a number", "bad_value") from None
    return None if np.isnan(number) else number


def parse_openset(value: Any) -> list[str] | None:
    """Open-vocabulary labels from a list, a Python/JSON list string, or comma-separated words."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        items: list[Any] = list(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        if text.startswith("["):
            items = _parse_list_literal(text)
        else:
            items = _OPENSET_SEPARATORS.split(text)
    if not all(isinstance(item, str) for item in items):
        raise _RowProblem(f"openset {value!r} is not a list of words", "bad_value")
    words = [item.strip() for item in items if item.strip()]
    return words or None


def _parse_list_literal(text: str) -> list[Any]:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        try:
            # literal_eval only builds literals (no calls), so a MER Python-list string is safe.
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise _RowProblem(f"openset {text!r} is not a valid list", "bad_value") from None
    if not isinstance(parsed, list):
        raise _RowProblem(f"openset {text!r} is not a list", "bad_value")
    return parsed


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _find_video(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for ext in VIDEO_EXTENSIONS:
            candidate = folder / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _existing_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise _RowProblem(f"{what} file not found: {path}", "missing_file")
    return path


class _Collector:
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
                raise _RowProblem(f"duplicate clip name{where}", "duplicate")
        except _RowProblem as problem:
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


# ---------------------------------------------------------------------------- CSV / JSONL


def _field_text(fields: list[str], index: int) -> str | None:
    """A field as printable text (bad bytes shown as U+FFFD), None when the row is too short."""
    return printable(fields[index]).strip() or None if index < len(fields) else None


def _column_map(
    header: list[str], path: Path, subtitle_column: str | None = None
) -> dict[str, int]:
    mapping: dict[str, int] = {}
    for field, aliases in _COLUMN_ALIASES.items():
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


def _load_table(path: Path, root: Path, split: str | None, want: _Wanted) -> ManifestLoad:
    header, records = read_csv_records(path)
    columns = _column_map(header, path, want.subtitle_column)
    if split is not None and "split" not in columns:
        raise DataError(f"--split {split!r} given but manifest {path} has no 'split' column")
    found = _Collector(path.name)
    for record in records:
        clip_id = _field_text(record.fields, columns["name"])
        problem = _table_row_problem(header, record)
        if problem is not None:
            found.error(record.line, clip_id, problem.reason, problem.kind)
            continue
        fields = record.fields
        values = {f: fields[i] if i < len(fields) else "" for f, i in columns.items()}
        if split is not None and values.get("split", "").strip() != split:
            continue
        found.add(record.line, clip_id, partial(_clip_from_fields, values, root, want))
    return ManifestLoad(
        layout="csv", source=path, root=root, split=split, clips=found.clips, errors=found.errors
    )


def _table_row_problem(header: list[str], record: CsvRecord) -> _RowProblem | None:
    """Why a CSV record cannot be read as a row (before its values are looked at), if so."""
    if record.error is not None:
        return _RowProblem(record.error, "malformed")
    if len(record.fields) > len(header):
        reason = f"malformed row: {len(record.fields)} fields, header has {len(header)}"
        return _RowProblem(reason, "malformed")
    bad = [h for h, value in zip(header, record.fields, strict=False) if has_bad_bytes(value)]
    if bad:
        reason = f"{', '.join(bad)} is not valid UTF-8 (save the manifest as UTF-8)"
        return _RowProblem(reason, "encoding")
    return None


def _load_jsonl(path: Path, root: Path, split: str | None, want: _Wanted) -> ManifestLoad:
    found = _Collector(path.name)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for line, record in _json_records(path, data, found):
        if not isinstance(record, dict):
            found.error(line, None, "malformed row: not a JSON object", "malformed")
            continue
        values = {
            field: next((record[a] for a in aliases if a in record), None)
            for field, aliases in _COLUMN_ALIASES.items()
        }
        if want.subtitle_column is not None:
            values["subtitle"] = record.get(want.subtitle_column)
        if split is not None and str(values.get("split") or "") != split:
            continue
        clip_id = _text(values["name"])
        found.add(line, clip_id, partial(_clip_from_fields, values, root, want))
    return ManifestLoad(
        layout="jsonl", source=path, root=root, split=split, clips=found.clips, errors=found.errors
    )


def _json_records(path: Path, data: bytes, found: _Collector) -> Iterator[tuple[int, Any]]:
    """(row number, parsed object): a JSON array file, or one JSON object per line."""
    stripped = data.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith(b"["):
        try:
            items = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"manifest {path} is not valid UTF-8 JSON: {exc}") from None
        yield from enumerate(items, start=1)
        return
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            match = _NAME_IN_JSON.search(raw.decode("utf-8", errors="replace"))
            reason = "row is not valid UTF-8 (save the manifest as UTF-8)"
            found.error(number, match.group(1) if match else None, reason, "encoding")
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as exc:
            match = _NAME_IN_JSON.search(text)
            reason = f"malformed row: invalid JSON ({exc.msg} at column {exc.colno})"
            found.error(number, match.group(1) if match else None, reason, "malformed")


def _clip_from_fields(values: Mapping[str, Any], root: Path, want: _Wanted) -> Clip:
    name = _check_name(values.get("name"))
    # Labels first: they are checked without touching the disk.
    discrete = _label(values.get("discrete"))
    valence = _valence(values.get("valence"))
    openset = parse_openset(values.get("openset"))
    video_value = _text(values.get("video"))
    audio_value = _text(values.get("audio"))
    audio = _existing_file(resolve_inside(root, audio_value), "audio") if audio_value else None
    subtitle = _text(values.get("subtitle"))
    if video_value is not None:
        video: Path | None = _existing_file(resolve_inside(root, video_value), "video")
    else:
        video = _find_video(name, [root, root / "video", root / "videos"])
        # No video named and none found: an audio-only or text-only clip is still a clip, and
        # so is a labels-only one when the caller reads features instead of media.
        if video is None and audio is None and subtitle is None and want.media == "required":
            raise _RowProblem(
                f"no video, audio or subtitle given and no {name}.<ext> video in {root}",
                "missing_file",
            )
    return Clip(
        id=name,
        video=video,
        audio=audio,
        subtitle=subtitle,
        language=_text(values.get("language")) or want.subtitle_language,
        discrete=discrete,
        valence=valence,
        openset=openset,
    )


# ---------------------------------------------------------------------------- MER layouts


@dataclass(frozen=True)
class _MerFiles:
    """Where a MER layout keeps a clip's media, and whether the clip needs it."""

    root: Path
    video_dirs: list[Path]
    audio_dir: Path
    media: MediaPolicy


def _load_mer_processed(
    label_file: Path, root: Path, split: str | None, want: _Wanted
) -> ManifestLoad:
    folder = label_file.parent
    corpora = read_label_npz(label_file)
    splits = [key.removesuffix("_corpus") for key in corpora if key.endswith("_corpus")]
    if not splits:
        raise DataError(f"{label_file} holds no '<split>_corpus' entry (keys: {list(corpora)})")
    if split is not None and split not in splits:
        raise DataError(f"split {split!r} not in {label_file} (has: {', '.join(splits)})")
    chosen = [split] if split is not None else splits
    found = _Collector(label_file.name)
    subtitles = _read_transcriptions(folder, found, want.subtitle_column)
    video_dir, audio_dir = folder / "video", folder / "audio"
    for name_split in chosen:
        corpus = corpora[f"{name_split}_corpus"]
        if not isinstance(corpus, dict):
            found.error(None, None, f"{name_split}_corpus is not a name->label dict", "malformed")
            continue
        for raw_name, entry in corpus.items():
            clip_id = str(raw_name)
            files = _MerFiles(root, [video_dir], audio_dir, want.media)
            found.add(None, clip_id, partial(_mer_clip, clip_id, entry, files, subtitles))
    return ManifestLoad(
        layout="mer2024",
        source=label_file,
        root=root,
        split=split,
        splits=splits,
        clips=found.clips,
        errors=found.errors,
    )


def _load_mer2023(folder: Path, root: Path, split: str | None, want: _Wanted) -> ManifestLoad:
    splits = [name for name in MER2023_SPLITS if (folder / f"{name}-label.csv").is_file()]
    if split is not None and split not in splits:
        raise DataError(f"split {split!r} has no {split}-label.csv in {folder} (has: {splits})")
    chosen = [split] if split is not None else splits
    found = _Collector()
    subtitles = _read_transcriptions(folder, found, want.subtitle_column)
    for name_split in chosen:
        label_file = folder / f"{name_split}-label.csv"
        found.file = label_file.name
        header, records = read_csv_records(label_file)
        columns = _column_map(header, label_file)
        video_dirs = [folder / name_split, folder / "video", folder / "videos"]
        files = _MerFiles(root, video_dirs, folder / "audio", want.media)
        for record in records:
            fields = record.fields
            clip_id = _field_text(fields, columns["name"])
            if record.error is not None:
                found.error(record.line, clip_id, record.error, "malformed")
                continue
            if has_bad_bytes("".join(fields)):
                reason = "row is not valid UTF-8 (save the label file as UTF-8)"
                found.error(record.line, clip_id, reason, "encoding")
                continue
            entry = {
                "emo": _field_text(fields, columns["discrete"]) if "discrete" in columns else None,
                "val": _field_text(fields, columns["valence"]) if "valence" in columns else None,
            }
            found.add(record.line, clip_id, partial(_mer_clip, clip_id, entry, files, subtitles))
    return ManifestLoad(
        layout="mer2023",
        source=folder,
        root=root,
        split=split,
        splits=splits,
        clips=found.clips,
        errors=found.errors,
    )


def _mer_clip(name: Any, entry: Any, files: _MerFiles, subtitles: Transcripts) -> Clip:
    clip_id = _check_name(name)
    if isinstance(entry, dict):
        emo, val = entry.get("emo"), entry.get("val")
    else:
        emo, val = entry, None
    discrete, valence = _label(emo), _valence(val)
    video = _find_video(clip_id, files.video_dirs)
    if video is None and files.media == "required":
        where = " or ".join(str(d) for d in files.video_dirs)
        raise _RowProblem(f"video file not found: {clip_id}.<ext> in {where}", "missing_file")
    audio = files.audio_dir / f"{clip_id}.wav"
    return Clip(
        id=clip_id,
        video=resolve_inside(files.root, video) if video is not None else None,
        audio=resolve_inside(files.root, audio) if audio.is_file() else None,
        subtitle=subtitles.texts.get(clip_id),
        language=subtitles.language,
        discrete=discrete,
        valence=valence,
    )


@dataclass(frozen=True)
class Transcripts:
    """Subtitles of a MER folder (name -> text) and their language."""

    texts: dict[str, str]
    language: str = "zh"


#: Transcript column -> language code; MER's text is Chinese unless the column says otherwise.
_TRANSCRIPT_LANGUAGES = {"english": "en"}


def _read_transcriptions(
    folder: Path, found: _Collector, subtitle_column: str | None = None
) -> Transcripts:
    """Subtitles from the first transcription CSV present; bad rows become errors."""
    path = next((folder / n for n in TRANSCRIPTION_FILES if (folder / n).is_file()), None)
    if path is None:
        return Transcripts({})
    try:
        header, records = read_csv_records(path)
        columns = _column_map(header, path, subtitle_column)
    except DataError as exc:
        # Subtitles are optional: a broken transcription file costs subtitles, not clips.
        found.errors.append(RowError(reason=str(exc), kind="malformed", file=path.name))
        return Transcripts({})
    if "subtitle" not in columns:
        return Transcripts({})
    language = _TRANSCRIPT_LANGUAGES.get(header[columns["subtitle"]], "zh")
    subtitles: dict[str, str] = {}
    for record in records:
        problem = _transcript_problem(record, columns)
        if problem is not None:
            # The clip itself is fine: it loads without a subtitle, and the row is reported.
            name = _field_text(record.fields, columns["name"])
            found.error(record.line, name, problem.reason, problem.kind, file=path.name)
            continue
        if len(record.fields) <= max(columns["name"], columns["subtitle"]):
            continue
        name = printable(record.fields[columns["name"]]).strip()
        text = record.fields[columns["subtitle"]].strip()
        if text and text.lower() != "nan":
            subtitles[name] = text
    return Transcripts(subtitles, language)


def _transcript_problem(record: CsvRecord, columns: Mapping[str, int]) -> _RowProblem | None:
    if record.error is not None:
        return _RowProblem(f"{record.error} (its subtitle is not used)", "malformed")
    index = columns["subtitle"]
    if index < len(record.fields) and has_bad_bytes(record.fields[index]):
        reason = "subtitle is not valid UTF-8 (save the transcription as UTF-8)"
        return _RowProblem(reason, "encoding")
    return None


# ---------------------------------------------------------------------------- folders


def _load_video_folder(folder: Path, root: Path) -> ManifestLoad:
    videos = _videos_in(folder)
    if not videos:
        for sub in ("video", "videos"):
            if (folder / sub).is_dir():
                videos = _videos_in(folder / sub)
                if videos:
                    break
    if not videos:
        raise DataError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) found in {folder}")
    found = _Collector(folder.name)
    for video in videos:
        found.add(None, video.stem, partial(_folder_clip, video, folder / "audio", root))
    return ManifestLoad(
        layout="folder", source=folder, root=root, clips=found.clips, errors=found.errors
    )


def _folder_clip(video: Path, audio_dir: Path, root: Path) -> Clip:
    audio = audio_dir / f"{video.stem}.wav"
    return Clip(
        id=_check_name(video.stem),
        video=resolve_inside(root, video),
        audio=resolve_inside(root, audio) if audio.is_file() else None,
    )


def _videos_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
    )


def _load_single_video(path: Path, root: Path) -> ManifestLoad:
    found = _Collector()
    found.add(None, path.stem, partial(_folder_clip, path, path.parent / "audio", root))
    return ManifestLoad(
        layout="video", source=path, root=root, clips=found.clips, errors=found.errors
    )
