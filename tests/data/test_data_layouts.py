"""The manifest layout registry: detection order, the names it reports, adding a layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meragent.data.manifest import (
    LAYOUTS,
    Layout,
    LayoutRegistry,
    ManifestLoad,
    detect_layout,
    load_manifest,
)
from meragent.data.manifest.layouts import builtin_layouts
from meragent.errors import DataError


def test_builtin_layouts_are_tried_most_specific_first() -> None:
    assert LAYOUTS.names() == ("mer2024", "mer2023", "csv", "jsonl", "folder", "video")


def test_a_mer_folder_holding_a_manifest_is_read_as_mer(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "label-6way.npz", train_corpus={"a": {"emo": "happy"}})  # type: ignore[arg-type]
    (tmp_path / "manifest.csv").write_text("name,video\nb,b.mp4\n", encoding="utf-8")
    (tmp_path / "train-label.csv").write_text("name,discrete\nc,sad\n", encoding="utf-8")
    assert detect_layout(tmp_path) == "mer2024"
    (tmp_path / "label-6way.npz").unlink()
    assert detect_layout(tmp_path) == "mer2023"
    (tmp_path / "train-label.csv").unlink()
    assert detect_layout(tmp_path) == "csv"
    (tmp_path / "manifest.csv").unlink()
    assert detect_layout(tmp_path) == "folder"


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("labels.npz", "mer2024"),
        ("m.TSV", "csv"),
        ("m.ndjson", "jsonl"),
        ("m.json", "jsonl"),
        ("clip.mp4", "video"),
    ],
)
def test_a_file_is_detected_by_its_name(tmp_path: Path, name: str, layout: str) -> None:
    (tmp_path / name).write_bytes(b"")
    assert detect_layout(tmp_path / name) == layout


def test_an_unknown_file_names_every_layout_it_could_have_been(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert message.startswith(f"cannot read {path}: expected a label-6way.npz")
    assert ".csv/.tsv manifest" in message and "a video (" in message


def test_a_registered_layout_is_tried_in_its_place(tmp_path: Path) -> None:
    registry = builtin_layouts()

    def load(target: Path, root: Path, split: str | None, want: object) -> ManifestLoad:
        return ManifestLoad(layout="txt", source=target, root=root)

    txt = Layout("txt", lambda p: p if p.suffix == ".csv" else None, load, "a .txt list")
    registry.register(txt, before="csv")
    assert registry.names()[2] == "txt"
    assert registry.detect(tmp_path / "m.csv")[0].name == "txt"
    assert LAYOUTS.detect(tmp_path / "m.csv")[0].name == "csv"  # the shared one is untouched
    with pytest.raises(ValueError, match="already registered"):
        registry.register(txt)
    with pytest.raises(DataError, match="unknown manifest layout 'nope'"):
        registry.get("nope")


def test_an_empty_registry_reads_nothing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        LayoutRegistry().detect(tmp_path)
