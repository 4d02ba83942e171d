"""One precision setting (auto|fp32|bf16): how it resolves, what the encoders compute in, and
that feature folders record it (bf16 and fp32 vectors never share a folder). Tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meragent.config import (
    announce_precision,
    load_settings,
    resolve_device,
    resolve_precision,
)
from meragent.errors import ConfigError
from meragent.tools.feature_cache import META_FILE, FeatureCache, FeatureConflictError


def test_explicit_and_auto_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    import meragent.config as config

    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(config, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(config, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", "cpu")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    from meragent.config import cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert {"avx512_bf16", "avx512f"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_cuda_without_a_gpu_is_a_config_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_precision_comes_from_argument_env_or_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('precision = "bf16"\n\n[roles.fusion]\nbackend = "late"\n')
    monkeypatch.delenv("MERAGENT_PRECISION", raising=False)
    assert load_settings().precision == "auto"
    assert load_settings(profile=str(profile)).precision == "bf16"
    monkeypatch.setenv("MERAGENT_PRECISION", "fp32")
    assert load_settings(profile=str(profile)).precision == "fp32"  # env before the profile
    assert load_settings(profile=str(profile), precision="bf16").precision == "bf16"
    assert load_settings(precision="fp32").resolved_precision() == "fp32"
    bad = tmp_path / "bad.toml"
    bad.write_text('precision = "half"\n')
    with pytest.raises(ConfigError, match="unknown precision 'half'"):
        load_settings(profile=str(bad))
    with pytest.raises(ConfigError):
        load_settings(precision="half")


def test_the_choice_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert announce_precision("bf16", "cpu") == "bf16"
    assert announce_precision("bf16", "cpu") == "bf16"
    err = capsys.readouterr().err
    assert err.count("precision bf16 on cpu (asked for)") <= 1  # once per process


def linear_dtypes(model: Any) -> list[Any]:
    """Record the output dtype of every nn.Linear while the model runs."""
    import torch

    seen: list[Any] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_speech_encoder_computes_in_bf16_and_pools_in_fp32(tiny_hubert: Path) -> None:
    import torch

    from meragent.tools.acoustic_encoder import load_acoustic_encoder

    audio = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    fp32 = load_acoustic_encoder(str(tiny_hubert), layers=2)
    bf16 = load_acoustic_encoder(str(tiny_hubert), layers=2, precision="bf16")
    seen = linear_dtypes(bf16.model)
    vector = bf16.encode(audio)
    assert seen and set(seen) == {torch.bfloat16}
    assert vector.dtype == np.float32 and vector.shape == (32,)
    assert next(bf16.model.parameters()).dtype == torch.float32  # fp32 master weights
    reference = fp32.encode(audio)
    assert not np.array_equal(vector, reference)  # it really ran in another precision
    assert cosine(vector, reference) > 0.98
    seen_fp32 = linear_dtypes(fp32.model)
    fp32.encode(audio)
    assert set(seen_fp32) == {torch.float32}


def test_clip_and_text_encoders_compute_in_bf16(tiny_clip: Path, tiny_bert: Path) -> None:
    import torch

    from meragent.tools.clip_encoder import load_clip_encoder
    from meragent.tools.text_encoder import load_hf_text_encoder

    image = load_clip_encoder(str(tiny_clip), precision="bf16")
    seen = linear_dtypes(image.model.vision_model)
    frames = (np.random.default_rng(1).random((2, 40, 40, 3)) * 255).astype(np.uint8)
    assert image.encode_clip(frames).dtype == np.float32
    assert seen and set(seen) == {torch.bfloat16}
    text = load_hf_text_encoder(str(tiny_bert), layers=2, precision="bf16")
    seen_text = linear_dtypes(text.model)
    rows = text.encode(["the person looks happy", ""])
    assert rows.dtype == np.float32 and not rows[1].any()  # empty text: zero row, as in fp32
    assert seen_text and set(seen_text) == {torch.bfloat16}


def _profile(tmp_path: Path, hubert: Path, precision: str) -> Path:
    path = tmp_path / f"{precision}.toml"
    path.write_text(
        f'precision = "{precision}"\n\n[roles.acoustic_encoder]\nbackend = "hubert"\n'
        f'model = "{hubert}"\noptions = {{ prosody = false, layers = 2 }}\n',
        encoding="utf-8",
    )
    return path


def test_bf16_vectors_never_share_a_folder_with_fp32_ones(
    tmp_path: Path, tiny_hubert: Path, synth_dataset: Path
) -> None:
    from meragent.tools.extract import extract_features
    from meragent.tools.registry import build_toolset

    home = tmp_path / "home"
    fp32 = load_settings(home=home, profile=str(_profile(tmp_path, tiny_hubert, "fp32")))
    report = extract_features(fp32, synth_dataset, "acoustic", batch_size=4)
    assert (report.extracted, report.precision) == (4, "fp32")
    folder = fp32.features_dir / report.feature
    meta = json.loads((folder / META_FILE).read_text())
    assert "precision" not in meta["recipe"]  # fp32 folders keep their pre-precision recipe
    bf16 = load_settings(home=home, profile=str(_profile(tmp_path, tiny_hubert, "bf16")))
    with pytest.raises(FeatureConflictError, match="precision=bf16"):
        extract_features(bf16, synth_dataset, "acoustic", batch_size=4)
    with pytest.raises(FeatureConflictError, match="precision=bf16"):
        build_toolset(bf16)  # the pipeline refuses the fp32 folder too, before the first clip
    report = extract_features(
        bf16, synth_dataset, "acoustic", batch_size=4, feature_name="tiny-bf16-UTT"
    )
    assert (report.extracted, report.precision) == (4, "bf16")
    meta = json.loads((bf16.features_dir / "tiny-bf16-UTT" / META_FILE).read_text())
    assert meta["recipe"]["precision"] == "bf16"
    # The explicit argument wins over the settings: fp32 into the fp32 folder, all reused.
    again = extract_features(bf16, synth_dataset, "acoustic", batch_size=4, precision="fp32")
    assert (again.cached, again.extracted, again.precision) == (4, 0, "fp32")
    cache = FeatureCache(bf16.features_dir)
    assert cache.recipe_of("tiny-bf16-UTT") != cache.recipe_of(report.feature.replace("-bf16", ""))


def test_toolset_encoder_uses_the_settings_precision(tmp_path: Path, tiny_hubert: Path) -> None:
    import torch

    from meragent.data.media_types import DecodedMedia
    from meragent.schema import Clip
    from meragent.tools.registry import build_toolset

    settings = load_settings(
        home=tmp_path / "h", profile=str(_profile(tmp_path, tiny_hubert, "bf16")), device="cpu"
    )
    tools = build_toolset(settings)
    slot = tools.acoustic.encoder
    assert slot is not None and slot.recipe is not None
    assert slot.recipe.settings["precision"] == "bf16"
    encoder = slot.model.get()
    assert encoder.precision == "bf16"
    seen = linear_dtypes(encoder.model)
    audio = (0.1 * np.random.default_rng(2).standard_normal(8000)).astype(np.float32)
    clue = tools.acoustic.analyze(
        Clip(id="c"), DecodedMedia(clip_id="c", sample_rate=16000, duration=0.5, audio=audio)
    )
    assert clue.error is None and set(seen) == {torch.bfloat16}


def test_features_extract_precision_option(
    tmp_path: Path, tiny_hubert: Path, synth_dataset: Path
) -> None:
    from typer.testing import CliRunner

    from meragent.cli import app

    runner = CliRunner()
    home = ["--home", str(tmp_path / "home"), "--layers", "2"]
    encoder = ["--encoder", f"hubert:{tiny_hubert}"]
    result = runner.invoke(
        app, ["features", "extract", str(synth_dataset), *encoder, *home, "--precision", "bf16"]
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    summary = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert (summary["precision"], summary["extracted"]) == ("bf16", 4)
    meta = json.loads((tmp_path / "home" / "features" / summary["feature"] / META_FILE).read_text())
    assert meta["recipe"]["precision"] == "bf16"
    bad = runner.invoke(
        app, ["features", "extract", str(synth_dataset), *encoder, *home, "--precision", "half"]
    )
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_the_run_record_says_which_precision_the_encoders_used(
    tmp_path: Path, synth_dataset: Path
) -> None:
    from meragent_fakes import fake_run_deps

    from meragent.graphs.batch import BatchOptions, run_batch
    from meragent.graphs.trace import read_trace

    assert load_settings(precision="bf16").masked_dump()["resolved"]["precision"] == "bf16"
    settings = load_settings(home=tmp_path / "home", precision="fp32", device="cpu")
    options = BatchOptions(progress=False)
    run_batch(settings, synth_dataset, "r", options, runtime=fake_run_deps(settings=settings))
    with read_trace(settings.runs_dir / "r") as store:
        run = store.get_run("r")
    assert run is not None and run.config is not None
    assert run.config["precision"] == "fp32"
    assert run.config["resolved"] == {"device": "cpu", "precision": "fp32"}
