"""``errors.one_line``: the one way an exception becomes a line for users, traces and CSVs."""

from __future__ import annotations

from meragent.errors import one_line
from meragent.secrets import register_secret


def test_first_non_empty_line_else_the_type_name() -> None:
    assert one_line(ValueError("\n  bad value  \nsecond line")) == "bad value"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(RuntimeError("   \n ")) == "RuntimeError"
    assert one_line(TimeoutError("no answer"), with_type=True) == "TimeoutError: no answer"
    assert one_line(KeyError(), with_type=True) == "KeyError"


def test_registered_secrets_are_scrubbed() -> None:
    register_secret("sk-one-line-test-0123456789")
    line = one_line(PermissionError("401: key sk-one-line-test-0123456789 rejected"))
    assert "sk-one-line-test-0123456789" not in line and line.startswith("401: key ")
