"""Read clip lists from the layouts MER data comes in, keeping good rows when some are bad.

Layouts (auto-detected by ``load_manifest``; the MER ones live in ``mer_layouts``, the row
checks shared by all in ``manifest_rows``, CSV record reading in ``csv_records``):

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

import json
import re
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, get_args

from meragent.data.csv_records import CsvRecord, has_bad_bytes, read_csv_records
from meragent.data.label_npz import read_label_npz
from meragent.data.manifest_rows import (
    COLUMN_ALIASES,
    SUBTITLE_COLUMNS,
    Collector,
    ManifestLoad,
    MediaPolicy,
    RowError,
    RowErrorKind,
    RowProblem,
    Wanted,
    absolute_path,
    check_name,
    clean_text,
    column_map,
    existing_file,
    field_text,
    find_video,
    parse_label,
    parse_valence,
    reject_split,
    resolve_inside,
)
from meragent.data.manifest_rows import (
    openset_cell as parse_openset,
)
from meragent.data.media import VIDEO_EXTENSIONS
from meragent.data.mer_layouts import (
    MER2023_SPLITS,
    MER_LABEL_FILE,
    TRANSCRIPTION_FILES,
    load_mer2023,
    load_mer_processed,
)
from meragent.errors import DataError
from meragent.schema import Clip

#: Re-exported: callers and tests import these from ``meragent.data.manifest``.
__all__ = [
    "MER2023_SPLITS",
    "MER_LABEL_FILE",
    "SUBTITLE_COLUMNS",
    "TRANSCRIPTION_FILES",
    "ManifestLoad",
    "MediaPolicy",
    "RowError",
    "RowErrorKind",
    "load_manifest",
    "parse_openset",
    "read_label_npz",
    "resolve_inside",
]

#: A folder holding one of these is read through it (``meragent data synth`` writes the first).
MANIFEST_FILES: tuple[str, ...] = ("manifest.csv", "manifest.jsonl")
_NAME_IN_JSON = re.compile(r'"name"\s*:\s*"([^"]*)"')


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
    want = Wanted(media, subtitle_language)
    # Absolute from here on, so every path a row yields can be checked against the root.
    path = absolute_path(Path(source).expanduser())
    if not path.exists():
        raise DataError(f"manifest source not found: {path}")
    root = absolute_path(Path(data_root).expanduser()) if data_root is not None else None
    if path.is_dir():
        root = root or path
        if (path / MER_LABEL_FILE).is_file():
            loaded = load_mer_processed(path / MER_LABEL_FILE, root, split, want)
        elif any((path / f"{name}-label.csv").is_file() for name in MER2023_SPLITS):
            loaded = load_mer2023(path, root, split, want)
        elif manifest := next((path / n for n in MANIFEST_FILES if (path / n).is_file()), None):
            loaded = _load_manifest_file(manifest, root, split, want)
        else:
            reject_split(split, "a folder of videos")
            loaded = _load_video_folder(path, root)
    else:
        loaded = _load_manifest_file(path, root or path.parent, split, want)
    return loaded.model_copy(update={"media": media})


def _load_manifest_file(path: Path, root: Path, split: str | None, want: Wanted) -> ManifestLoad:
    suffix = path.suffix.lower()
    if path.name == MER_LABEL_FILE or suffix == ".npz":
        return load_mer_processed(path, root, split, want)
    if suffix in (".csv", ".tsv"):
        return _load_table(path, root, split, want)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _load_jsonl(path, root, split, want)
    if suffix in VIDEO_EXTENSIONS:
        reject_split(split, "a single video")
        return _load_single_video(path, root)
    raise DataError(
        f"cannot read {path}: expected a folder, a .csv/.tsv/.jsonl/.json manifest, "
        f"a {MER_LABEL_FILE} or a video ({', '.join(VIDEO_EXTENSIONS)})"
    )


# ---------------------------------------------------------------------------- CSV / JSONL


def _load_table(path: Path, root: Path, split: str | None, want: Wanted) -> ManifestLoad:
    header, records = read_csv_records(path)
    columns = column_map(header, path, want.subtitle_column)
    if split is not None and "split" not in columns:
        raise DataError(f"--split {split!r} given but manifest {path} has no 'split' column")
    found = Collector(path.name)
    for record in records:
        clip_id = field_text(record.fields, columns["name"])
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


def _load_jsonl(path: Path, root: Path, split: str | None, want: Wanted) -> ManifestLoad:
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
        if split is not None and str(values.get("split") or "") != split:
            continue
        clip_id = clean_text(values["name"])
        found.add(line, clip_id, partial(_clip_from_fields, values, root, want))
    return ManifestLoad(
        layout="jsonl", source=path, root=root, split=split, clips=found.clips, errors=found.errors
    )


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
    openset = parse_openset(values.get("openset"))
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
        discrete=discrete,
        valence=valence,
        openset=openset,
    )


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
    found = Collector(folder.name)
    for video in videos:
        found.add(None, video.stem, partial(_folder_clip, video, folder / "audio", root))
    return ManifestLoad(
        layout="folder", source=folder, root=root, clips=found.clips, errors=found.errors
    )


def _folder_clip(video: Path, audio_dir: Path, root: Path) -> Clip:
    audio = audio_dir / f"{video.stem}.wav"
    return Clip(
        id=check_name(video.stem),
        video=resolve_inside(root, video),
        audio=resolve_inside(root, audio) if audio.is_file() else None,
    )


def _videos_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
    )


def _load_single_video(path: Path, root: Path) -> ManifestLoad:
    found = Collector()
    found.add(None, path.stem, partial(_folder_clip, path, path.parent / "audio", root))
    return ManifestLoad(
        layout="video", source=path, root=root, clips=found.clips, errors=found.errors
    )
