"""The ``folder`` and ``video`` layouts: a plain folder of videos, or one video file.

A folder's videos are its own files with a video extension, else those of its ``video/`` or
``videos/`` subfolder; ``audio/<name>.wav`` beside them is the clip's audio when present. Neither
layout has labels or splits.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from meragent.data.manifest.rows import (
    Collector,
    ManifestLoad,
    Wanted,
    check_name,
    reject_split,
    resolve_inside,
)
from meragent.data.media import VIDEO_EXTENSIONS
from meragent.errors import DataError
from meragent.schema import Clip


def load_video_folder(folder: Path, root: Path, split: str | None, want: Wanted) -> ManifestLoad:
    reject_split(split, "a folder of videos")
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
    return found.load("folder", folder, root)


def load_single_video(path: Path, root: Path, split: str | None, want: Wanted) -> ManifestLoad:
    reject_split(split, "a single video")
    found = Collector()
    found.add(None, path.stem, partial(_folder_clip, path, path.parent / "audio", root))
    return found.load("video", path, root)


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
