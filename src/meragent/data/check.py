"""Validate a clip source and summarise it: counts, class histogram, missing files, bad rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

from meragent.data.manifest import ManifestLoad, MediaPolicy, RowError, load_manifest
from meragent.data.media import probe_media
from meragent.errors import MediaError, one_line
from meragent.schema import EMOTIONS

#: Histogram key for clips without a six-class label (e.g. test splits).
UNLABELED = "unlabeled"


class CheckReport(BaseModel):
    """What ``meragent data check`` found in one source."""

    source: str
    layout: str
    media: MediaPolicy = "required"
    split: str | None = None
    splits: list[str] = Field(default_factory=list)
    n_clips: int
    n_errors: int
    class_histogram: dict[str, int]
    n_with_video: int = 0
    n_with_subtitle: int = 0
    n_with_openset: int = 0
    n_with_valence: int = 0
    n_with_audio_file: int = 0
    n_without_media: int = 0
    n_probed: int = 0
    missing_files: list[str] = Field(default_factory=list)
    errors: list[RowError] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_source(
    source: Path | str,
    *,
    data_root: Path | None = None,
    split: str | None = None,
    probe: bool = False,
    media: MediaPolicy = "required",
) -> CheckReport:
    """Load ``source`` like the pipeline would and report what is usable and what is not.

    ``media="optional"`` checks it for the uses that read cached features instead of media
    (``fusion``, text features): rows without media are clips then, counted in
    ``n_without_media``. ``probe`` also opens every video's header (no decoding) and reports
    files that are empty, unreadable or have no stream; those clips count as errors.
    """
    load = load_manifest(source, data_root=data_root, split=split, media=media)
    errors = list(load.errors)
    clips = load.clips
    if probe:
        probe_errors = _probe_clips(load)
        bad_ids = {error.clip_id for error in probe_errors}
        clips = [clip for clip in clips if clip.id not in bad_ids]
        errors.extend(probe_errors)
    return CheckReport(
        source=str(load.source),
        layout=load.layout,
        media=media,
        split=load.split,
        splits=load.splits,
        n_clips=len(clips),
        n_errors=len(errors),
        class_histogram=class_histogram([clip.discrete for clip in clips]),
        n_with_video=sum(clip.video is not None for clip in clips),
        n_with_subtitle=sum(clip.subtitle is not None for clip in clips),
        n_with_openset=sum(clip.openset is not None for clip in clips),
        n_with_valence=sum(clip.valence is not None for clip in clips),
        n_with_audio_file=sum(clip.audio is not None for clip in clips),
        n_without_media=sum(clip.video is None and clip.audio is None for clip in clips),
        n_probed=len(load.clips) if probe else 0,
        missing_files=[e.reason for e in errors if e.kind == "missing_file"],
        errors=errors,
    )


def class_histogram(labels: list[str | None]) -> dict[str, int]:
    """Counts per six-class label in MERTools' order, then ``unlabeled`` for ``None``."""
    counts = Counter(label if label is not None else UNLABELED for label in labels)
    return {name: counts.get(name, 0) for name in (*EMOTIONS, UNLABELED)}


def _probe_clips(load: ManifestLoad) -> list[RowError]:
    errors = []
    for clip in load.clips:
        path = clip.video or clip.audio
        if path is None:
            continue  # a text-only clip has no file to open
        try:
            probe_media(path, clip_id=clip.id)
        except MediaError as exc:
            reason = one_line(exc).removeprefix(f"clip {clip.id!r}: ")
            errors.append(RowError(clip_id=clip.id, reason=reason, kind="unreadable_media"))
    return errors
