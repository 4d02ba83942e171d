"""The registry of manifest layouts: each one says whether it reads a path and how to load it.

A ``Layout`` is a name, a ``detect(path)`` that returns what its loader reads (the path itself,
or a file inside a folder) or ``None``, and a ``load(target, root, split, want)``. The registry
tries its layouts in priority order and the first that detects the path reads it, so a MER
folder that also holds a ``manifest.csv`` is read as MER, and a plain folder is the last resort
for folders. ``LAYOUTS`` holds the built-in ones; ``LayoutRegistry.register`` adds another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meragent.data.manifest.folders import load_single_video, load_video_folder
from meragent.data.manifest.mer import (
    MER2023_SPLITS,
    MER_LABEL_FILE,
    load_mer2023,
    load_mer_processed,
)
from meragent.data.manifest.rows import ManifestLoad, Wanted
from meragent.data.manifest.tables import (
    JSON_SUFFIXES,
    MANIFEST_FILES,
    TABLE_SUFFIXES,
    load_jsonl,
    load_table,
)
from meragent.data.media import VIDEO_EXTENSIONS
from meragent.errors import DataError

Detect = Callable[[Path], Path | None]
Load = Callable[[Path, Path, str | None, Wanted], ManifestLoad]


@dataclass(frozen=True)
class Layout:
    """One way clips are laid out on disk; ``reads`` names it in error messages."""

    name: str
    detect: Detect
    load: Load
    reads: str


@dataclass
class LayoutRegistry:
    """Layouts by name, tried in the order they were registered."""

    _layouts: dict[str, Layout] = field(default_factory=dict)

    def register(self, layout: Layout, *, before: str | None = None) -> None:
        """Add ``layout`` last, or just before the layout named ``before``."""
        if layout.name in self._layouts:
            raise ValueError(f"manifest layout {layout.name!r} is already registered")
        if before is not None and before not in self._layouts:
            raise ValueError(f"no manifest layout {before!r} to register {layout.name!r} before")
        items = list(self._layouts.items())
        at = len(items) if before is None else [name for name, _ in items].index(before)
        items.insert(at, (layout.name, layout))
        self._layouts = dict(items)

    def names(self) -> tuple[str, ...]:
        return tuple(self._layouts)

    def get(self, name: str) -> Layout:
        try:
            return self._layouts[name]
        except KeyError:
            known = ", ".join(self._layouts)
            raise DataError(f"unknown manifest layout {name!r} (known: {known})") from None

    def detect(self, path: Path) -> tuple[Layout, Path]:
        """The first layout that reads ``path``, and the target its loader is given."""
        for layout in self._layouts.values():
            target = layout.detect(path)
            if target is not None:
                return layout, target
        expected = ", ".join(layout.reads for layout in self._layouts.values())
        raise DataError(f"cannot read {path}: expected {expected}")


def _mer_processed(path: Path) -> Path | None:
    if path.is_dir():
        label_file = path / MER_LABEL_FILE
        return label_file if label_file.is_file() else None
    return path if path.name == MER_LABEL_FILE or path.suffix.lower() == ".npz" else None


def _mer_release(path: Path) -> Path | None:
    if path.is_dir() and any((path / f"{n}-label.csv").is_file() for n in MER2023_SPLITS):
        return path
    return None


def _manifest_file(suffixes: tuple[str, ...]) -> Detect:
    """A file with one of ``suffixes``, or a folder's own manifest file of that kind."""

    def detect(path: Path) -> Path | None:
        if path.is_dir():
            inside = (path / name for name in MANIFEST_FILES)
            return next((f for f in inside if f.suffix in suffixes and f.is_file()), None)
        return path if path.suffix.lower() in suffixes else None

    return detect


def _folder(path: Path) -> Path | None:
    return path if path.is_dir() else None


def _video_file(path: Path) -> Path | None:
    return path if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS else None


def builtin_layouts() -> LayoutRegistry:
    """The layouts ``load_manifest`` knows, most specific first."""
    registry = LayoutRegistry()
    for layout in (
        Layout("mer2024", _mer_processed, load_mer_processed, f"a {MER_LABEL_FILE} or its folder"),
        Layout("mer2023", _mer_release, load_mer2023, "a folder of <split>-label.csv"),
        Layout("csv", _manifest_file(TABLE_SUFFIXES), load_table, "a .csv/.tsv manifest"),
        Layout("jsonl", _manifest_file(JSON_SUFFIXES), load_jsonl, "a .jsonl/.json manifest"),
        Layout("folder", _folder, load_video_folder, "a folder of videos"),
        Layout("video", _video_file, load_single_video, f"a video ({', '.join(VIDEO_EXTENSIONS)})"),
    ):
        registry.register(layout)
    return registry


#: The registry ``load_manifest`` uses.
LAYOUTS = builtin_layouts()
