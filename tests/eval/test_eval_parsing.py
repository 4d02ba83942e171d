"""List-string parsing: the proper parser and the organisers' quote-splitting one, bit for bit."""

from __future__ import annotations

import pytest

from meragent.eval.parsing import (
    OpenSetParseError,
    mertools2024_list,
    mertools2025_list,
    parse_openset,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("['happy', 'relieved']", ["happy", "relieved"]),
        ("[\"don't believe\", 'sad']", ["don't believe", "sad"]),
        ('["a", "b"]', ["a", "b"]),
        ("['  happy ', '']", ["happy"]),
        ("[]", []),
        ("", []),
        ("   ", []),
        ("('calm',)", ["calm"]),
    ],
)
def test_proper_parse(text: str, expected: list[str]) -> None:
    assert parse_openset(text) == expected


@pytest.mark.parametrize("text", ["happy, sad", "[1, 2]", "['a'", "{'a': 1}", "[['a']]"])
def test_proper_parse_rejects_non_lists(text: str) -> None:
    with pytest.raises(OpenSetParseError):
        parse_openset(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Split on every quote: the apostrophe cuts the label in two.
        ("[\"don't believe\", 'sad']", ["don", "t believe", "sad"]),
        # Pieces are not stripped (only the filter looks at the stripped piece).
        ("[' happy', 'sad ']", [" happy", "sad "]),
        # Only the text between the first '[' and the next ']' counts.
        ("labels: ['a'] and ['b']", ["a"]),
        # Without quotes the whole inside is one label.
        ("[happy, sad]", ["happy, sad"]),
        # A double comma is not a lone comma: the official filter keeps it.
        ("['happy',,'sad']", ["happy", ",,", "sad"]),
        ("", []),
        ("[]", []),
    ],
)
def test_mertools_parse_reproduces_the_official_splitter(text: str, expected: list[str]) -> None:
    assert parse_openset(text, mode="mertools") == expected
    assert mertools2024_list(text) == expected


def test_mertools_parse_without_bracket_is_an_error_not_a_crash() -> None:
    # The original raises IndexError here.
    with pytest.raises(OpenSetParseError, match="no '\\['"):
        parse_openset("happy, sad", mode="mertools")


def test_nan_cells_read_as_empty() -> None:
    assert mertools2024_list(float("nan")) == []  # type: ignore[arg-type]
    assert parse_openset(float("nan")) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abandoned,abandon,abandonment", ["abandoned", "abandon", "abandonment"]),
        ("uncovered, revealed, unprotected", ["uncovered", "revealed", "unprotected"]),
        ("[' a ', \"b\"]", ["a", "b"]),
        ("[", []),
        ("", []),
    ],
)
def test_mertools2025_splitter(text: str, expected: list[str]) -> None:
    assert mertools2025_list(text) == expected


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown parse mode"):
        parse_openset("[]", mode="fancy")  # type: ignore[arg-type]
