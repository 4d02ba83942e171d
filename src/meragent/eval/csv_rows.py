"""Read the rows of a UTF-8 CSV the eval files share (predictions, labels, wheel files)."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from meragent.errors import DataError


def read_rows(
    path: Path, required: Sequence[str], *, what: str = "file"
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line of the row's end, row) of a UTF-8 CSV; headers stripped, absent cells ``""``.

    A missing file or a missing ``required`` column is a DataError (``what`` names the file).
    """
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    with handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: {columns})")
        reader.fieldnames = columns
        for row in reader:
            yield reader.line_num, {k: (v or "") for k, v in row.items() if k is not None}
