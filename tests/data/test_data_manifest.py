"""Manifest layouts (MER2024, MER2023, CSV, JSONL, folder) and the bad-row cases of issue 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from meragent.data.manifest import ManifestLoad, load_manifest, parse_openset, read_label_npz
from meragent.data.synth import write_audio_only, write_manifest
from meragent.errors import DataError


@pytest.fixture(scope="module")
def clip_file(synth_dataset: Path) -> Path:
    """One real synthetic mp4 that tests copy under whatever names they need."""
    return synth_dataset.parent / "video" / "synth_000.mp4"


def _place(clip_file: Path, *targets: Path) -> None:
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip_file, target)


def _row(name: str, video: str, **extra: object) -> dict[str, object]:
    return {"name": name, "video": video, **extra}


def _ids(load: ManifestLoad) -> list[str]:
    return [clip.id for clip in load.clips]


def _only_error(load: ManifestLoad) -> str:
    assert len(load.errors) == 1, [str(e) for e in load.errors]
    line = str(load.errors[0])
    assert "\n" not in line
    return line


# ---------------------------------------------------------------------------- CSV layout


def test_csv_manifest_reads_every_field(tmp_path: Path, clip_file: Path) -> None:
    _place(clip_file, tmp_path / "v" / "a.mp4", tmp_path / "v" / "b.mp4")
    rows = [
        _row(
            "a",
            "v/a.mp4",
            subtitle="我很开心",
            language="zh",
            discrete="Happy",
            valence="2.5",
            openset="['happy', 'Excited', 'happy']",
        ),
        _row("b", "v/b.mp4", discrete="surprised", valence="-10", openset='["amazed"]'),
    ]
    load = load_manifest(write_manifest(tmp_path / "m.csv", rows))
    assert load.layout == "csv" and load.errors == []
    a, b = load.clips
    assert a.id == "a" and a.video == tmp_path / "v" / "a.mp4"
    assert a.subtitle == "我很开心" and a.language == "zh"
    assert a.discrete == "happy" and a.valence == 2.5
    assert a.openset == ["happy", "excited"]
    assert b.discrete == "surprise"  # alias
    assert b.valence is None  # MER writes missing valence as -10
    assert b.openset == ["amazed"] and b.subtitle is None and b.language is None


def test_manifest_row_with_missing_file_is_reported_and_good_rows_survive(
    tmp_path: Path, clip_file: Path
) -> None:
    _place(clip_file, tmp_path / "a.mp4", tmp_path / "c.mp4")
    rows = [_row("a", "a.mp4"), _row("gone", "gone.mp4"), _row("c", "c.mp4")]
    load = load_manifest(write_manifest(tmp_path / "m.csv", rows))
    assert _ids(load) == ["a", "c"]
    line = _only_error(load)
    assert line.startswith("m.csv, row 3, clip 'gone': video file not found")
    assert load.errors[0].kind == "missing_file"


@pytest.mark.parametrize("bad_path", ["../../etc/passwd", "/etc/passwd", "v/../../x.mp4"])
def test_manifest_path_escaping_the_data_root_is_refused(
    tmp_path: Path, clip_file: Path, bad_path: str
) -> None:
    root = tmp_path / "root"
    _place(clip_file, root / "a.mp4", tmp_path / "x.mp4")
    load = load_manifest(
        write_manifest(root / "m.csv", [_row("evil", bad_path), _row("a", "a.mp4")])
    )
    assert _ids(load) == ["a"]
    line = _only_error(load)
    assert "clip 'evil'" in line and "escapes the data root" in line
    assert load.errors[0].kind == "path_escape"


def test_absolute_path_inside_the_root_is_accepted(tmp_path: Path, clip_file: Path) -> None:
    _place(clip_file, tmp_path / "a.mp4")
    load = load_manifest(write_manifest(tmp_path / "m.csv", [_row("a", str(tmp_path / "a.mp4"))]))
    assert _ids(load) == ["a"] and load.errors == []


def test_unknown_label_name_is_reported_and_good_rows_survive(
    tmp_path: Path, clip_file: Path
) -> None:
    _place(clip_file, tmp_path / "a.mp4", tmp_path / "b.mp4")
    rows = [_row("a", "a.mp4", discrete="excited"), _row("b", "b.mp4", discrete="sad")]
    load = load_manifest(write_manifest(tmp_path / "m.csv", rows))
    assert _ids(load) == ["b"] and load.clips[0].discrete == "sad"
    line = _only_error(load)
    assert line.startswith("m.csv, row 2, clip 'a': unknown emotion label 'excited'")
    assert load.errors[0].kind == "unknown_label"


def test_non_utf8_subtitle_row_is_reported_and_good_rows_survive(
    tmp_path: Path, clip_file: Path
) -> None:
    _place(clip_file, tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4")
    rows = [
        _row("a", "a.mp4", subtitle="你好"),
        _row("b", "b.mp4", subtitle="我很生气"),
        _row("c", "c.mp4", subtitle="plain"),
    ]
    path = write_manifest(tmp_path / "m.csv", rows, row_encodings={"b": "gbk"})
    assert "我很生气".encode("gbk") in path.read_bytes()
    load = load_manifest(path)
    assert _ids(load) == ["a", "c"]
    assert [clip.subtitle for clip in load.clips] == ["你好", "plain"]
    line = _only_error(load)
    assert line.startswith("m.csv, row 3, clip 'b': subtitle is not valid UTF-8")
    assert load.errors[0].kind == "encoding"


def test_malformed_row_with_extra_fields_is_reported(tmp_path: Path, clip_file: Path) -> None:
    _place(clip_file, tmp_path / "a.mp4")
    path = tmp_path / "m.csv"
    path.write_text("name,video,subtitle\nbad,a.mp4,hello,world\na,a.mp4,hi\n", encoding="utf-8")
    load = load_manifest(path)
    assert _ids(load) == ["a"]
    assert _only_error(load) == "m.csv, row 2, clip 'bad': malformed row: 4 fields, header has 3"


def test_duplicate_clip_name_keeps_the_first(tmp_path: Path, clip_file: Path) -> None:
    _place(clip_file, tmp_path / "a.mp4", tmp_path / "b.mp4")
    rows = [_row("a", "a.mp4"), _row("a", "b.mp4")]
    load = load_manifest(write_manifest(tmp_path / "m.csv", rows))
    assert [clip.video for clip in load.clips] == [tmp_path / "a.mp4"]
    assert _only_error(load) == "m.csv, row 3, clip 'a': duplicate clip name (first at row 2)"


def test_clip_name_that_is_a_path_is_refused(tmp_path: Path, clip_file: Path) -> None:
    # Names become feature-cache file names, so they must not carry directories.
    _place(clip_file, tmp_path / "a.mp4")
    load = load_manifest(write_manifest(tmp_path / "m.csv", [_row("../x", "a.mp4")]))
    assert load.clips == []
    assert "not a plain file name" in _only_error(load)


def test_bad_valence_and_openset_values_are_row_errors(tmp_path: Path, clip_file: Path) -> None:
    _place(clip_file, tmp_path / "a.mp4")
    rows = [
        _row("v", "a.mp4", valence="high"),
        _row("o", "a.mp4", openset="['happy',"),
        _row("ok", "a.mp4", openset="happy, sad，tired"),
    ]
    load = load_manifest(write_manifest(tmp_path / "m.csv", rows))
    assert _ids(load) == ["ok"] and load.clips[0].openset == ["happy", "sad", "tired"]
    reasons = [str(e) for e in load.errors]
    assert reasons == [
        "m.csv, row 2, clip 'v': valence 'high' is not a number",
        "m.csv, row 3, clip 'o': openset \"['happy',\" is not a valid list",
    ]


def test_data_root_resolves_relative_paths(tmp_path: Path, clip_file: Path) -> None:
    data = tmp_path / "data"
    _place(clip_file, data / "clips" / "a.mp4")
    manifest = write_manifest(tmp_path / "lists" / "m.csv", [_row("a", "clips/a.mp4")])
    assert load_manifest(manifest).errors[0].kind == "missing_file"
    load = load_manifest(manifest, data_root=data)
    assert load.root == data and load.clips[0].video == data / "clips" / "a.mp4"


def test_relative_source_gives_absolute_paths(
    tmp_path: Path, clip_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _place(clip_file, tmp_path / "set" / "a.mp4")
    write_manifest(tmp_path / "set" / "m.csv", [_row("a", "a.mp4")])
    monkeypatch.chdir(tmp_path)
    load = load_manifest("set/m.csv")
    assert load.clips[0].video == tmp_path / "set" / "a.mp4"


def test_missing_video_column_finds_name_dot_ext(tmp_path: Path, clip_file: Path) -> None:
    _place(clip_file, tmp_path / "video" / "a.mp4")
    path = tmp_path / "m.csv"
    path.write_text("name,discrete\na,happy\nb,sad\n", encoding="utf-8")
    load = load_manifest(path)
    assert _ids(load) == ["a"] and load.clips[0].video == tmp_path / "video" / "a.mp4"
    assert load.errors[0].clip_id == "b" and load.errors[0].kind == "missing_file"


def test_split_column_filters_rows(tmp_path: Path, clip_file: Path) -> None:
    _place(clip_file, tmp_path / "a.mp4")
    rows = [_row("a", "a.mp4", split="train"), _row("b", "a.mp4", split="test")]
    path = write_manifest(tmp_path / "m.csv", rows, columns=("name", "video", "split"))
    assert _ids(load_manifest(path, split="test")) == ["b"]
    assert _ids(load_manifest(path)) == ["a", "b"]


def test_whole_source_problems_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest source not found"):
        load_manifest(tmp_path / "nothing.csv")
    no_name = tmp_path / "m.csv"
    no_name.write_text("video,subtitle\na.mp4,hi\n", encoding="utf-8")
    with pytest.raises(DataError, match="no 'name' column"):
        load_manifest(no_name)
    named = tmp_path / "named.csv"
    named.write_text("name,video\na,a.mp4\n", encoding="utf-8")
    with pytest.raises(DataError, match="no 'split' column"):
        load_manifest(named, split="x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no videos"):
        load_manifest(tmp_path / "empty")


def test_parse_openset_accepts_mer_and_json_lists() -> None:
    assert parse_openset("['happy', 'sad']") == ["happy", "sad"]
    assert parse_openset('["happy", "sad"]') == ["happy", "sad"]
    assert parse_openset(["happy", " "]) == ["happy"]
    assert parse_openset("") is None and parse_openset(None) is None
    with pytest.raises(ValueError, match="not a list of words"):
        parse_openset("[1, 2]")


# ---------------------------------------------------------------------------- JSONL layout


def test_jsonl_manifest_with_bad_lines_keeps_good_rows(tmp_path: Path, clip_file: Path) -> None:
    _place(clip_file, tmp_path / "a.mp4", tmp_path / "b.mp4")
    lines = [
        json.dumps({"name": "a", "video": "a.mp4", "openset": ["Happy"], "valence": 1}).encode(),
        b'{"name": "broken", "video": ',
        '{"name": "gbk", "video": "b.mp4", "subtitle": "生气"}'.encode("gbk"),
        json.dumps({"name": "b", "video": "b.mp4", "discrete": "worry"}).encode(),
        b"[1, 2]",
    ]
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    load = load_manifest(path)
    assert load.layout == "jsonl"
    assert _ids(load) == ["a", "b"]
    assert load.clips[0].openset == ["happy"] and load.clips[0].valence == 1.0
    assert load.clips[1].discrete == "worried"
    errors = [str(e) for e in load.errors]
    assert errors[0].startswith("m.jsonl, row 2, clip 'broken': malformed row: invalid JSON")
    assert (
        errors[1]
        == "m.jsonl, row 3, clip 'gbk': row is not valid UTF-8 (save the manifest as UTF-8)"
    )
    assert errors[2] == "m.jsonl, row 5: malformed row: not a JSON object"


def test_json_array_manifest(tmp_path: Path, clip_file: Path) -> None:
    _place(clip_file, tmp_path / "a.mp4")
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"name": "a", "video": "a.mp4", "discrete": "angry"}]))
    load = load_manifest(path)
    assert _ids(load) == ["a"] and load.clips[0].discrete == "angry"


# ---------------------------------------------------------------------------- MER layouts


def _mer2024_folder(root: Path, clip_file: Path) -> Path:
    names = ("s1.mp4", "s2.mp4", "s3.avi", "s_odd.mp4")
    _place(clip_file, *(root / "video" / name for name in names))
    write_audio_only(root / "audio" / "s1.wav", duration_s=0.5)
    train = {
        "s1": {"emo": "happy", "val": np.float64(2.0)},
        "s2": {"emo": "surprised", "val": -10},
        "s_missing": {"emo": "sad", "val": -1.0},
        "s_odd": {"emo": "bored", "val": 0.0},
    }
    test1 = {"s3": {"emo": "neutral", "val": -10}}
    # MER's own format: each corpus is a dict pickled into a 0-d object array.
    np.savez_compressed(root / "label-6way.npz", train_corpus=train, test1_corpus=test1)  # type: ignore[arg-type]
    transcription = root / "transcription-merge.csv"
    transcription.write_bytes(
        b"name,chinese,english\n"
        + "s1,今天真开心,so happy today\n".encode()
        + "s2,怎么回事,what\n".encode("gbk")
    )
    return root


def test_mer2024_layout_reads_all_splits_labels_audio_and_subtitles(
    tmp_path: Path, clip_file: Path
) -> None:
    root = _mer2024_folder(tmp_path / "mer2024", clip_file)
    load = load_manifest(root)
    assert load.layout == "mer2024" and load.splits == ["train", "test1"]
    assert _ids(load) == ["s1", "s2", "s3"]
    s1, s2, s3 = load.clips
    assert s1.video == root / "video" / "s1.mp4" and s1.audio == root / "audio" / "s1.wav"
    assert (s1.discrete, s1.valence, s1.subtitle, s1.language) == ("happy", 2.0, "今天真开心", "zh")
    assert (s2.discrete, s2.valence, s2.audio, s2.subtitle) == ("surprise", None, None, None)
    assert s3.video == root / "video" / "s3.avi" and s3.discrete == "neutral"
    errors = {e.clip_id: (e.kind, str(e)) for e in load.errors}
    assert errors["s2"] == (
        "encoding",
        "transcription-merge.csv, row 3, clip 's2': subtitle is not valid UTF-8 "
        "(save the transcription as UTF-8)",
    )
    assert errors["s_missing"][0] == "missing_file"
    assert errors["s_missing"][1].startswith(
        "label-6way.npz, clip 's_missing': video file not found"
    )
    assert errors["s_odd"][0] == "unknown_label"


def test_mer2024_split_selection(tmp_path: Path, clip_file: Path) -> None:
    root = _mer2024_folder(tmp_path / "mer2024", clip_file)
    assert _ids(load_manifest(root, split="test1")) == ["s3"]
    assert _ids(load_manifest(root / "label-6way.npz", split="train")) == ["s1", "s2"]
    with pytest.raises(DataError, match=r"split 'test9' not in .* \(has: train, test1\)"):
        load_manifest(root, split="test9")


def test_label_npz_reader_refuses_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    evil = np.empty((), dtype=object)
    evil[()] = {"s1": Payload()}
    np.savez(tmp_path / "label-6way.npz", train_corpus=evil)
    with pytest.raises(DataError, match="refusing to load"):
        read_label_npz(tmp_path / "label-6way.npz")
    assert not marker.exists()


def test_label_npz_reader_reads_plain_arrays_too(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "x.npz", train_corpus={"a": {"emo": "sad"}}, scores=np.arange(6).reshape(2, 3)
    )  # type: ignore[arg-type]
    data = read_label_npz(tmp_path / "x.npz")
    assert data["train_corpus"] == {"a": {"emo": "sad"}}
    np.testing.assert_array_equal(data["scores"], np.arange(6).reshape(2, 3))


def test_mer2023_layout_reads_label_csvs_and_split_folders(tmp_path: Path, clip_file: Path) -> None:
    root = tmp_path / "mer2023"
    _place(
        clip_file, root / "train" / "t1.mp4", root / "train" / "t2.mp4", root / "test1" / "e1.mp4"
    )
    (root / "train-label.csv").write_text(
        "name,discrete,valence\nt1,worried,-1.5\nt2,neutral,-10\nt3,sad,-2\nt4,joyful,1\n",
        encoding="utf-8",
    )
    (root / "test1-label.csv").write_text("name,discrete,valence\ne1,angry,-3\n", encoding="utf-8")
    load = load_manifest(root)
    assert load.layout == "mer2023" and load.splits == ["train", "test1"]
    assert _ids(load) == ["t1", "t2", "e1"]
    t1, t2, e1 = load.clips
    assert (t1.discrete, t1.valence, t1.video) == ("worried", -1.5, root / "train" / "t1.mp4")
    assert t2.valence is None
    assert e1.video == root / "test1" / "e1.mp4" and e1.discrete == "angry"
    assert [(e.row, e.clip_id, e.kind) for e in load.errors] == [
        (4, "t3", "missing_file"),
        (5, "t4", "unknown_label"),
    ]
    assert str(load.errors[1]).startswith("train-label.csv, row 5, clip 't4': unknown emotion")
    assert _ids(load_manifest(root, split="test1")) == ["e1"]


# ---------------------------------------------------------------------------- folders


def test_folder_of_videos(tmp_path: Path, clip_file: Path) -> None:
    folder = tmp_path / "clips"
    _place(clip_file, folder / "b.mp4", folder / "a.MOV", folder / "a.mkv")
    (folder / "notes.txt").write_text("not a video")
    write_audio_only(folder / "audio" / "b.wav", duration_s=0.5)
    load = load_manifest(folder)
    assert load.layout == "folder"
    assert [(c.id, c.video) for c in load.clips] == [
        ("a", folder / "a.MOV"),
        ("b", folder / "b.mp4"),
    ]
    assert load.clips[1].audio == folder / "audio" / "b.wav"
    assert _only_error(load) == "clips, clip 'a': duplicate clip name"
    with pytest.raises(DataError, match="does not apply"):
        load_manifest(folder, split="train")


def test_folder_with_manifest_and_single_video(synth_dataset: Path) -> None:
    folder = synth_dataset.parent
    load = load_manifest(folder)
    assert load.layout == "csv" and len(load.clips) == 4
    single = load_manifest(folder / "video" / "synth_001.mp4")
    assert single.layout == "video" and _ids(single) == ["synth_001"]


def test_rows_without_video_may_be_audio_only_or_text_only(tmp_path: Path) -> None:
    write_audio_only(tmp_path / "voice.wav", duration_s=0.5)
    path = tmp_path / "m.csv"
    path.write_text(
        "name,video,audio,subtitle\nvoice,,voice.wav,\nnote,,,just words\nnothing,,,\n",
        encoding="utf-8",
    )
    load = load_manifest(path)
    voice, note = load.clips
    assert (voice.video, voice.audio, voice.subtitle) == (None, tmp_path / "voice.wav", None)
    assert (note.video, note.audio, note.subtitle) == (None, None, "just words")
    assert _only_error(load).startswith("m.csv, row 4, clip 'nothing': no video, audio or subtitle")
