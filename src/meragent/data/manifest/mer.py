"""The MER layouts: a processed folder (``label-6way.npz``) and the release (``*-label.csv``).

* ``mer2024`` — a processed folder: ``video/``, optional ``audio/*.wav``, ``label-6way.npz``
  (``<split>_corpus`` dicts name -> {'emo': ..., 'val': ...}) and an optional transcription CSV
  (``transcription-merge.csv`` name,chinese; MERTools' MER2023 ``transcription-engchi-polish.csv``
  name,chinese,english). MER2023's processed folder has the same shape.
* ``mer2023`` — the release: ``train-label.csv`` / ``test{1,2,3}-label.csv`` (name,discrete,valence;
  valence -10 = missing) with videos in ``<split>/`` or ``video/`` beside them.

A clip's video is looked up as ``<name>.<ext>``; when it is not found the row is an error, or a
clip without media when the caller reads features instead (``Wanted.media == "optional"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from meragent.data.manifest.csv_records import CsvRecord, has_bad_bytes, printable, read_csv_records
from meragent.data.manifest.label_npz import read_label_npz
from meragent.data.manifest.rows import (
    SUBTITLE_COLUMNS,
    Collector,
    ManifestLoad,
    MediaPolicy,
    RowError,
    RowProblem,
    Wanted,
    check_name,
    column_map,
    field_text,
    find_video,
    parse_label,
    parse_valence,
    resolve_inside,
)
from meragent.errors import DataError
from meragent.schema import Clip

MER_LABEL_FILE = "label-6way.npz"
#: Transcription files of MER processed folders, most specific first.
TRANSCRIPTION_FILES: tuple[str, ...] = (
    "transcription-merge.csv",
    "transcription_merge.csv",
    "transcription-engchi-polish.csv",  # MERTools' MER2023 release: name, chinese, english
    "transcription.csv",
)
MER2023_SPLITS: tuple[str, ...] = ("train", "test1", "test2", "test3")


@dataclass(frozen=True)
class _MerFiles:
    """Where a MER layout keeps a clip's media, and whether the clip needs it."""

    root: Path
    video_dirs: list[Path]
    audio_dir: Path
    media: MediaPolicy


def load_mer_processed(
    label_file: Path, root: Path, split: str | None, want: Wanted
) -> ManifestLoad:
    folder = label_file.parent
    corpora = read_label_npz(label_file)
    splits = [key.removesuffix("_corpus") for key in corpora if key.endswith("_corpus")]
    if not splits:
        raise DataError(f"{label_file} holds no '<split>_corpus' entry (keys: {list(corpora)})")
    if split is not None and split not in splits:
        raise DataError(f"split {split!r} not in {label_file} (has: {', '.join(splits)})")
    chosen = [split] if split is not None else splits
    found = Collector(label_file.name)
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
    return found.load("mer2024", label_file, root, split, splits)


def load_mer2023(folder: Path, root: Path, split: str | None, want: Wanted) -> ManifestLoad:
    splits = [name for name in MER2023_SPLITS if (folder / f"{name}-label.csv").is_file()]
    if split is not None and split not in splits:
        raise DataError(f"split {split!r} has no {split}-label.csv in {folder} (has: {splits})")
    chosen = [split] if split is not None else splits
    found = Collector()
    subtitles = _read_transcriptions(folder, found, want.subtitle_column)
    for name_split in chosen:
        label_file = folder / f"{name_split}-label.csv"
        found.file = label_file.name
        header, records = read_csv_records(label_file)
        columns = column_map(header, label_file)
        video_dirs = [folder / name_split, folder / "video", folder / "videos"]
        files = _MerFiles(root, video_dirs, folder / "audio", want.media)
        for record in records:
            fields = record.fields
            clip_id = field_text(fields, columns["name"])
            if record.error is not None:
                found.error(record.line, clip_id, record.error, "malformed")
                continue
            if has_bad_bytes("".join(fields)):
                reason = "row is not valid UTF-8 (save the label file as UTF-8)"
                found.error(record.line, clip_id, reason, "encoding")
                continue
            entry = {
                "emo": field_text(fields, columns["discrete"]) if "discrete" in columns else None,
                "val": field_text(fields, columns["valence"]) if "valence" in columns else None,
            }
            found.add(record.line, clip_id, partial(_mer_clip, clip_id, entry, files, subtitles))
    return found.load("mer2023", folder, root, split, splits)


def _mer_clip(name: Any, entry: Any, files: _MerFiles, subtitles: Transcripts) -> Clip:
    clip_id = check_name(name)
    if isinstance(entry, dict):
        emo, val = entry.get("emo"), entry.get("val")
    else:
        emo, val = entry, None
    discrete, valence = parse_label(emo), parse_valence(val)
    video = find_video(clip_id, files.video_dirs)
    if video is None and files.media == "required":
        where = " or ".join(str(d) for d in files.video_dirs)
        raise RowProblem(f"video file not found: {clip_id}.<ext> in {where}", "missing_file")
    audio = files.audio_dir / f"{clip_id}.wav"
    return Clip(
        id=clip_id,
        video=resolve_inside(files.root, video) if video is not None else None,
        audio=resolve_inside(files.root, audio) if audio.is_file() else None,
        subtitle=subtitles.texts.get(clip_id),
        language=subtitles.language,
        transcripts=subtitles.of_clip(clip_id),
        discrete=discrete,
        valence=valence,
    )


@dataclass(frozen=True)
class Transcripts:
    """Subtitles of a MER folder (name -> text) and their language."""

    texts: dict[str, str]
    language: str = "zh"
    #: language -> name -> text, for every transcript column the file has.
    by_language: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def of_clip(self, name: str) -> dict[str, str]:
        return {lang: texts[name] for lang, texts in self.by_language.items() if name in texts}


#: Transcript column -> language code; MER's text is Chinese unless the column says otherwise.
_TRANSCRIPT_LANGUAGES = {"english": "en"}


def _read_transcriptions(
    folder: Path, found: Collector, subtitle_column: str | None = None
) -> Transcripts:
    """Subtitles from the first transcription CSV present; bad rows become errors."""
    path = next((folder / n for n in TRANSCRIPTION_FILES if (folder / n).is_file()), None)
    if path is None:
        return Transcripts({})
    try:
        header, records = read_csv_records(path)
        columns = column_map(header, path, subtitle_column)
    except DataError as exc:
        # Subtitles are optional: a broken transcription file costs subtitles, not clips.
        found.errors.append(RowError(reason=str(exc), kind="malformed", file=path.name))
        return Transcripts({})
    if "subtitle" not in columns:
        return Transcripts({})
    language = _TRANSCRIPT_LANGUAGES.get(header[columns["subtitle"]], "zh")
    subtitles: dict[str, str] = {}
    others = {lang: header.index(col) for lang, col in SUBTITLE_COLUMNS.items() if col in header}
    by_language: dict[str, dict[str, str]] = {lang: {} for lang in others}
    for record in records:
        problem = _transcript_problem(record, columns)
        if problem is not None:
            # The clip itself is fine: it loads without a subtitle, and the row is reported.
            name = field_text(record.fields, columns["name"])
            found.error(record.line, name, problem.reason, problem.kind, file=path.name)
            continue
        if len(record.fields) <= max(columns["name"], columns["subtitle"]):
            continue
        name = printable(record.fields[columns["name"]]).strip()
        text = _transcript_text(record.fields, columns["subtitle"])
        if text is not None:
            subtitles[name] = text
        for lang, index in others.items():
            other = _transcript_text(record.fields, index)
            if other is not None:
                by_language[lang][name] = other
    return Transcripts(subtitles, language, by_language)


def _transcript_text(fields: list[str], index: int) -> str | None:
    text = fields[index].strip() if index < len(fields) else ""
    return text if text and text.lower() != "nan" else None


def _transcript_problem(record: CsvRecord, columns: Mapping[str, int]) -> RowProblem | None:
    if record.error is not None:
        return RowProblem(f"{record.error} (its subtitle is not used)", "malformed")
    index = columns["subtitle"]
    if index < len(record.fields) and has_bad_bytes(record.fields[index]):
        reason = "subtitle is not valid UTF-8 (save the transcription as UTF-8)"
        return RowProblem(reason, "encoding")
    return None
