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
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from meragent.data.media import VIDEO_EXTENSIONS
from meragent.errors import DataError
from meragent.schema import Clip, normalize_emotion

MER_LABEL_FILE = "label-6way.npz"
#: Transcription files of MER processed folders, most specific first.
TRANSCRIPTION_FILES: tuple[str, ...] = (
    "transcription-merge.csv",
    "transcription_merge.csv",
    "transcription.csv",
)
MER2023_SPLITS: tuple[str, ...] = ("train", "test1", "test2", "test3")
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
    clips: list[Clip] = Field(default_factory=list)
    errors: list[RowError] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class _RowProblem(ValueError):
    """Why one row is unusable; becomes a RowError and the load goes on."""

    def __init__(self, reason: str, kind: RowErrorKind = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def load_manifest(
    source: Path | str, *, data_root: Path | None = None, split: str | None = None
) -> ManifestLoad:
    """Read ``source`` (a folder or a manifest file) in whichever layout it has.

    Bad rows (missing file, path outside the data root, unknown label, malformed or duplicate
    row, non-UTF-8 text) land in ``errors``; the good rows are still returned in ``clips``.
    Raises ``DataError`` only when the source as a whole is unusable.
    """
    # Absolute from here on, so every path a row yields can be checked against the root.
    path = _absolute(Path(source).expanduser())
    if not path.exists():
        raise DataError(f"manifest source not found: {path}")
    root = _absolute(Path(data_root).expanduser()) if data_root is not None else None
    if path.is_dir():
        root = root or path
        if (path / MER_LABEL_FILE).is_file():
            return _load_mer_processed(path / MER_LABEL_FILE, root, split)
        if any((path / f"{name}-label.csv").is_file() for name in MER2023_SPLITS):
            return _load_mer2023(path, root, split)
        manifest = next((path / n for n in MANIFEST_FILES if (path / n).is_file()), None)
        if manifest is not None:
            return _load_manifest_file(manifest, root, split)
        _reject_split(split, "a folder of videos")
        return _load_video_folder(path, root)
    return _load_manifest_file(path, root or path.parent, split)


def _load_manifest_file(path: Path, root: Path, split: str | None) -> ManifestLoad:
    suffix = path.suffix.lower()
    if path.name == MER_LABEL_FILE or suffix == ".npz":
        return _load_mer_processed(path, root, split)
    if suffix in (".csv", ".tsv"):
        return _load_table(path, root, split)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _load_jsonl(path, root, split)
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

    def error(self, row: int | None, clip_id: str | None, reason: str, kind: RowErrorKind) -> None:
        self.errors.append(
            RowError(row=row, clip_id=clip_id, reason=reason, kind=kind, file=self.file)
        )


# ---------------------------------------------------------------------------- CSV / JSONL


def _decode_lenient(data: bytes) -> str:
    """UTF-8 text where undecodable bytes survive as surrogates, so each row can be judged."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # BOM written by spreadsheet programs
    return data.decode("utf-8", errors="surrogateescape")


def _has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _printable(text: str) -> str:
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def _read_csv_records(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str], str | None]]]:
    """Header (lower-cased) and (line number, fields, csv error or None) per record."""
    text = _decode_lenient(path.read_bytes())
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"manifest {path} is empty") from None
    except csv.Error as exc:
        raise DataError(f"manifest {path} has an unreadable header: {exc}") from None
    header = [_printable(col).strip().lower() for col in header]

    def records() -> Iterator[tuple[int, list[str], str | None]]:
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, [], f"malformed row: {exc}"
                continue
            if any(field.strip() for field in fields):
                yield reader.line_num, fields, None

    return header, records()


def _field_text(fields: list[str], index: int) -> str | None:
    """A field as printable text (bad bytes shown as U+FFFD), None when the row is too short."""
    return _printable(fields[index]).strip() or None if index < len(fields) else None


def _column_map(header: list[str], path: Path) -> dict[str, int]:
    mapping: dict[str, int] = {}
    for field, aliases in _COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in header:
                mapping[field] = header.index(alias)
                break
    if "name" not in mapping:
        raise DataError(f"manifest {path} has no 'name' column (columns: {', '.join(header)})")
    return mapping


def _load_table(path: Path, root: Path, split: str | None) -> ManifestLoad:
    header, records = _read_csv_records(path)
    columns = _column_map(header, path)
    if split is not None and "split" not in columns:
        raise DataError(f"--split {split!r} given but manifest {path} has no 'split' column")
    found = _Collector(path.name)
    for line, fields, csv_error in records:
        if csv_error is not None:
            found.error(line, None, csv_error, "malformed")
            continue
        clip_id = _field_text(fields, columns["name"])
        if len(fields) > len(header):
            reason = f"malformed row: {len(fields)} fields, header has {len(header)}"
            found.error(line, clip_id, reason, "malformed")
            continue
        bad = [h for h, value in zip(header, fields, strict=False) if _has_bad_bytes(value)]
        if bad:
            reason = f"{', '.join(bad)} is not valid UTF-8 (save the manifest as UTF-8)"
            found.error(line, clip_id, reason, "encoding")
            continue
        values = {f: fields[i] if i < len(fields) else "" for f, i in columns.items()}
        if split is not None and values.get("split", "").strip() != split:
            continue
        found.add(line, clip_id, partial(_clip_from_fields, values, root))
    return ManifestLoad(
        layout="csv", source=path, root=root, split=split, clips=found.clips, errors=found.errors
    )


def _load_jsonl(path: Path, root: Path, split: str | None) -> ManifestLoad:
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
        if split is not None and str(values.get("split") or "") != split:
            continue
        clip_id = _text(values["name"])
        found.add(line, clip_id, partial(_clip_from_fields, values, root))
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


def _clip_from_fields(values: Mapping[str, Any], root: Path) -> Clip:
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
        # No video named and none found: an audio-only or text-only clip is still a clip.
        if video is None and audio is None and subtitle is None:
            raise _RowProblem(
                f"no video, audio or subtitle given and no {name}.<ext> video in {root}",
                "missing_file",
            )
    return Clip(
        id=name,
        video=video,
        audio=audio,
        subtitle=subtitle,
        language=_text(values.get("language")),
        discrete=discrete,
        valence=valence,
        openset=openset,
    )


# ---------------------------------------------------------------------------- MER layouts


def _load_mer_processed(label_file: Path, root: Path, split: str | None) -> ManifestLoad:
    folder = label_file.parent
    corpora = read_label_npz(label_file)
    splits = [key.removesuffix("_corpus") for key in corpora if key.endswith("_corpus")]
    if not splits:
        raise DataError(f"{label_file} holds no '<split>_corpus' entry (keys: {list(corpora)})")
    if split is not None and split not in splits:
        raise DataError(f"split {split!r} not in {label_file} (has: {', '.join(splits)})")
    chosen = [split] if split is not None else splits
    found = _Collector(label_file.name)
    subtitles = _read_transcriptions(folder, found)
    video_dir, audio_dir = folder / "video", folder / "audio"
    for name_split in chosen:
        corpus = corpora[f"{name_split}_corpus"]
        if not isinstance(corpus, dict):
            found.error(None, None, f"{name_split}_corpus is not a name->label dict", "malformed")
            continue
        for raw_name, entry in corpus.items():
            clip_id = str(raw_name)
            found.add(
                None,
                clip_id,
                partial(_mer_clip, clip_id, entry, root, [video_dir], audio_dir, subtitles),
            )
    return ManifestLoad(
        layout="mer2024",
        source=label_file,
        root=root,
        split=split,
        splits=splits,
        clips=found.clips,
        errors=found.errors,
    )


def _load_mer2023(folder: Path, root: Path, split: str | None) -> ManifestLoad:
    splits = [name for name in MER2023_SPLITS if (folder / f"{name}-label.csv").is_file()]
    if split is not None and split not in splits:
        raise DataError(f"split {split!r} has no {split}-label.csv in {folder} (has: {splits})")
    chosen = [split] if split is not None else splits
    found = _Collector()
    subtitles = _read_transcriptions(folder, found)
    for name_split in chosen:
        label_file = folder / f"{name_split}-label.csv"
        found.file = label_file.name
        header, records = _read_csv_records(label_file)
        columns = _column_map(header, label_file)
        video_dirs = [folder / name_split, folder / "video", folder / "videos"]
        for line, fields, csv_error in records:
            clip_id = _field_text(fields, columns["name"])
            if csv_error is not None:
                found.error(line, clip_id, csv_error, "malformed")
                continue
            if _has_bad_bytes("".join(fields)):
                reason = "row is not valid UTF-8 (save the label file as UTF-8)"
                found.error(line, clip_id, reason, "encoding")
                continue
            entry = {
                "emo": _field_text(fields, columns["discrete"]) if "discrete" in columns else None,
                "val": _field_text(fields, columns["valence"]) if "valence" in columns else None,
            }
            found.add(
                line,
                clip_id,
                partial(_mer_clip, clip_id, entry, root, video_dirs, folder / "audio", subtitles),
            )
    return ManifestLoad(
        layout="mer2023",
        source=folder,
        root=root,
        split=split,
        splits=splits,
        clips=found.clips,
        errors=found.errors,
    )


def _mer_clip(
    name: Any,
    entry: Any,
    root: Path,
    video_dirs: list[Path],
    audio_dir: Path,
    subtitles: Mapping[str, str],
) -> Clip:
    clip_id = _check_name(name)
    if isinstance(entry, dict):
        emo, val = entry.get("emo"), entry.get("val")
    else:
        emo, val = entry, None
    discrete, valence = _label(emo), _valence(val)
    video = _find_video(clip_id, video_dirs)
    if video is None:
        where = " or ".join(str(d) for d in video_dirs)
        raise _RowProblem(f"video file not found: {clip_id}.<ext> in {where}", "missing_file")
    video = resolve_inside(root, video)
    audio = audio_dir / f"{clip_id}.wav"
    return Clip(
        id=clip_id,
        video=video,
        audio=resolve_inside(root, audio) if audio.is_file() else None,
        subtitle=subtitles.get(clip_id),
        language="zh",
        discrete=discrete,
        valence=valence,
    )


def _read_transcriptions(folder: Path, found: _Collector) -> dict[str, str]:
    """name -> subtitle from the first transcription CSV present; bad rows become errors."""
    path = next((folder / n for n in TRANSCRIPTION_FILES if (folder / n).is_file()), None)
    if path is None:
        return {}
    try:
        header, records = _read_csv_records(path)
        columns = _column_map(header, path)
    except DataError as exc:
        # Subtitles are optional: a broken transcription file costs subtitles, not clips.
        found.errors.append(RowError(reason=str(exc), kind="malformed", file=path.name))
        return {}
    if "subtitle" not in columns:
        return {}
    subtitles: dict[str, str] = {}
    for line, fields, csv_error in records:
        if csv_error is not None or len(fields) <= max(columns["name"], columns["subtitle"]):
            continue
        name = _printable(fields[columns["name"]]).strip()
        text = fields[columns["subtitle"]]
        if _has_bad_bytes(text):
            # The clip itself is fine: it loads without a subtitle, and the row is reported.
            found.errors.append(
                RowError(
                    row=line,
                    clip_id=name,
                    reason="subtitle is not valid UTF-8 (save the transcription as UTF-8)",
                    kind="encoding",
                    file=path.name,
                )
            )
            continue
        if text.strip() and text.strip().lower() != "nan":
            subtitles[name] = text.strip()
    return subtitles


# ---------------------------------------------------------------------------- label npz


#: The only globals a MER label file's pickles may reference: numpy's array rebuilders.
_LABEL_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _LabelUnpickler(pickle.Unpickler):
    """Unpickles only plain data plus numpy arrays/scalars; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _LABEL_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module.removeprefix("numpy.core")  # numpy 1 pickles
        return super().find_class(module, name)


def read_label_npz(path: Path) -> dict[str, Any]:
    """Read MER's ``label-6way.npz``: each key -> its value (``<split>_corpus`` dicts).

    MER stores each corpus as a pickled 0-d object array, which ``np.load`` only reads with
    ``allow_pickle=True`` — that would run any code a tampered file carries. Instead the
    pickled members are read with an unpickler that accepts numpy arrays, numpy scalars and
    plain Python data only, so a downloaded label file cannot execute anything.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"label file {path} is not a readable .npz: {exc}") from None
    result: dict[str, Any] = {}
    with archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as handle:
                try:
                    value = _read_npy_member(handle)
                except (ValueError, pickle.UnpicklingError, EOFError) as exc:
                    raise DataError(f"label file {path}: cannot read {member}: {exc}") from None
            result[member.removesuffix(".npy")] = value
    return result


def _read_npy_member(handle: Any) -> Any:
    fmt = np.lib.format
    version = fmt.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = fmt.read_array_header_2_0(handle)
    if dtype.hasobject:
        array = _LabelUnpickler(handle).load()
        if not isinstance(array, np.ndarray):
            raise ValueError("pickled member is not an array")
        return array.item() if array.ndim == 0 else array.tolist()
    count = int(np.prod(shape)) if shape else 1
    data = np.frombuffer(handle.read(count * dtype.itemsize), dtype=dtype, count=count)
    return data.reshape(shape, order="F" if fortran else "C").copy()


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
