"""Issue 11: an unclosed CSV quote must not swallow later rows; sources without media (defect 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meragent.cli import app
from meragent.data.manifest import ManifestLoad, load_manifest
from meragent.errors import DataError

runner = CliRunner()

HEADER = "name,video,subtitle,discrete\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _summary(stdout: str) -> dict[str, str]:
    """``field -> value`` of the summary table ``data check`` prints (``│ clips │ 3 │``)."""
    cells = [line.split("│")[1:3] for line in stdout.splitlines() if line.count("│") == 3]
    return {key.strip(): value.strip() for key, value in cells}


def _rows(load: ManifestLoad) -> list[tuple[str, str | None, str | None]]:
    return [(clip.id, clip.subtitle, clip.discrete) for clip in load.clips]


def _text_manifest(tmp_path: Path, broken_row: str, position: str) -> Path:
    """Text-only rows (no media needed) with ``broken_row`` in the middle or at the end."""
    before = "a,,hello there,happy\n"
    after = "c,,see you,sad\nd,,fine,angry\n"
    body = before + broken_row + after if position == "middle" else before + after + broken_row
    return _write(tmp_path / "m.csv", HEADER + body)


# ---------------------------------------------------------------------------- defect 3


def test_unclosed_quote_in_a_middle_row_is_reported_and_later_rows_are_clips(
    tmp_path: Path,
) -> None:
    manifest = _text_manifest(tmp_path, 'bad,video/x.mp4,"oops no close,happy\n', "middle")
    load = load_manifest(manifest)
    # Old code: c and d became part of bad's subtitle, and no error was reported.
    assert _rows(load) == [
        ("a", "hello there", "happy"),
        ("c", "see you", "sad"),
        ("d", "fine", "angry"),
    ]
    assert len(load.errors) == 1
    error = load.errors[0]
    assert (error.row, error.clip_id, error.kind) == (3, "bad", "malformed")
    assert str(error).startswith("m.csv, row 3, clip 'bad': malformed row: unclosed quote")
    assert "lines 4-5 are read as rows of their own" in str(error)


def test_unclosed_quote_that_a_later_quote_closes_is_still_caught(tmp_path: Path) -> None:
    # The stray quote pairs up with the quote of a later, legitimately quoted subtitle.
    body = 'a,,hi,happy\nbad,,"oops,happy\nc,,plain,sad\nd,,"x, y",angry\ne,,last,worried\n'
    load = load_manifest(_write(tmp_path / "m.csv", HEADER + body))
    assert [clip.id for clip in load.clips] == ["a", "c", "d", "e"]
    assert load.clips[2].subtitle == "x, y"
    assert [(e.row, e.clip_id) for e in load.errors] == [(3, "bad")]


def test_unclosed_quote_in_the_last_row_is_reported_instead_of_losing_its_label(
    tmp_path: Path,
) -> None:
    manifest = _text_manifest(tmp_path, 'bad,,"oops no close,happy\n', "last")
    load = load_manifest(manifest)
    # Old code: a clip 'bad' with subtitle 'oops no close,happy' and no label.
    assert [clip.id for clip in load.clips] == ["a", "c", "d"]
    assert [(e.row, e.clip_id) for e in load.errors] == [(5, "bad")]
    assert "a quoted field is never closed" in str(load.errors[0])


def test_legitimate_multi_line_quoted_subtitles_stay_one_row(tmp_path: Path) -> None:
    body = (
        'a,,"first line\nsecond, line",happy\n'
        'b,,"one\ntwo, three\nfour, five",sad\n'  # continuation lines hold delimiters
        'c,,"she said ""hi""\nand left",angry\n'
        "d,,plain,worried\n"
        'e,,"slip" ,neutral\n'  # text after a closing quote on one line: read as csv always did
    )
    load = load_manifest(_write(tmp_path / "m.csv", HEADER + body))
    assert load.errors == []
    assert _rows(load) == [
        ("a", "first line\nsecond, line", "happy"),
        ("b", "one\ntwo, three\nfour, five", "sad"),
        ("c", 'she said "hi"\nand left', "angry"),
        ("d", "plain", "worried"),
        ("e", "slip", "neutral"),
    ]


def test_cli_check_reports_the_broken_row_with_its_line_and_exits_1(tmp_path: Path) -> None:
    manifest = _text_manifest(tmp_path, 'bad,video/x.mp4,"oops no close,happy\n', "middle")
    result = runner.invoke(app, ["data", "check", str(manifest)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: m.csv, row 3, clip 'bad': malformed row: unclosed")
    summary = _summary(result.stdout)
    assert (summary["clips"], summary["bad rows"]) == ("3", "1")


def test_broken_transcript_row_is_reported_and_costs_only_its_subtitle(tmp_path: Path) -> None:
    folder = _mer_folder(tmp_path)
    (folder / "transcription-merge.csv").write_text(
        'name,chinese\ns1,"没有关上\ns2,第二句\ns3,第三句\n', encoding="utf-8"
    )
    load = load_manifest(folder, media="optional")
    subtitles = {clip.id: clip.subtitle for clip in load.clips}
    assert subtitles == {"s1": None, "s2": "第二句", "s3": "第三句"}
    assert [(e.file, e.row, e.clip_id) for e in load.errors] == [
        ("transcription-merge.csv", 2, "s1")
    ]


# ---------------------------------------------------------------------------- defect 2


def _mer_folder(tmp_path: Path) -> Path:
    """A MERTools folder: label-6way.npz only (no video/ anywhere), like ../shared/data/mer2023."""
    folder = tmp_path / "mer"
    folder.mkdir()
    train = {"s1": {"emo": "happy", "val": 2.0}, "s2": {"emo": "sad", "val": -10}}
    test1 = {"s3": {"emo": "neutral", "val": 0.0}}
    np.savez_compressed(folder / "label-6way.npz", train_corpus=train, test1_corpus=test1)  # type: ignore[arg-type]
    return folder


def test_mer_folder_without_videos_loads_media_less_clips_when_media_is_optional(
    tmp_path: Path,
) -> None:
    folder = _mer_folder(tmp_path)
    required = load_manifest(folder)
    assert required.clips == [] and {e.kind for e in required.errors} == {"missing_file"}
    optional = load_manifest(folder, media="optional")
    assert optional.errors == [] and optional.media == "optional"
    assert [(c.id, c.discrete, c.valence, c.video) for c in optional.clips] == [
        ("s1", "happy", 2.0, None),
        ("s2", "sad", None, None),
        ("s3", "neutral", 0.0, None),
    ]
    assert optional.n_without_media == 3


def test_csv_with_name_and_labels_only_is_usable_when_media_is_optional(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "labels.csv", "name,discrete,valence\nx,happy,1.5\ny,sad,\n")
    assert load_manifest(manifest).clips == []  # the pipeline needs something to decode
    load = load_manifest(manifest, media="optional")
    assert load.errors == [] and [(c.id, c.discrete) for c in load.clips] == [
        ("x", "happy"),
        ("y", "sad"),
    ]


def test_named_but_missing_media_stays_an_error_when_media_is_optional(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "m.csv", "name,video,discrete\nx,gone.mp4,happy\ny,,sad\n")
    load = load_manifest(manifest, media="optional")
    assert [c.id for c in load.clips] == ["y"]
    assert [(e.clip_id, e.kind) for e in load.errors] == [("x", "missing_file")]


def test_jsonl_without_media_is_usable_when_media_is_optional(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "m.jsonl", '{"name": "x", "discrete": "angry"}\n')
    assert [c.id for c in load_manifest(manifest, media="optional").clips] == ["x"]
    with pytest.raises(ValueError, match="media must be one of"):
        load_manifest(manifest, media="sometimes")  # type: ignore[arg-type]


def test_cli_check_counts_rows_without_media(tmp_path: Path) -> None:
    folder = _mer_folder(tmp_path)
    strict = runner.invoke(app, ["data", "check", str(folder)])
    assert strict.exit_code == 1 and "--media optional" in strict.stdout
    relaxed = runner.invoke(app, ["data", "check", str(folder), "--media", "optional"])
    assert relaxed.exit_code == 0, relaxed.output
    summary = _summary(relaxed.stdout)
    assert (summary["clips"], summary["without media"], summary["bad rows"]) == ("3", "3", "0")


def test_cli_labels_writes_the_gt_csv_of_a_split(tmp_path: Path) -> None:
    folder = _mer_folder(tmp_path)
    out = tmp_path / "gt.csv"
    result = runner.invoke(
        app, ["data", "labels", str(folder), "--split", "train", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == "name,discrete,valence\ns1,happy,2\ns2,sad,\n"


def test_subtitle_language_picks_the_transcript_column(tmp_path: Path) -> None:
    folder = _mer_folder(tmp_path)
    (folder / "transcription-engchi-polish.csv").write_text(
        "name,chinese,english\ns1,你好,hello\n", encoding="utf-8"
    )
    default = load_manifest(folder, media="optional", split="train").clips[0]
    english = load_manifest(folder, media="optional", split="train", subtitle_language="en")
    assert (default.subtitle, default.language) == ("你好", "zh")
    assert (english.clips[0].subtitle, english.clips[0].language) == ("hello", "en")
    # Either way the clip carries both transcripts: a feature folder extracted from the other
    # language must still be recognised as this clip's (FeatureCache.lookup_clip).
    assert default.transcripts == english.clips[0].transcripts == {"zh": "你好", "en": "hello"}
    manifest = _write(tmp_path / "m.csv", "name,subtitle,discrete\nx,words,happy\n")
    with pytest.raises(DataError, match="has no 'english' subtitle column"):
        load_manifest(manifest, subtitle_language="en")  # never the wrong language silently


@pytest.mark.parametrize(
    "name, text",
    [
        ("m.csv", "name,chinese,english,discrete\nx,你好,hello,happy\ny,再见,,sad\n"),
        (
            "m.jsonl",
            '{"name": "x", "chinese": "你好", "english": "hello", "discrete": "happy"}\n'
            '{"name": "y", "chinese": "再见", "discrete": "sad"}\n',
        ),
    ],
)
def test_manifests_with_both_transcript_columns_keep_both(
    tmp_path: Path, name: str, text: str
) -> None:
    clips = load_manifest(_write(tmp_path / name, text), media="optional").clips
    assert [(c.subtitle, c.transcripts) for c in clips] == [
        ("你好", {"zh": "你好", "en": "hello"}),
        ("再见", {"zh": "再见"}),
    ]
