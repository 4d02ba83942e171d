"""Read clip lists from the layouts MER data comes in, keeping good rows when some are bad.

Layouts (a registry in ``layouts``: each one detects the paths it reads and loads them; the
first that detects a path, in this order, reads it):

* ``mer2024`` — a processed folder: ``video/``, optional ``audio/*.wav``, ``label-6way.npz``
  (``<split>_corpus`` dicts name -> {'emo': ..., 'val': ...}) and an optional transcription CSV
  (``transcription-merge.csv`` name,chinese). MER2023's processed folder has the same shape.
* ``mer2023`` — the release: ``train-label.csv`` / ``test{1,2,3}-label.csv`` (name,discrete,valence;
  valence -10 = missing) with videos in ``<split>/`` or ``video/`` beside them. (Both: ``mer``.)
* ``csv`` / ``jsonl`` — a manifest with columns name, video, subtitle, language, discrete,
  valence, openset (a Python-list string or a JSON list); relative paths resolve against
  ``data_root`` when given, else against the manifest's folder. A folder holding a
  ``manifest.csv``/``manifest.jsonl`` (what ``meragent data synth`` writes) is read through it.
* ``folder`` — a plain folder of videos; ``video`` — a single video file (``folders``).

The row checks every layout shares live in ``rows``, CSV record reading in ``csv_records``.
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

from pathlib import Path
from typing import get_args

from meragent.data.manifest.label_npz import read_label_npz
from meragent.data.manifest.layouts import LAYOUTS, Layout, LayoutRegistry
from meragent.data.manifest.mer import MER2023_SPLITS, MER_LABEL_FILE, TRANSCRIPTION_FILES
from meragent.data.manifest.rows import (
    SUBTITLE_COLUMNS,
    ManifestLoad,
    MediaPolicy,
    RowError,
    RowErrorKind,
    Wanted,
    absolute_path,
    resolve_inside,
)
from meragent.data.manifest.rows import openset_cell as parse_openset
from meragent.errors import DataError

__all__ = [
    "LAYOUTS",
    "MER2023_SPLITS",
    "MER_LABEL_FILE",
    "SUBTITLE_COLUMNS",
    "TRANSCRIPTION_FILES",
    "Layout",
    "LayoutRegistry",
    "ManifestLoad",
    "MediaPolicy",
    "RowError",
    "RowErrorKind",
    "detect_layout",
    "load_manifest",
    "parse_openset",
    "read_label_npz",
    "resolve_inside",
]


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
    path = _existing_source(source)
    layout, target = LAYOUTS.detect(path)
    # Absolute from here on, so every path a row yields can be checked against the root.
    if data_root is not None:
        root = absolute_path(Path(data_root).expanduser())
    else:
        root = path if path.is_dir() else path.parent
    loaded = layout.load(target, root, split, Wanted(media, subtitle_language))
    return loaded.model_copy(update={"media": media})


def detect_layout(source: Path | str) -> str:
    """The name of the layout ``load_manifest`` would read ``source`` with."""
    return LAYOUTS.detect(_existing_source(source))[0].name


def _existing_source(source: Path | str) -> Path:
    path = absolute_path(Path(source).expanduser())
    if not path.exists():
        raise DataError(f"manifest source not found: {path}")
    return path
