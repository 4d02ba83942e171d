"""CLI options with a fixed list of values are StrEnum choices: listed in --help, rc 2 otherwise."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from meragent.cli import app
from meragent.commands.choices import FusionModel, MediaOption, Precision, Track
from meragent.config import Settings

runner = CliRunner()


@pytest.mark.parametrize(
    ("command", "option", "bad"),
    [
        (["batch", "x.csv", "--run", "r"], "--track", "best"),
        (["batch", "x.csv", "--run", "r"], "--executor", "spark"),
        (["batch", "x.csv", "--run", "r"], "--precision", "fp16"),
        (["run", "x.mp4"], "--track", "six"),
        (["features", "extract", "x.csv", "--encoder", "minilm"], "--device", "tpu"),
        (["features", "extract", "x.csv", "--encoder", "minilm"], "--subtitle-language", "fr"),
        (["fusion", "train", "x.csv", "--out", "o", "--encoders", "a"], "--valence", "maybe"),
        (["fusion", "train", "x.csv", "--out", "o", "--encoders", "a"], "--model", "mlp"),
        (["fusion", "train", "x.csv", "--out", "o", "--encoders", "a"], "--augment", "mixup"),
        (["eval", "ov", "--gt", "g.csv", "--pred", "p.csv"], "--parse", "loose"),
        (["data", "check", "x.csv"], "--media", "maybe"),
    ],
)
def test_a_value_outside_the_choices_is_a_usage_error(
    command: list[str], option: str, bad: str
) -> None:
    result = runner.invoke(app, [*command, option, bad])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert "Traceback" not in result.output


def test_help_lists_the_choices() -> None:
    result = runner.invoke(
        app, ["batch", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
    )
    assert result.exit_code == 0
    assert "<ov|semi|noise|all>" in result.output and "<local|ray>" in result.output


def test_the_choices_match_what_the_library_accepts() -> None:
    from typing import get_args

    from meragent.tools.fusion_model import ARCHITECTURES

    assert set(FusionModel) == set(ARCHITECTURES)
    assert set(Precision) == set(get_args(Settings.model_fields["precision"].annotation))
    from meragent.graphs.session import Track as TrackLiteral

    assert set(Track) == set(get_args(TrackLiteral))
    from meragent.data.manifest import MediaPolicy

    assert set(MediaOption) == set(get_args(MediaPolicy))
