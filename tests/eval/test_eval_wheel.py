"""MER2025 emotion-wheel metric: a tiny hand-made wheel folder, and the real one."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from meragent.errors import DataError
from meragent.eval.grouping import get_grouper
from meragent.eval.wheel import WHEELS, load_wheel_vocabulary, score_wheel

WHEEL_A = [
    ["Joy", "Happy", "Cheerful"],
    ["", "", "Content"],
    ["", "Proud", "Confident"],
    ["Sad", "Lonely", "Isolated"],
    ["", "Hurt", "Wounded"],
]
WHEEL_B = [["Joy", "Happy", "Cheerful"], ["", "", "Confident"]]
SYNONYMS = [("happy", "glad, joyful"), ("sad", "unhappy, down"), ("lonely", "down")]
# "cheerful" is on the wheels but has no word-forms row: the official scorer drops it.
WORD_FORMS = [
    ("happy", "happiness,happily"),
    ("sad", "sadness,sadly"),
    ("glad", "gladness"),
    ("unhappy", "unhappiness"),
    ("down", "downs"),
]


def _write(path: Path, header: list[str], rows: list[list[str]] | list[tuple[str, ...]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def tiny_wheels(tmp_path: Path) -> Path:
    # wheel2 is the small one; wheels 1, 3, 4, 5 are copies of WHEEL_A.
    for wheel in WHEELS:
        rows = WHEEL_B if wheel == "wheel2" else WHEEL_A
        _write(tmp_path / f"{wheel}.csv", ["level1", "level2", "level3"], rows)
    header = [f"{kind}_run{k}" for k in range(1, 9) for kind in ("word", "synonym")]
    rows = [[cell for _ in range(8) for cell in pair] for pair in SYNONYMS]
    _write(tmp_path / "synonyms.csv", header, rows)
    _write(tmp_path / "word_forms.csv", ["name", "format"], WORD_FORMS)
    return tmp_path


def test_hand_computed_scores(tiny_wheels: Path) -> None:
    gt = {
        "s1": ["happy", "sad"],
        "s2": ["unhappiness"],
        "s3": ["cheerful"],
        "s4": ["sadly"],
        "s5": ["down"],
    }
    pred = {"s1": ["glad", "angry"], "s2": [], "s3": ["happy"], "s5": ["sad"], "zzz": ["x"]}
    scores = score_wheel(gt, pred, tiny_wheels)
    # Wheel A, level 1 (clusters joy / sad):
    #   s1: Y={joy, sad}, Y^={joy} (glad->happy->joy; angry unknown) -> P 1, R 1/2
    #   s2: Y={sad} (unhappiness->unhappy->sad), Y^={} -> 0, 0
    #   s3: cheerful has no word forms -> Y={} -> skipped
    #   s4: Y={sad}, no prediction -> 0, 0
    #   s5: down -> {lonely, sad}, first alphabetically on the wheel: lonely -> sad; Y^={sad}: 1, 1
    #   P = 2/4, R = 1.5/4 -> F = 2 * (1/2 * 3/8) / (1/2 + 3/8) = 3/7
    a1 = scores.per_wheel["wheel1"]["level1"]
    assert (a1.precision, a1.recall) == (0.5, 0.375)
    assert a1.fscore == pytest.approx(3 / 7, abs=1e-15)
    assert (a1.n_samples, a1.n_skipped) == (4, 1)
    # Wheel A, level 2: sad -> sorted([lonely, hurt])[0] = hurt; down -> lonely.
    #   s1: Y={happy, hurt}, Y^={happy}: 1, 1/2; s2: 0, 0; s4: 0, 0; s5: Y={lonely}, Y^={hurt}: 0, 0
    #   P = 1/4, R = 1/8 -> F = 1/6
    a2 = scores.per_wheel["wheel1"]["level2"]
    assert (a2.precision, a2.recall) == (0.25, 0.125)
    assert a2.fscore == pytest.approx(1 / 6, abs=1e-15)
    # Wheel B only knows joy/happy: only s1 counts, with Y={joy}, Y^={joy} -> F 1.
    b1 = scores.per_wheel["wheel2"]["level1"]
    assert (b1.fscore, b1.n_samples, b1.n_skipped) == (1.0, 1, 4)
    # Averages over the five wheels (four copies of A and B).
    assert scores.level1 == pytest.approx((4 * 3 / 7 + 1) / 5, abs=1e-15)  # 19/35
    assert scores.level2 == pytest.approx((4 / 6 + 1) / 5, abs=1e-15)  # 1/3
    assert scores.average == pytest.approx((19 / 35 + 1 / 3) / 2, abs=1e-15)
    assert scores.level1_precision == pytest.approx((4 * 0.5 + 1) / 5, abs=1e-15)
    assert (scores.n_missing_predictions, scores.n_extra_predictions) == (1, 1)


def test_no_overlap_gives_zero_not_nan(tiny_wheels: Path) -> None:
    scores = score_wheel({"s": ["happy"]}, {"s": ["sad"]}, tiny_wheels)
    assert scores.per_wheel["wheel1"]["level1"].fscore == 0.0
    empty = score_wheel({"s": ["cheerful"]}, {}, tiny_wheels)
    assert empty.level1 == 0.0 and empty.per_wheel["wheel1"]["level1"].n_samples == 0


def test_wheel_grouper_keeps_unknown_labels(tiny_wheels: Path) -> None:
    grouper = get_grouper("wheel", wheel_dir=tiny_wheels, wheel="wheel1", level="level2")
    assert grouper.group_ids("s", ["Glad", "sadness", "angry"]) == ["happy", "hurt", "angry"]


def test_bad_wheel_folders(tmp_path: Path, tiny_wheels: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_wheel_vocabulary(tmp_path / "absent")
    (tiny_wheels / "wheel3.csv").unlink()
    with pytest.raises(DataError, match=r"wheel3\.csv"):
        load_wheel_vocabulary(tiny_wheels)


def test_synonym_words_must_be_on_a_wheel(tiny_wheels: Path) -> None:
    header = [f"{kind}_run{k}" for k in range(1, 9) for kind in ("word", "synonym")]
    _write(tiny_wheels / "synonyms.csv", header, [["elated", "glad"] * 8])
    with pytest.raises(DataError, match="line 2: 'elated'"):
        load_wheel_vocabulary(tiny_wheels)


def test_real_wheels_match_the_official_vocabulary_sizes(wheel_dir: Path, ov332: Path) -> None:
    from meragent.eval.files import read_openset_csv

    vocab = load_wheel_vocabulary(wheel_dir)
    # The organisers' comments: 1,255 synonym-expanded words, 7,386 word forms.
    assert len(vocab.word_to_wheel_words) == 1255
    assert len(vocab.form_to_words) == 7386
    gt = read_openset_csv(ov332 / "openset_labels.csv")
    perfect = score_wheel(gt, gt, wheel_dir, vocabulary=vocab)
    assert (perfect.level1, perfect.level2, perfect.average) == (1.0, 1.0, 1.0)
    nothing = score_wheel(gt, {}, wheel_dir, vocabulary=vocab)
    assert nothing.average == 0.0 and nothing.n_missing_predictions == 332


def test_a_short_wheel_row_is_forward_filled_not_a_crash(tiny_wheels: Path) -> None:
    # A row that ends early (trailing empty cells dropped by an editor) reads as blanks, which
    # repeat the column above, as in a full row; before, the missing cell was None -> crash.
    short = "level1,level2,level3\nJoy,Happy,Cheerful\n,,Content\n,Proud,Confident\nSad\n,,Glum\n"
    (tiny_wheels / "wheel3.csv").write_text(short, encoding="utf-8")
    vocabulary = load_wheel_vocabulary(tiny_wheels)
    grouper = get_grouper("wheel", wheel_dir=tiny_wheels, wheel="wheel3", level="level2")
    assert vocabulary is not None
    assert grouper.group_ids("s", ["happy", "proud"]) == ["happy", "proud"]


def test_a_missing_wheel_file_is_named_as_one(tiny_wheels: Path) -> None:
    (tiny_wheels / "word_forms.csv").unlink()
    with pytest.raises(DataError, match=r"emotion-wheel file not found: .*word_forms\.csv"):
        load_wheel_vocabulary(tiny_wheels)
