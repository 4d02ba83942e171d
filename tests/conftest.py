"""Shared test fixtures: no Hugging Face network, one small synthetic dataset per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The test doubles (tests/doubles/meragent_fakes.py) are imported by name, as subprocesses and
# Ray workers do with PYTHONPATH; nothing under src/ knows them.
sys.path.insert(0, str(Path(__file__).resolve().parent / "doubles"))

# Tests never reach the Hugging Face hub: loading code must work from local paths only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic talking-face clips (speech, labels, subtitles); returns manifest.csv."""
    from meragent.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), 4, seed=0)


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every artifact a test writes goes under a temporary MERAGENT_HOME, never ~/.cache."""
    os.environ["MERAGENT_HOME"] = str(tmp_path_factory.mktemp("meragent_home"))
