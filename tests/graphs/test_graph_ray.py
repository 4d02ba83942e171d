"""The Ray executor on a local 2-CPU Ray: same outputs as in-process; a killed worker loses nothing.

Twenty synthetic talking-face clips run through real decoding, Haar face crops and tiny random
HuBERT / CLIP / BERT encoders (built from configs, saved, loaded by the project's loaders) with
random six-class heads, and scripted fake LLMs. The in-process batch (encoders at batch 1) is the
reference; the Ray encoder stage runs the tools' ``encode_batch`` at batch 8. Both in fp32, so
the vectors agree within 1e-5.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from graph_helpers import write_manifest
from meragent_fakes import DOUBLES_DIR, write_fake_profile
from typer.testing import CliRunner

from meragent.config import Settings, load_settings
from meragent.errors import ConfigError, DataError, MediaError, ModelLoadError
from meragent.graphs.batch import BatchOptions, BatchSummary, run_batch
from meragent.graphs.runtime import RunDeps
from meragent.graphs.trace import read_trace

N_CLIPS = 20
#: Columns that hold wall-clock facts, which no two runs share.
TIMING_COLUMNS = ("latency_s", "finished_at")


# --------------------------------------------------------------------------- runtimes (pickled
# by value into the Ray workers: this module is not importable there)


def tiny_runtime(settings: Settings, *, track: str) -> RunDeps:
    """The profile's real (tiny) tools with the scripted fake LLMs."""
    from meragent_fakes import fake_run_deps  # importable in workers: DOUBLES_DIR on PYTHONPATH

    from meragent.graphs.runtime import load_run_deps

    runtime = load_run_deps(settings, track=track)
    fakes = fake_run_deps(settings=settings)
    runtime.chat_models = fakes.chat_models
    runtime.tally = fakes.tally
    return runtime


class CrashOnSecondBatch:
    """A speech encoder whose process dies (``os._exit``) on its second batch, once per test."""

    def __init__(self, inner: Any, marker: Path) -> None:
        self.inner = inner
        self.marker = marker

    def encode_many(self, audios: list[np.ndarray], **kwargs: Any) -> list[np.ndarray]:
        calls = self.marker.with_suffix(".calls")
        done = int(calls.read_text()) if calls.exists() else 0
        calls.write_text(str(done + 1))
        if done == 1 and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)  # a hard worker death: no exception, no cleanup
        return list(self.inner.encode_many(audios, **kwargs))


def crashing_runtime(settings: Settings, *, track: str, marker: Path) -> RunDeps:
    from meragent.tools.lazy import Lazy

    runtime = tiny_runtime(settings, track=track)
    slot = runtime.tools.acoustic.encoder
    inner = slot.model
    runtime.tools.acoustic.encoder = replace(
        slot, model=Lazy(lambda: CrashOnSecondBatch(inner.get(), marker))
    )
    return runtime


# --------------------------------------------------------------------------- fixtures


@dataclass
class World:
    settings: Settings
    manifest: Path
    features: dict[str, np.ndarray]  # what the in-process run cached, by "<feature>/<clip>"
    local: BatchSummary


def _save_tiny_models(root: Path) -> dict[str, Path]:
    """Random HuBERT / CLIP / BERT at toy sizes, saved with their processors (no hub)."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizerFast,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        HubertConfig,
        HubertModel,
        Wav2Vec2FeatureExtractor,
    )

    torch.manual_seed(0)
    paths = {name: root / name for name in ("hubert", "clip", "bert")}
    hubert = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    HubertModel(hubert).eval().save_pretrained(paths["hubert"])
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, do_normalize=True, return_attention_mask=True
    ).save_pretrained(paths["hubert"])
    clip = CLIPConfig(
        text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 37, "vocab_size": 99, "max_position_embeddings": 16},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(clip).eval().save_pretrained(paths["clip"])
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(paths["clip"])
    words = ["that", "is", "wonderful", "news", "i", "am", "so", "happy", "really", "worried"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    paths["bert"].mkdir(parents=True)
    (paths["bert"] / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(paths["bert"] / "vocab.txt")).save_pretrained(paths["bert"])
    bert = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(bert).eval().save_pretrained(paths["bert"])
    return paths


def _write_profile(path: Path, models: dict[str, Path]) -> Path:
    path.write_text(
        f"""
[roles.acoustic_encoder]
backend = "hubert"
model = "{models["hubert"]}"
options = {{ prosody = false, layers = 2 }}

[roles.visual_encoder]
backend = "clip"
model = "{models["clip"]}"

[roles.text_encoder]
backend = "hf"
model = "{models["bert"]}"
options = {{ layers = 2 }}

[roles.fusion]
backend = "late"
""",
        encoding="utf-8",
    )
    return path


def _save_heads(settings: Settings, dims: dict[str, int]) -> None:
    """Random six-class heads where the tools look for them, so encoders decide the answer."""
    import torch

    from meragent.tools.heads import HeadConfig, build_head_module, save_head

    torch.manual_seed(1)
    for feature, dim in dims.items():
        config = HeadConfig(in_dim=dim, hidden_dims=[8], encoder=feature)
        save_head(build_head_module(config), config, settings.models_dir / "heads" / feature)


def _cached_features(settings: Settings) -> dict[str, np.ndarray]:
    root = settings.features_dir
    return {
        str(path.relative_to(root)): np.load(path, allow_pickle=False)
        for path in sorted(root.glob("*/*.npy"))
    }


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    # The runtime factories above live in this test module, which the workers cannot import.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        # The workers import the test doubles by name (the CLI tests' profile names them).
        runtime_env={
            "env_vars": {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "PYTHONPATH": str(DOUBLES_DIR),
            }
        },
    )
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Synthetic clips, tiny models and heads, and the in-process reference run."""
    from meragent.data.synth import make_synthetic_dataset
    from meragent.tools.registry import feature_name_for

    root = tmp_path_factory.mktemp("ray_world")
    manifest = make_synthetic_dataset(root / "data", N_CLIPS, seed=0)
    models = _save_tiny_models(root / "models")
    settings = load_settings(
        home=root / "home",
        profile=str(_write_profile(root / "tiny.toml", models)),
        num_frames=2,
        precision="fp32",  # batch 8 vs batch 1 within 1e-5 is an fp32 promise
    )
    dims = {"hubert": 32, "clip": 16, "bert": 32}
    layers = {"hubert": 2, "clip": 4, "bert": 2}  # feature names carry a non-default depth
    _save_heads(
        settings,
        {feature_name_for(str(models[n]), layers=layers[n]): d for n, d in dims.items()},
    )
    options = BatchOptions(progress=False, concurrency=2)
    local = run_batch(
        settings, manifest, "local", options, runtime=tiny_runtime(settings, track="all")
    )
    features = _cached_features(settings)
    return World(settings, manifest, features, local)


def _fresh_feature_cache(settings: Settings) -> None:
    """Empty the cache so the Ray encoders really run (nothing is served from disk)."""
    import shutil

    shutil.rmtree(settings.features_dir, ignore_errors=True)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_close(left: Any, right: Any, where: str = "") -> None:
    """Equal JSON-like values, floats within 1e-5 (batched forward passes round differently)."""
    if isinstance(left, float) or isinstance(right, float):
        assert isinstance(left, int | float) and isinstance(right, int | float), where
        assert math.isclose(left, right, rel_tol=1e-5, abs_tol=1e-5), f"{where}: {left}!={right}"
    elif isinstance(left, dict):
        assert isinstance(right, dict) and sorted(left) == sorted(right), where
        for key in left:
            assert_close(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list | tuple | np.ndarray):
        assert len(left) == len(right), where
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_close(a, b, f"{where}[{i}]")
    else:
        assert left == right, f"{where}: {left!r} != {right!r}"


def _frame_rows(run_dir: Path) -> list[dict[str, Any]]:
    frame = pd.read_parquet(run_dir / "results.parquet").drop(columns=list(TIMING_COLUMNS))
    rows = []
    for record in frame.to_dict(orient="records"):
        for key, value in record.items():
            if key.endswith("_json") and isinstance(value, str):
                record[key] = json.loads(value)
            elif isinstance(value, np.ndarray):
                record[key] = value.tolist()
        rows.append(record)
    return rows


def _steps(settings: Settings, run: str) -> dict[str, list[tuple[Any, ...]]]:
    with read_trace(settings.runs_dir / run) as store:
        return {
            clip: sorted(
                (s.node, s.model_id, s.error, s.retries, s.raw_output)
                for s in store.steps(run, clip)
            )
            for clip in store.clip_ids(run)
        }


@dataclass
class RayRun:
    summary: BatchSummary
    marker: Path  # exists once the encoder worker has been killed


@pytest.fixture(scope="module")
def ray_run(ray_local: Any, world: World, tmp_path_factory: pytest.TempPathFactory) -> RayRun:
    """One Ray batch over the same clips, during which an encoder worker is killed.

    One run serves both the equality and the fault-tolerance checks (a second run would double
    the file's time on two cores); equal outputs despite the kill is the stronger statement.
    """
    from meragent.graphs.ray_executor import RayOptions, run_batch_ray

    _fresh_feature_cache(world.settings)  # so the Ray encoders really run
    marker = tmp_path_factory.mktemp("crash") / "crashed"
    options = RayOptions(
        runtime_factory=partial(crashing_runtime, marker=marker),
        encoder_batch_size=8,
        max_restarts=2,
        max_task_retries=2,
    )
    batch = BatchOptions(progress=False, concurrency=2)
    summary = run_batch_ray(world.settings, world.manifest, "ray", batch, options)
    return RayRun(summary, marker)


# --------------------------------------------------------------------------- tests


def test_ray_outputs_equal_the_in_process_outputs(world: World, ray_run: RayRun) -> None:
    settings, summary = world.settings, ray_run.summary
    assert (world.local.n_ok, world.local.n_failed) == (N_CLIPS, 0)
    assert (summary.n_clips, summary.n_ok, summary.n_failed) == (N_CLIPS, N_CLIPS, 0)
    local_dir, ray_dir = settings.runs_dir / "local", settings.runs_dir / "ray"
    for name in ("discrete.csv", "openset.csv", "errors.csv"):
        assert _csv(ray_dir / name) == _csv(local_dir / name), name
    assert len(_csv(ray_dir / "discrete.csv")) == N_CLIPS
    assert_close(_frame_rows(ray_dir), _frame_rows(local_dir), "results")
    assert_close(
        json.loads((ray_dir / "metrics.json").read_text()),
        json.loads((local_dir / "metrics.json").read_text()),
        "metrics",
    )
    # The encoder actors recomputed every vector the in-process tools had cached.
    ray_features = _cached_features(settings)
    assert sorted(ray_features) == sorted(world.features) and len(ray_features) == 3 * N_CLIPS
    for key, vector in world.features.items():
        np.testing.assert_allclose(ray_features[key], vector, rtol=1e-5, atol=1e-5, err_msg=key)
    assert _steps(settings, "ray") == _steps(settings, "local")
    for role in ("reasoning", "labeler"):
        assert summary.usage[role]["calls"] == world.local.usage[role]["calls"] == N_CLIPS
    with read_trace(ray_dir) as store:
        run = store.get_run("ray")
        assert run is not None and run.status == "finished" and run.n_ok == N_CLIPS


def test_a_killed_encoder_worker_is_retried_and_no_clip_is_lost_or_doubled(
    world: World, ray_run: RayRun
) -> None:
    assert ray_run.marker.exists(), "the encoder worker never died: the test proved nothing"
    assert int(ray_run.marker.with_suffix(".calls").read_text()) >= 3  # the dead batch ran again
    assert (ray_run.summary.n_ok, ray_run.summary.n_failed) == (N_CLIPS, 0)
    ray_dir = world.settings.runs_dir / "ray"
    names = [row["name"] for row in _csv(ray_dir / "discrete.csv")]
    assert names == sorted(set(names)) and len(names) == N_CLIPS
    with read_trace(ray_dir) as store, read_trace(world.settings.runs_dir / "local") as local:
        assert store.clip_ids("ray") == local.clip_ids("local")
        assert store.step_count("ray") == local.step_count("local")  # no step written twice


def test_resume_of_a_finished_ray_run_sends_nothing_to_ray(world: World, ray_run: RayRun) -> None:
    from meragent.graphs.ray_executor import RayOptions, run_batch_ray

    ray_dir, local_dir = world.settings.runs_dir / "ray", world.settings.runs_dir / "local"
    with read_trace(ray_dir) as store:
        steps_before = store.step_count("ray")
    options = RayOptions(runtime_factory=tiny_runtime)
    again = run_batch_ray(
        world.settings, world.manifest, "ray", BatchOptions(progress=False, resume=True), options
    )
    assert (again.n_skipped, again.n_ok, again.n_failed) == (N_CLIPS, 0, 0)
    assert _csv(ray_dir / "discrete.csv") == _csv(local_dir / "discrete.csv")
    with read_trace(ray_dir) as store:
        assert store.step_count("ray") == steps_before


def test_missing_ray_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from meragent.graphs.ray_executor import run_batch_ray

    settings = load_settings(home=tmp_path / "home")
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra looks like
    with pytest.raises(ConfigError) as caught:
        run_batch_ray(settings, tmp_path / "manifest.csv", "noray")
    message = str(caught.value)
    assert "\n" not in message
    assert "--executor ray needs Ray Data" in message and "pip install 'meragent[ray]'" in message
    assert not (settings.runs_dir / "noray").exists()  # failed before touching the run


def test_errors_cross_stages_with_their_class_message_and_base() -> None:
    from meragent.graphs.batch import failure_stage
    from meragent.graphs.ray_stages import error_json, rebuild_error

    class CorruptStream(MediaError):
        pass

    cases = [
        (MediaError("clip a: no audio or video stream"), MediaError, "media"),
        (ModelLoadError("acoustic_encoder", "/m", "missing"), ModelLoadError, "pipeline"),
        (CorruptStream("bad bytes"), MediaError, "media"),
        (ZeroDivisionError("division by zero"), Exception, "pipeline"),
        (DataError("too short"), DataError, "data"),
    ]
    for original, expected_base, stage in cases:
        rebuilt = rebuild_error(error_json(original))
        assert type(rebuilt).__name__ == type(original).__name__
        assert str(rebuilt) == str(original)
        assert isinstance(rebuilt, expected_base)
        assert failure_stage(rebuilt) == stage


def test_batch_cli_runs_on_ray_with_the_same_answers_as_local(
    ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meragent.cli import app

    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    # The doubles, chosen explicitly by a profile (the Ray workers get the same Settings).
    monkeypatch.setenv("MERAGENT_PROFILE", str(write_fake_profile(tmp_path / "fake.toml")))
    manifest = write_manifest(tmp_path / "data", 6, bad_rows=1)
    runner = CliRunner()
    on_ray = runner.invoke(
        app, ["batch", str(manifest), "--run", "r", "--executor", "ray", "--concurrency", "2"]
    )
    assert on_ray.exit_code == 1, on_ray.output  # finished, with one unusable manifest row
    assert "run r: 6 ok, 0 degraded, 0 failed, 0 already done, 1 bad manifest rows" in on_ray.output
    local = runner.invoke(app, ["batch", str(manifest), "--run", "l"])
    assert local.exit_code == 1, local.output
    runs = tmp_path / "home" / "runs"
    for name in ("discrete.csv", "openset.csv", "errors.csv"):
        assert _csv(runs / "r" / name) == _csv(runs / "l" / name), name
    assert len(_csv(runs / "r" / "discrete.csv")) == 6


def test_batch_cli_executor_options_are_checked(
    ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meragent.cli import app

    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path / "home"))
    # The doubles, chosen explicitly by a profile (the Ray workers get the same Settings).
    monkeypatch.setenv("MERAGENT_PROFILE", str(write_fake_profile(tmp_path / "fake.toml")))
    manifest = write_manifest(tmp_path / "data", 2)
    runner = CliRunner()
    cases = {
        ("--executor", "local", "--address", "auto"): "need --executor ray",
        ("--executor", "spark"): "Invalid value for '--executor'",
        ("--executor", "ray", "--gpus-per-worker", "1"): "--gpus-per-worker 1 but the Ray "
        "cluster has 0 GPU(s); use --gpus-per-worker 0 to run the encoders on CPU",
    }
    for i, (extra, message) in enumerate(cases.items()):
        result = runner.invoke(app, ["batch", str(manifest), "--run", f"e{i}", *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert "Traceback" not in result.output
