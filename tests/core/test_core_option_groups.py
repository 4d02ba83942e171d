"""Option groups (``commands.options.option_groups``) and the commands built on them: every
option of a group reaches the command, with its help text, default and flag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from meragent.cli import app as meragent_app
from meragent.commands.options import option_groups


@dataclass(frozen=True)
class _Sizes:
    width: Annotated[int, typer.Option(help="How wide.")] = 3
    label: Annotated[str, typer.Option("--name", help="What it is called.")] = "box"


def _app(seen: list[Any]) -> typer.Typer:
    app = typer.Typer()

    @app.command("make")
    @option_groups
    def make(
        where: Annotated[str, typer.Argument(help="Where.")],
        *,
        sizes: _Sizes,
        loud: Annotated[bool, typer.Option(help="Shout.")] = False,
    ) -> None:
        seen.append((where, sizes, loud))

    @app.command("other")
    def other() -> None:
        pass

    return app


def test_a_group_reaches_the_command_as_one_instance_with_defaults_and_values() -> None:
    seen: list[Any] = []
    runner = CliRunner()
    assert runner.invoke(_app(seen), ["make", "here"]).exit_code == 0
    assert seen == [("here", _Sizes(width=3, label="box"), False)]
    result = runner.invoke(
        _app(seen), ["make", "there", "--width", "7", "--name", "crate", "--loud"]
    )
    assert result.exit_code == 0
    assert seen[-1] == ("there", _Sizes(width=7, label="crate"), True)


def test_group_fields_are_listed_in_the_parameter_s_place_with_their_help() -> None:
    help_text = CliRunner().invoke(_app([]), ["make", "--help"], terminal_width=100).output
    assert "How wide." in help_text and "What it is called." in help_text
    assert help_text.index("--width") < help_text.index("--name") < help_text.index("--loud")
    assert "--sizes" not in help_text


def test_a_direct_call_gets_the_group_defaults_or_passes_its_own_group() -> None:
    seen: list[Any] = []

    @option_groups
    def make(where: str, *, sizes: _Sizes, loud: bool = False) -> None:
        seen.append((where, sizes, loud))

    make("a")
    make("b", width=5)
    make("c", sizes=_Sizes(width=9, label="x"), loud=True)
    assert seen == [
        ("a", _Sizes(), False),
        ("b", _Sizes(width=5), False),
        ("c", _Sizes(width=9, label="x"), True),
    ]


def test_a_bad_group_value_is_a_usage_error() -> None:
    result = CliRunner().invoke(_app([]), ["make", "here", "--width", "wide"])
    assert result.exit_code == 2


def _captured_fusion_config(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> dict[str, Any]:
    import meragent.commands.fusion_cmd as fusion_cmd
    import meragent.finetune.fusion_train as fusion_train

    seen: dict[str, Any] = {}

    class _Stop(Exception):
        pass

    def fake_train(clips: Any, cache: Any, branches: Any, config: Any, **kwargs: Any) -> Any:
        seen.update(config=config.model_dump(), cache=str(cache.root), branches=branches)
        raise _Stop

    monkeypatch.setattr(fusion_train, "train_fusion", fake_train)
    monkeypatch.setattr(fusion_cmd, "_load_clips", lambda *a, **k: [])
    result = CliRunner().invoke(meragent_app, ["fusion", "train", *args])
    assert isinstance(result.exception, _Stop), result.output
    return seen


def test_fusion_train_options_reach_the_training_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    args = ["src", "--encoders", "a,b+c", "--out", str(tmp_path / "m"), "--folds", "3"]
    args += ["--search", "4", "--epochs", "7", "--seed", "2", "--model", "mertools_attention"]
    args += ["--features", str(tmp_path / "f"), "--hidden", "32,64", "--lr", "1e-2"]
    args += ["--dropout", "0.1", "--unique", "--patience", "3", "--pca-dim", "8"]
    args += ["--modality-dropout", "0.2", "--valence", "on", "--device", "cpu", "--threads", "1"]
    args += ["--precision", "fp32", "--stack-workers", "2"]
    seen = _captured_fusion_config(monkeypatch, args)
    config = seen["config"]
    expected = {"folds": 3, "search": 4, "epochs": 7, "seed": 2, "model": "mertools_attention"}
    expected |= {"hidden": [32, 64], "lr": [0.01], "dropout": [0.1], "unique": True}
    expected |= {"patience": 3, "pca_dim": 8, "modality_dropout": 0.2, "valence": "on"}
    expected |= {"device": "cpu", "threads": 1, "precision": "fp32", "stack_workers": 2}
    assert {key: config[key] for key in expected} == expected
    assert seen["cache"] == str(tmp_path / "f")
    assert [list(branch) for branch in seen["branches"]] == [["a"], ["b", "c"]]


def test_finetune_lora_options_reach_the_run_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import meragent.finetune.lora_run as lora_run

    seen: list[Any] = []

    def fake_run(config: Any, report: Any) -> dict[str, Any]:
        seen.append(config)
        return {"summary": {}}

    monkeypatch.setattr(lora_run, "run_lora_cv", fake_run)
    args = ["finetune", "lora", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]
    args += ["--folds", "3", "--fold", "1", "--epochs", "1.5", "--max-steps", "7", "--rank", "8"]
    args += ["--alpha", "4", "--dropout", "0.1", "--lr", "1e-3", "--batch-size", "2"]
    args += ["--grad-accum", "3", "--seed", "3", "--language", "both", "--grouper", "llm"]
    args += ["--no-zero-shot", "--device", "cpu", "--precision", "fp32", "--no-progress"]
    result = CliRunner().invoke(meragent_app, args)
    assert result.exit_code == 0, result.output
    [config] = seen
    hyper = config.hyper
    assert (hyper.r, hyper.alpha, hyper.dropout, hyper.learning_rate) == (8, 4, 0.1, 1e-3)
    assert (hyper.epochs, hyper.max_steps, hyper.batch_size, hyper.grad_accum) == (1.5, 7, 2, 3)
    assert hyper.seed == config.seed == 3
    assert (config.data_dir, config.out_dir) == (tmp_path / "d", tmp_path / "o")
    assert (config.folds, config.fold, config.language, config.grouper) == (3, 1, "both", "llm")
    assert (config.zero_shot, config.progress, config.device, config.precision) == (
        False,
        False,
        "cpu",
        "fp32",
    )
    assert type(config.language) is str  # choices arrive as their plain values
