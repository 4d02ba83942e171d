"""Fixtures of the graph tests."""

from __future__ import annotations

import pytest
from graph_helpers import make_clip

from meragent.schema import Clip


@pytest.fixture
def clip() -> Clip:
    return make_clip(discrete="happy", openset=["happy", "relieved"])
