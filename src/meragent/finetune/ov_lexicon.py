"""Lexicon baseline for MER-OV: the emotion words that literally occur in a description.

The lexicon is a word-forms CSV (``name,format``, the MER2025 emotion-wheel layout): every form
of a family ("happiness", "happily") is reported as the family's name ("happy"). Matching is
on whole words, longest phrase first, so "at a loss" wins over "loss". It reads English words
only: on Chinese descriptions it finds nothing, which the report shows as such.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from meragent.errors import DataError

_WORD = re.compile(r"[a-z]+(?:['’-][a-z]+)*")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def read_lexicon(path: Path) -> list[list[str]]:
    """Families ``[name, form, ...]`` from a word-forms CSV, single-form families included."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"word-forms file not found: {path}")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"name", "format"} <= set(reader.fieldnames or []):
            raise DataError(f"word-forms file {path}: needs columns 'name' and 'format'")
        families = []
        for row in reader:
            name = (row.get("name") or "").strip().lower()
            forms = [f.strip().lower() for f in (row.get("format") or "").split(",")]
            if name:
                families.append(list(dict.fromkeys([name, *(f for f in forms if f)])))
    if not families:
        raise DataError(f"word-forms file {path}: no rows")
    return families


class LexiconExtractor:
    """Finds lexicon phrases in text and maps each to its family's name."""

    def __init__(self, families: list[list[str]]) -> None:
        self._name_of: dict[tuple[str, ...], str] = {}
        for family in families:
            name = " ".join(_words(family[0]))
            for form in family:
                key = tuple(_words(form))
                if key and name:
                    # The first family listing a form keeps it, as the CSV is ordered by name.
                    self._name_of.setdefault(key, name)
        self._longest = max((len(key) for key in self._name_of), default=1)

    @classmethod
    def from_csv(cls, path: Path) -> LexiconExtractor:
        """Build from a ``name,format`` word-forms CSV (DataError when unreadable)."""
        return cls(read_lexicon(path))

    @property
    def size(self) -> int:
        return len(self._name_of)

    def extract(self, text: str) -> list[str]:
        """Family names of the lexicon phrases in ``text``, in order of first occurrence."""
        words = _words(text)
        found: dict[str, None] = {}
        position = 0
        while position < len(words):
            for length in range(min(self._longest, len(words) - position), 0, -1):
                name = self._name_of.get(tuple(words[position : position + length]))
                if name is not None:
                    found.setdefault(name, None)
                    position += length
                    break
            else:
                position += 1
        return list(found)
