"""Feature cache in MERTools' layout, ``<root>/<feature>/<clip>.npy`` (float32, shape (D,)).

The vectors stay plain ``.npy`` files, so MERTools folders can be dropped in and ours read by
MERTools. Beside the vectors, a folder we write records what produced them, so that a cached
vector is reused only for the same request:

* ``_meta.json``: the model (full hub id or resolved path) and the recipe that changes the
  vectors (layers, pooling, frames, sample rate, ...). A request with another model or recipe
  under the same folder name raises :class:`FeatureConflictError` naming both; it never gets
  the old vectors.
* ``.<clip>.src.json``: what that clip's vector was computed from (its media files' path,
  size and mtime, or its text's hash), plus the recipe's and the vector's digests. A clip whose
  media is another file (a MER-NOISE copy of the same name) or has changed is recomputed.

Why one small record per clip rather than one index file per folder: each record is written
atomically (temporary file + rename) after its vector, so the threads of a batch, several
processes and Ray workers on a shared filesystem need no lock and cannot lose each other's
entries; a record that lost a race to another writer's vector fails the vector-digest check and
the clip is simply recomputed. ``_meta.json`` is created exclusively (hard link), so the first
writer's recipe wins and a different one is told.

A folder holding ``.npy`` files and no ``_meta.json`` (MERTools, or an older meragent) is read
as it is: there is nothing to compare against. So is any vector looked up without a source (a
clip with no media file, e.g. training from labels and features only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict, Unpack

import numpy as np

from meragent.errors import ConfigError, DataError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
META_FILE = "_meta.json"
PRODUCER = "meragent"
META_FORMAT = 1


class FeatureConflictError(ConfigError):
    """A feature folder holds vectors of another model or recipe than the one requested."""


class HasMedia(Protocol):
    """What :meth:`SourceStamp.of_clip` needs from a clip."""

    @property
    def video(self) -> Path | None: ...

    @property
    def audio(self) -> Path | None: ...


class ClipLike(HasMedia, Protocol):
    """What :meth:`FeatureCache.lookup_clip` needs from a clip."""

    @property
    def id(self) -> str: ...

    @property
    def subtitle(self) -> str | None: ...

    @property
    def transcripts(self) -> Mapping[str, str]: ...


def _checked_name(kind: str, name: str) -> str:
    if not _SAFE_NAME.match(name) or ".." in name:
        raise DataError(f"invalid {kind} name for the feature cache: {name!r}")
    return name


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _vector_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class FeatureRecipe:
    """What produced a feature folder: the model's full id or resolved path, and its settings."""

    model: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: What each vector is computed from: the clip's ``media`` files or its ``text``.
    input: str = "media"

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input": self.input,
            "recipe": {key: self.settings[key] for key in sorted(self.settings)},
        }

    @property
    def digest(self) -> str:
        return _digest(self.as_json())

    def describe(self) -> str:
        parts = ", ".join(f"{key}={value}" for key, value in sorted(self.settings.items()))
        return f"{self.model} ({parts})" if parts else self.model


@dataclass(frozen=True)
class SourceStamp:
    """What one vector was computed from: media files (path, size, mtime) or a text's hash."""

    record: Mapping[str, Any]

    @classmethod
    def of_files(cls, paths: Iterable[Path | str]) -> SourceStamp | None:
        """A stamp of these files as they are now; None when there is no file at all."""
        entries: list[dict[str, Any]] = []
        for path in paths:
            resolved = Path(path).expanduser().resolve()
            try:
                stat = resolved.stat()
            except OSError:
                entries.append({"path": str(resolved), "missing": True})
                continue
            entries.append(
                {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            )
        return cls({"files": entries}) if entries else None

    @classmethod
    def of_clip(cls, clip: HasMedia) -> SourceStamp | None:
        """The clip's video and audio files; None for a clip without media (nothing to check)."""
        return cls.of_files(path for path in (clip.video, clip.audio) if path is not None)

    @classmethod
    def of_text(cls, text: str) -> SourceStamp:
        return cls({"text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()})


class Wanted(TypedDict, total=False):
    """What a cached vector must have been made from (``source``: the clip's media or text)
    and by (``recipe``), as :meth:`FeatureCache.has`, ``lookup`` and ``load`` take it; either
    may be None (not checked)."""

    source: SourceStamp | None
    recipe: FeatureRecipe | None


@dataclass
class FolderInfo:
    """One feature folder as ``meragent features check`` lists it."""

    name: str
    vectors: int
    dims: list[int]
    provenance: str  # "meragent" (has _meta.json), "plain" (MERTools, no record) or "empty"
    recipe: FeatureRecipe | None = None
    with_source: int = 0
    unreadable: list[str] = field(default_factory=list)


def _atomic_write_bytes(target: Path, write: Any) -> None:
    """Write via a uniquely named temporary file + rename: readers never see half a file."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as handle:
            write(handle)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(target: Path, text: str) -> None:
    """Create ``target`` with ``text`` unless it exists (then the existing one is kept)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            os.link(tmp, target)  # atomic create-if-absent, file complete before it appears
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: a rename is still atomic
            if not target.exists():
                os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _has_vectors(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(
                entry.name.endswith(".npy") and not entry.name.startswith(".") for entry in entries
            )
    except (FileNotFoundError, NotADirectoryError):
        return False


def _conflict(folder: Path, recorded: FeatureRecipe, requested: FeatureRecipe) -> str:
    return (
        f"feature folder {folder} holds vectors made by {recorded.describe()}; this request "
        f"uses {requested.describe()}. Use another feature name (role option feature_name, or "
        "--feature-name) or remove that folder"
    )


class FeatureCache:
    """Read and write one vector per (feature folder, clip), checked against its provenance."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._recipes: dict[str, FeatureRecipe] = {}
        self._plain: set[str] = set()

    def folder(self, encoder: str) -> Path:
        return self.root / _checked_name("encoder", encoder)

    def path(self, encoder: str, clip_id: str) -> Path:
        return self.folder(encoder) / f"{_checked_name('clip', clip_id)}.npy"

    def _record_path(self, encoder: str, clip_id: str) -> Path:
        return self.folder(encoder) / f".{_checked_name('clip', clip_id)}.src.json"

    # ------------------------------------------------------------------ provenance

    def recipe_of(self, encoder: str) -> FeatureRecipe | None:
        """The recipe recorded in the folder's ``_meta.json``; None when it has none."""
        if encoder in self._recipes:
            return self._recipes[encoder]
        meta_path = self.folder(encoder) / META_FILE
        try:
            data = json.loads(meta_path.read_text(encoding="utf-8"))
            settings = dict(data.get("recipe") or {})
            recipe = FeatureRecipe(str(data["model"]), settings, str(data.get("input", "media")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"unreadable feature metadata {meta_path}: {exc}; remove it") from exc
        self._recipes[encoder] = recipe
        return recipe

    def is_plain(self, encoder: str) -> bool:
        """True for a folder with vectors but no ``_meta.json`` (e.g. dropped in from MERTools)."""
        if encoder in self._plain:
            return True
        # Vectors first, then the metadata: a writer of ours creates _meta.json before its
        # first vector, so a folder seen with vectors and then without metadata is plain. The
        # other order raced: no metadata yet, then another first writer's metadata and vector
        # landed, and this writer took a freshly claimed folder for a plain one.
        if _has_vectors(self.folder(encoder)) and self.recipe_of(encoder) is None:
            self._plain.add(encoder)  # a plain folder stays plain: we never add metadata to it
            return True
        return False

    def check_recipe(self, encoder: str, recipe: FeatureRecipe) -> None:
        """Raise :class:`FeatureConflictError` when the folder was made by another recipe."""
        recorded = self.recipe_of(encoder)
        if recorded is not None and recorded.digest != recipe.digest:
            raise FeatureConflictError(_conflict(self.folder(encoder), recorded, recipe))

    def _claim(self, encoder: str, recipe: FeatureRecipe) -> FeatureRecipe | None:
        """Record ``recipe`` for a new folder (first writer wins) or check the recorded one.

        Returns the folder's recipe, or None for a plain folder (written as it is).
        """
        self.check_recipe(encoder, recipe)
        meta_path = self.folder(encoder) / META_FILE
        if encoder in self._recipes and meta_path.is_file():
            return self._recipes[encoder]
        self._recipes.pop(encoder, None)  # the folder was removed meanwhile: claim it again
        if self.is_plain(encoder):
            return None
        meta = {"producer": PRODUCER, "format": META_FORMAT, **recipe.as_json()}
        _create_exclusive(meta_path, json.dumps(meta, indent=2, default=str) + "\n")
        self.check_recipe(encoder, recipe)  # another writer may have claimed it first
        return self.recipe_of(encoder)

    # ------------------------------------------------------------------ vectors

    def has(self, encoder: str, clip_id: str, **wanted: Unpack[Wanted]) -> bool:
        """Whether :meth:`lookup` finds a vector (any stored one when nothing is wanted)."""
        if wanted.get("source") is None and wanted.get("recipe") is None:
            return self.path(encoder, clip_id).is_file()
        return self.lookup(encoder, clip_id, **wanted) is not None

    def lookup(self, encoder: str, clip_id: str, **wanted: Unpack[Wanted]) -> np.ndarray | None:
        """The cached vector if it was made from ``source`` by ``recipe``, else None.

        Raises :class:`FeatureConflictError` when the folder records another recipe. Plain
        folders and lookups without a source return whatever vector is stored.
        """
        source, recipe = wanted.get("source"), wanted.get("recipe")
        recorded = self.recipe_of(encoder)
        if recorded is not None and recipe is not None and recorded.digest != recipe.digest:
            raise FeatureConflictError(_conflict(self.folder(encoder), recorded, recipe))
        path = self.path(encoder, clip_id)
        if not path.is_file():
            return None
        if recorded is None or source is None:
            return self._read(path, encoder, clip_id)
        record = self._read_record(encoder, clip_id)
        if record is None or record.get("recipe") != recorded.digest:
            return None
        if record.get("source") != dict(source.record):
            return None  # another media file, or this one changed since
        vector = self._read(path, encoder, clip_id)
        return vector if record.get("vector") == _vector_digest(vector) else None

    def lookup_clip(self, encoder: str, clip: ClipLike) -> np.ndarray | None:
        """The clip's vector unless the folder records that it was made from other media.

        For readers that take the folder as it is (any recipe), e.g. fusion training: the source
        is the clip's media files, or its subtitle for a text folder. A clip without media (or a
        text folder and no subtitle) and a plain folder get whatever vector is stored.
        """
        recorded = self.recipe_of(encoder)
        if recorded is not None and recorded.input == "text":
            return self._lookup_text(encoder, clip)
        source = SourceStamp.of_clip(clip) if recorded is not None else None
        return self.lookup(encoder, clip.id, source=source)

    def _lookup_text(self, encoder: str, clip: ClipLike) -> np.ndarray | None:
        """A text folder's vector if it was made from any of the clip's transcripts: a folder
        extracted with ``--subtitle-language en`` is read by a loader whose ``subtitle`` is
        the Chinese one."""
        texts = [clip.subtitle or "", *clip.transcripts.values()]
        stamps = [SourceStamp.of_text(t.strip()) for t in dict.fromkeys(texts) if t.strip()]
        if not stamps:
            return self.lookup(encoder, clip.id)
        for stamp in stamps:
            vector = self.lookup(encoder, clip.id, source=stamp)
            if vector is not None:
                return vector
        return None

    def _read_record(self, encoder: str, clip_id: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._record_path(encoder, clip_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # no record, or a damaged one: the vector cannot be vouched for
        return data if isinstance(data, dict) else None

    def save(
        self,
        encoder: str,
        clip_id: str,
        vector: np.ndarray,
        *,
        source: SourceStamp | None = None,
        recipe: FeatureRecipe | None = None,
    ) -> Path:
        """Write atomically, then (for a folder of ours) the record tying it to ``source``."""
        array = np.asarray(vector, dtype=np.float32)
        if array.ndim != 1:
            raise DataError(f"{encoder}/{clip_id}: feature must be 1-D, got shape {array.shape}")
        target = self.path(encoder, clip_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        recorded = self._claim(encoder, recipe) if recipe is not None else None
        _atomic_write_bytes(target, lambda handle: np.save(handle, array))
        record_path = self._record_path(encoder, clip_id)
        if recorded is None or source is None:
            record_path.unlink(missing_ok=True)  # no old record may vouch for this vector
            return target
        record = {"source": dict(source.record), "recipe": recorded.digest}
        record["vector"] = _vector_digest(array)
        text = json.dumps(record, sort_keys=True).encode("utf-8")
        _atomic_write_bytes(record_path, lambda handle: handle.write(text))
        return target

    def load(self, encoder: str, clip_id: str, **wanted: Unpack[Wanted]) -> np.ndarray:
        """Load one vector; MERTools files of shape (1, D) or (T, D) are mean-pooled to (D,).

        With ``source``/``recipe``, a vector made from other media or by another recipe raises
        ``DataError`` instead of being returned.
        """
        path = self.path(encoder, clip_id)
        if wanted.get("source") is None and wanted.get("recipe") is None:
            return self._read(path, encoder, clip_id)
        vector = self.lookup(encoder, clip_id, **wanted)
        if vector is not None:
            return vector
        if not path.is_file():
            raise FileNotFoundError(2, "no cached feature", str(path))
        raise DataError(f"{encoder}/{clip_id}: the cached vector was made from other media")

    @staticmethod
    def _read(path: Path, encoder: str, clip_id: str) -> np.ndarray:
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError) as exc:
            raise DataError(f"{encoder}/{clip_id}: unreadable feature file {path}: {exc}") from exc
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 2:
            array = array.mean(axis=0)
        if array.ndim != 1:
            raise DataError(f"{encoder}/{clip_id}: feature has shape {array.shape}, expected (D,)")
        return array

    # ------------------------------------------------------------------ listing

    def encoders(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def clip_ids(self, encoder: str) -> list[str]:
        folder = self.folder(encoder)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.npy") if not p.name.startswith("."))

    def missing(self, encoder: str, clip_ids: Iterable[str]) -> list[str]:
        return [clip for clip in clip_ids if not self.has(encoder, clip)]

    def describe(self, encoder: str) -> FolderInfo:
        """Vectors, dims and provenance of one folder (reads only the ``.npy`` headers)."""
        recipe = self.recipe_of(encoder)
        clips = self.clip_ids(encoder)
        dims: set[int] = set()
        unreadable: list[str] = []
        for clip in clips:
            try:
                shape = np.load(self.path(encoder, clip), mmap_mode="r", allow_pickle=False).shape
            except (ValueError, OSError):
                unreadable.append(clip)
                continue
            if len(shape) not in (1, 2):
                unreadable.append(clip)
                continue
            dims.add(int(shape[-1]))
        with_source = sum(1 for clip in clips if self._record_path(encoder, clip).is_file())
        provenance = "meragent" if recipe is not None else ("plain" if clips else "empty")
        return FolderInfo(
            encoder, len(clips), sorted(dims), provenance, recipe, with_source, unreadable
        )
