"""Fixtures for the LoRA tests (builders live in ``finetune_fixtures``, a unique module name)."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_fixtures import build_tiny_lm, write_toy_data


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")


@pytest.fixture(scope="session")
def tiny_llama_no_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-plain"), chat_template=False)


@pytest.fixture()
def toy_data(tmp_path: Path) -> Path:
    return write_toy_data(tmp_path / "ov")
