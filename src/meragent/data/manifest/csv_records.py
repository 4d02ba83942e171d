"""Read the records of a CSV/TSV manifest so that one broken row cannot swallow the rows after it.

A field that opens a quote and never closes it (``bad,video/x.mp4,"oops no close,happy``) makes
a plain ``csv.reader`` read every later line into that field: the later clips silently vanish.
So each record is parsed on its own, with its physical line span. A record that runs over
several lines is kept only when it looks like a legitimate multi-line quoted field (MER
transcripts have some); it is judged broken when

* its quote is still open at the end of the file, or the text after the closing quote is not a
  delimiter (a strict parse fails), or
* the lines it swallowed are, on their own, well-formed rows with the header's column count.

A broken record is reported once, at the line where it starts, and reading restarts on the next
physical line, so the rows after it survive. Undecodable bytes survive as surrogates
(``surrogateescape``) so that the caller can judge each row's encoding on its own.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meragent.errors import DataError

#: One physical line with its terminator (``\r\n``, ``\n`` or ``\r``), as ``csv`` counts lines.
_PHYSICAL_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


_NEVER_CLOSED = "a quoted field is never closed (the file ends inside it)"


@dataclass(frozen=True)
class CsvRecord:
    """One record: the line it starts on (header = 1), its fields, or why it is unusable.

    An unusable record's ``fields`` are its first line read loosely: enough to name the clip.
    """

    line: int
    fields: list[str]
    error: str | None = None


def decode_lenient(data: bytes) -> str:
    """UTF-8 text where undecodable bytes survive as surrogates, so each row can be judged."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # BOM written by spreadsheet programs
    return data.decode("utf-8", errors="surrogateescape")


def has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def printable(text: str) -> str:
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def read_csv_records(path: Path) -> tuple[list[str], Iterator[CsvRecord]]:
    """Header (lower-cased) and every non-blank record of a CSV (``.tsv``: tab-separated)."""
    lines = _PHYSICAL_LINE.findall(decode_lenient(path.read_bytes()))
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    if not lines:
        raise DataError(f"manifest {path} is empty")
    header, used, error = _parse_record(lines, 0, delimiter)
    if _is_slip(used, error):
        header = _loose_fields(lines[0], delimiter)
    elif error is not None:
        raise DataError(f"manifest {path} has an unreadable header: {error}")
    header = [printable(col).strip().lower() for col in header]
    return header, _records(lines, used, delimiter, len(header))


def _records(lines: list[str], start: int, delimiter: str, width: int) -> Iterator[CsvRecord]:
    index = start
    while index < len(lines):
        fields, used, error = _parse_record(lines, index, delimiter)
        if used > 1 and (error is not None or _swallows_rows(lines, index, used, delimiter, width)):
            reason = _unclosed_quote_reason(index, used, error)
            yield CsvRecord(index + 1, _loose_fields(lines[index], delimiter), reason)
            index += 1  # the swallowed lines are rows of their own: read them again
            continue
        if _is_slip(used, error):
            fields, error = _loose_fields(lines[index], delimiter), None
        if error is not None:
            reason = f"malformed row: {error}"
            yield CsvRecord(index + 1, _loose_fields(lines[index], delimiter), reason)
        elif any(field.strip() for field in fields):
            yield CsvRecord(index + 1, fields)
        index += max(used, 1)


def _parse_record(
    lines: list[str], start: int, delimiter: str
) -> tuple[list[str], int, str | None]:
    """Fields of the record starting at ``lines[start]``, physical lines it used, csv error."""
    source = (lines[k] for k in range(start, len(lines)))
    reader = csv.reader(source, delimiter=delimiter, strict=True)
    try:
        fields = next(reader)
    except StopIteration:
        return [], 1, None
    except csv.Error as exc:
        return [], max(reader.line_num, 1), _csv_message(exc)
    return fields, max(reader.line_num, 1), None


def _is_slip(used: int, error: str | None) -> bool:
    """A one-line record with text after a closing quote (``"ab" ,x``): read it leniently.

    Nothing is swallowed there, and the lenient reading (``ab ``) is what ``csv`` always gave.
    """
    return used == 1 and error is not None and error != _NEVER_CLOSED


def _loose_fields(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter), [])


def _csv_message(exc: csv.Error) -> str:
    text = str(exc)
    return _NEVER_CLOSED if text == "unexpected end of data" else text


def _swallows_rows(lines: list[str], start: int, used: int, delimiter: str, width: int) -> bool:
    """Whether the lines between a record's first and last line are rows of their own.

    A legitimate multi-line field holds free text there; a row with the header's number of
    fields, quotes balanced and no parse error on every such line means an unclosed quote ate
    them. The last line is left out: it holds the closing quote, which a real row does not.
    """
    middle = [line for line in lines[start + 1 : start + used - 1] if line.strip()]
    return bool(middle) and all(_is_whole_row(line, delimiter, width) for line in middle)


def _is_whole_row(line: str, delimiter: str, width: int) -> bool:
    if line.count('"') % 2:
        return False
    fields, used, error = _parse_record([line], 0, delimiter)
    return error is None and used == 1 and len(fields) == width and bool(fields[0].strip())


def _unclosed_quote_reason(start: int, used: int, error: str | None) -> str:
    first, last = start + 1, start + used
    detail = " and is never closed" if error == _NEVER_CLOSED else f" ({error})" if error else ""
    return (
        f"malformed row: unclosed quote: a quoted field opened on line {first} runs on to line "
        f"{last}{detail}; lines {first + 1}-{last} are read as rows of their own"
    )
