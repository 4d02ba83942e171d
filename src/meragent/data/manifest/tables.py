"""The ``csv`` and ``jsonl`` layouts: a manifest file with one row per clip.

Columns (any alias of ``rows.COLUMN_ALIASES``): name, video, audio, subtitle, language, discrete,
valence, openset (a Python-list string or a JSON list), split. Relative paths resolve against
the data root (``data_root`` when given, else the manifest's folder) and must stay inside it.
A ``.json`` file may also hold one JSON array of row objects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from meragent.data.manifest.csv_records import CsvRecord, has_bad_bytes, read_csv_records
from meragent.data.manifest.rows import (
    COLUMN_ALIASES,
    SUBTITLE_COLUMNS,
    Collector,
    ManifestLoad,
    RowProblem,
    Wanted,
    check_name,
    clean_text,
    column_map,
    existing_file,
    field_text,
    find_video,
    openset_cell,
    parse_label,
    parse_valence,
    resolve_inside,
)
from meragent.errors import DataError
from meragent.schema import Clip

#: A folder holding one of these is read through it (``meragent data synth`` writes the first).
MANIFEST_FILES: tuple[str, ...] = ("manifest.csv", "manifest.jsonl")
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv")
JSON_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson", ".json")
_NAME_IN_JSON = re.compile(r'"name"\s*:\s*"([^"]*)"')


def load_table(path: Path, root: Path, split: str | None, want: Wanted) -> ManifestLoad:
    header, records = read_csv_records(path)
    columns = column_map(header, path, want.subtitle_column)
    if split is not None and "split" not in columns:
        raise DataError(f"--split {split!r} given but manifest {path} has no 'split' column")
    found = Collector(path.name)
    transcript_columns = {
        lang: header.index(col) for lang, col in SUBTITLE_COLUMNS.items() if col in header
    }
    for record in records:
        clip_id = field_text(record.fields, columns["name"])
        problem = _table_row_problem(header, record)
        if problem is not None:
            found.error(record.line, clip_id, problem.reason, problem.kind)
            continue
        fields = record.fields
        values: dict[str, Any] = {
            f: fields[i] if i < len(fields) else "" for f, i in columns.items()
        }
        values["transcripts"] = {
            lang: fields[i] for lang, i in transcript_columns.items() if i < len(fields)
        }
        if split is not None and values.get("split", "").strip() != split:
            continue
        found.add(record.line, clip_id, partial(_clip_from_fields, values, root, want))
    return found.load("csv", path, root, split)


def _table_row_problem(header: list[str], record: CsvRecord) -> RowProblem | None:
    """Why a CSV record cannot be read as a row (before its values are looked at), if so."""
    if record.error is not None:
        return RowProblem(record.error, "malformed")
    if len(record.fields) > len(header):
        reason = f"malformed row: {len(record.fields)} fields, header has {len(header)}"
        return RowProblem(reason, "malformed")
    bad = [h for h, value in zip(header, record.fields, strict=False) if has_bad_bytes(value)]
    if bad:
        reason = f"{', '.join(bad)} is not valid UTF-8 (save the manifest as UTF-8)"
        return RowProblem(reason, "encoding")
    return None


def load_jsonl(path: Path, root: Path, split: str | None, want: Wanted) -> ManifestLoad:
    found = Collector(path.name)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for line, record in _json_records(path, data, found):
        if not isinstance(record, dict):
            found.error(line, None, "malformed row: not a JSON object", "malformed")
            continue
        values = {
            field: next((record[a] for a in aliases if a in record), None)
            for field, aliases in COLUMN_ALIASES.items()
        }
        if want.subtitle_column is not None:
            values["subtitle"] = record.get(want.subtitle_column)
        values["transcripts"] = {
            lang: record[col] for lang, col in SUBTITLE_COLUMNS.items() if col in record
        }
        if split is not None and str(values.get("split") or "") != split:
            continue
        clip_id = clean_text(values["name"])
        found.add(line, clip_id, partial(_clip_from_fields, values, root, want))
    return found.load("jsonl", path, root, split)


def _json_records(path: Path, data: bytes, found: Collector) -> Iterator[tuple[int, Any]]:
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


def _clip_from_fields(values: Mapping[str, Any], root: Path, want: Wanted) -> Clip:
    name = check_name(values.get("name"))
    # Labels first: they are checked without touching the disk.
    discrete = parse_label(values.get("discrete"))
    valence = parse_valence(values.get("valence"))
    openset = openset_cell(values.get("openset"))
    video_value = clean_text(values.get("video"))
    audio_value = clean_text(values.get("audio"))
    audio = existing_file(resolve_inside(root, audio_value), "audio") if audio_value else None
    subtitle = clean_text(values.get("subtitle"))
    if video_value is not None:
        video: Path | None = existing_file(resolve_inside(root, video_value), "video")
    else:
        video = find_video(name, [root, root / "video", root / "videos"])
        # No video named and none found: an audio-only or text-only clip is still a clip, and
        # so is a labels-only one when the caller reads features instead of media.
        if video is None and audio is None and subtitle is None and want.media == "required":
            raise RowProblem(
                f"no video, audio or subtitle given and no {name}.<ext> video in {root}",
                "missing_file",
            )
    return Clip(
        id=name,
        video=video,
        audio=audio,
        subtitle=subtitle,
        language=clean_text(values.get("language")) or want.subtitle_language,
        transcripts=_transcripts(values.get("transcripts") or {}),
        discrete=discrete,
        valence=valence,
        openset=openset,
    )


def _transcripts(by_language: Mapping[str, Any]) -> dict[str, str]:
    """The row's ``chinese``/``english`` columns by language (see ``Clip.transcripts``)."""
    texts = {lang: clean_text(value) for lang, value in by_language.items()}
    return {lang: text for lang, text in texts.items() if text}
