"""Feature-cache provenance: a vector is reused only for the media and recipe that made it.

Regression tests for issue 11, defect 1: MER-NOISE copies share clip names with the clean
clips, and two models at different paths can share a basename; neither may ever be served the
other's cached vectors. Folders dropped in from MERTools (no metadata) are read as they are.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meragent.cli import app
from meragent.data.manifest import load_manifest
from meragent.data.media import decode_media
from meragent.schema import Clip
from meragent.tools.feature_cache import (
    META_FILE,
    FeatureCache,
    FeatureConflictError,
    FeatureRecipe,
    SourceStamp,
)
from meragent.tools.modality_tools import (
    PROSODY_FEATURE,
    AcousticTool,
    EncoderSlot,
    LexicalTool,
)

runner = CliRunner()
RECIPE = FeatureRecipe("/models/a/final", {"layers": 4, "pooling": "mean"})


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])


@pytest.fixture(scope="module")
def clean_and_noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``data synth`` 2 clips and their ``data corrupt`` copy: same clip names, other files."""
    root = tmp_path_factory.mktemp("mer_noise")
    code, _, err = cli("data", "synth", str(root / "c"), "--n", "2")
    assert code == 0, err
    code, _, err = cli("data", "corrupt", str(root / "c"), str(root / "n"), "--seed", "0")
    assert code == 0, err
    return root / "c" / "manifest.csv", root / "n" / "manifest.csv"


def vectors(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p, allow_pickle=False) for p in sorted(folder.glob("*.npy"))}


# ---------------------------------------------------------------- (a) features extract, CLI


def test_noisy_copies_are_extracted_not_served_the_clean_vectors(
    clean_and_noisy: tuple[Path, Path], tmp_path: Path
) -> None:
    clean, noisy = clean_and_noisy
    home = ["--home", str(tmp_path / "home")]
    folder = tmp_path / "home" / "features" / PROSODY_FEATURE
    code, out, err = cli("features", "extract", str(clean), "--encoder", "prosody", *home)
    assert code == 0, err
    assert (summary(out)["cached"], summary(out)["extracted"]) == (0, 2)
    clean_vectors = vectors(folder)
    code, out, err = cli("features", "extract", str(noisy), "--encoder", "prosody", *home)
    assert code == 0, err
    report = summary(out)
    assert (report["cached"], report["extracted"]) == (0, 2)
    assert report["stale"] == 2  # same names, other files: said so, and recomputed
    noisy_vectors = vectors(folder)
    assert sorted(noisy_vectors) == sorted(clean_vectors) == ["synth_000", "synth_001"]
    for name in clean_vectors:
        assert not np.allclose(noisy_vectors[name], clean_vectors[name])
    # The noisy copy's own vectors are now cached; the clean ones come back when asked for.
    code, out, _ = cli("features", "extract", str(noisy), "--encoder", "prosody", *home)
    assert code == 0 and (summary(out)["cached"], summary(out)["extracted"]) == (2, 0)
    code, out, _ = cli("features", "extract", str(clean), "--encoder", "prosody", *home)
    assert code == 0 and summary(out)["extracted"] == 2
    for name, vector in vectors(folder).items():
        np.testing.assert_array_equal(vector, clean_vectors[name])


# ---------------------------------------------------------------- (b) the graph's tool nodes


def _analyze_prosody(tool: AcousticTool, manifest: Path) -> dict[str, np.ndarray]:
    found = {}
    for clip in load_manifest(manifest).clips:
        assert clip.video is not None
        media = decode_media(clip.video, clip_id=clip.id, num_frames=2)
        clue = tool.analyze(clip, media)
        assert clue.available and clue.data["prosody_ref"]
        found[clip.id] = np.load(clue.data["prosody_ref"], allow_pickle=False)
    return found


def test_acoustic_tool_recomputes_prosody_for_the_noisy_copy(
    clean_and_noisy: tuple[Path, Path], tmp_path: Path
) -> None:
    from meragent.config import load_settings
    from meragent.tools.registry import build_toolset

    settings = load_settings(profile="offline", home=tmp_path / "home")
    tool = build_toolset(settings).acoustic
    assert isinstance(tool, AcousticTool) and tool.prosody
    clean, noisy = clean_and_noisy
    clean_vectors = _analyze_prosody(tool, clean)
    noisy_vectors = _analyze_prosody(tool, noisy)
    for name in clean_vectors:
        assert not np.allclose(noisy_vectors[name], clean_vectors[name])
    # what the cache now holds is the noisy clip's own prosody, as a fresh home would compute
    fresh = load_settings(profile="offline", home=tmp_path / "fresh")
    expected = _analyze_prosody(build_toolset(fresh).acoustic, noisy)  # type: ignore[arg-type]
    for name, vector in vectors(settings.features_dir / PROSODY_FEATURE).items():
        np.testing.assert_array_equal(vector, expected[name])


class CountingSpeechEncoder:
    """Stands in for a speech encoder: the mean of the waveform, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
        self.calls += 1
        return np.array([float(np.mean(audio)), float(np.std(audio))], dtype=np.float32)


def test_encoder_slot_recomputes_for_a_noisy_copy_and_reuses_for_the_same_file(
    clean_and_noisy: tuple[Path, Path], tmp_path: Path
) -> None:
    from meragent.tools.lazy import Lazy

    encoder = CountingSpeechEncoder()
    recipe = FeatureRecipe("/models/speech", {"layers": 4})
    slot = EncoderSlot(Lazy(lambda: encoder), "speech-UTT", "speech", recipe=recipe)
    tool = AcousticTool(cache=FeatureCache(tmp_path / "features"), encoder=slot, prosody=False)
    clean, noisy = (load_manifest(m).clips[0] for m in clean_and_noisy)
    assert clean.id == noisy.id and clean.video != noisy.video
    for clip in (clean, clean, noisy, noisy):
        assert clip.video is not None
        tool.analyze(clip, decode_media(clip.video, clip_id=clip.id, num_frames=1))
    assert encoder.calls == 2  # once per file: the repeats are served from the cache


class TextEncoderDouble:
    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.array([[float(len(text)), float(sum(map(ord, text)))] for text in texts])


def test_lexical_tool_recomputes_when_the_subtitle_changed(tmp_path: Path) -> None:
    from meragent.data.media_types import DecodedMedia
    from meragent.tools.lazy import Lazy

    encoder = TextEncoderDouble()
    slot = EncoderSlot(Lazy(lambda: encoder), "text-UTT", "text")
    tool = LexicalTool(cache=FeatureCache(tmp_path), encoder=slot)
    media = DecodedMedia(clip_id="c", sample_rate=16000, duration=1.0)
    first = tool.analyze(Clip(id="c", subtitle="hello there"), media)
    again = tool.analyze(Clip(id="c", subtitle="hello there"), media)
    other = tool.analyze(Clip(id="c", subtitle="go away"), media)
    assert encoder.calls == 2 and first.feature_ref == again.feature_ref == other.feature_ref
    assert np.load(str(other.feature_ref))[0] == len("go away")


def test_ray_encoder_stage_does_not_serve_a_vector_of_other_media(tmp_path: Path) -> None:
    """Stage 2 of the Ray executor looks the cache up with the clip's source, too."""
    from meragent.data.media_types import DecodedMedia
    from meragent.graphs.ray_stages import CLIP, EncoderStage, bytes_array, decode_clip, objects
    from meragent.tools.lazy import Lazy

    encoder = TextEncoderDouble()
    cache = FeatureCache(tmp_path)
    slot = EncoderSlot(Lazy(lambda: encoder), "text-UTT", "text")
    tool = LexicalTool(cache=cache, encoder=slot)
    cache.save("text-UTT", "c", np.zeros(2), source=SourceStamp.of_text("old"), recipe=slot.recipe)
    stage = object.__new__(EncoderStage)
    stage.tools = {"lexical": tool}
    clip = Clip(id="c", subtitle="new words")
    row = decode_clip(clip, lambda c: DecodedMedia(clip_id=c.id, sample_rate=16000, duration=1.0))
    batch = {CLIP: objects([clip.model_dump_json()])}
    batch.update({name: objects([value]) for name, value in row.items()})
    columns = stage(batch)
    assert list(columns["err_lexical"]) == [""] and encoder.calls == 1
    vector = bytes_array(columns["vec_lexical"][0])
    assert vector is not None and vector[0] == len("new words")


# ---------------------------------------------------------------- (c) same basename, two models


def test_two_models_with_the_same_basename_never_share_vectors(
    synth_dataset: Path, tmp_path: Path, tiny_hubert: Path
) -> None:
    first, second = tmp_path / "runs" / "a" / "final", tmp_path / "runs" / "b" / "final"
    shutil.copytree(tiny_hubert, first)
    shutil.copytree(tiny_hubert, second)
    home = ["--home", str(tmp_path / "home"), "--layers", "2"]
    code, out, err = cli(
        "features", "extract", str(synth_dataset), "--encoder", f"hubert:{first}", *home
    )
    assert code == 0, err
    assert summary(out)["feature"] == "final-last2-UTT"
    code, out, err = cli(
        "features", "extract", str(synth_dataset), "--encoder", f"hubert:{second}", *home
    )
    assert code == 2 and "{" not in out
    assert str(first.resolve()) in err and str(second.resolve()) in err
    assert "--feature-name" in err
    code, out, err = cli(
        "features", "extract", str(synth_dataset), "--encoder", f"hubert:{second}",
        "--feature-name", "final-b-UTT", *home,
    )  # fmt: skip
    assert code == 0, err
    assert (summary(out)["feature"], summary(out)["extracted"]) == ("final-b-UTT", 4)
    meta = json.loads((tmp_path / "home" / "features" / "final-b-UTT" / META_FILE).read_text())
    assert meta["model"] == str(second.resolve()) and meta["recipe"]["layers"] == 2


def test_a_toolset_for_another_model_fails_before_the_first_clip(tmp_path: Path) -> None:
    from meragent.config import load_settings
    from meragent.tools.registry import build_toolset

    cache = FeatureCache(tmp_path / "home" / "features")
    cache.save(
        PROSODY_FEATURE, "c", np.ones(11), recipe=FeatureRecipe("prosody", {"sample_rate": 8000})
    )
    settings = load_settings(profile="offline", home=tmp_path / "home")
    with pytest.raises(FeatureConflictError, match=r"sample_rate=8000.*sample_rate=16000"):
        build_toolset(settings)


# ---------------------------------------------------------------- (d) a changed media file


def test_a_rewritten_media_file_is_recomputed(synth_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dataset.parent, data)
    manifest = data / "manifest.csv"
    home = ["--home", str(tmp_path / "home")]
    folder = tmp_path / "home" / "features" / PROSODY_FEATURE
    assert cli("features", "extract", str(manifest), "--encoder", "prosody", *home)[0] == 0
    before = vectors(folder)
    target = data / "video" / "synth_002.mp4"
    shutil.copyfile(data / "video" / "synth_000.mp4", target)  # new content, size and mtime
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    code, out, err = cli("features", "extract", str(manifest), "--encoder", "prosody", *home)
    assert code == 0, err
    report = summary(out)
    assert (report["cached"], report["extracted"]) == (3, 1)
    assert report["stale"] == 1
    after = vectors(folder)
    np.testing.assert_array_equal(after["synth_002"], before["synth_000"])
    assert not np.allclose(after["synth_002"], before["synth_002"])
    # Only a touch (same bytes, new mtime) is enough: the file may have changed.
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    code, out, _ = cli("features", "extract", str(manifest), "--encoder", "prosody", *home)
    assert code == 0 and (summary(out)["cached"], summary(out)["extracted"]) == (3, 1)


# ---------------------------------------------------------------- (e) plain MERTools folders


def test_a_mertools_folder_is_read_as_it_is_and_listed_as_plain(tmp_path: Path) -> None:
    root = tmp_path / "features"
    mertools = root / "chinese-hubert-large-UTT"
    mertools.mkdir(parents=True)
    np.save(mertools / "sample_00000001.npy", np.arange(4, dtype=np.float32))
    np.save(mertools / "sample_00000002.npy", np.ones((3, 4), dtype=np.float32))  # (T, D)
    cache = FeatureCache(root)
    media = tmp_path / "sample_00000001.mp4"
    media.write_bytes(b"video")
    stamp = SourceStamp.of_files([media])
    recipe = FeatureRecipe("TencentGameMate/chinese-hubert-large", {"layers": 4})
    vector = cache.lookup(
        "chinese-hubert-large-UTT", "sample_00000001", source=stamp, recipe=recipe
    )
    np.testing.assert_array_equal(vector, np.arange(4))
    np.testing.assert_array_equal(
        cache.load("chinese-hubert-large-UTT", "sample_00000002"), np.ones(4)
    )
    cache.save(
        "chinese-hubert-large-UTT", "sample_00000003", np.zeros(4), source=stamp, recipe=recipe
    )
    assert not (mertools / META_FILE).exists()  # still a plain folder, as MERTools wrote it
    assert sorted(p.name for p in mertools.iterdir()) == [
        "sample_00000001.npy", "sample_00000002.npy", "sample_00000003.npy"
    ]  # fmt: skip
    ours = FeatureCache(root)
    ours.save("prosody-UTT", "sample_00000001", np.ones(11), source=stamp, recipe=RECIPE)

    code, out, err = cli("features", "check", str(root))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"2 feature folder(s) in {root}"
    assert lines[1].startswith("chinese-hubert-large-UTT: 3 vectors, dim 4, plain MERTools")
    assert lines[2] == (
        "prosody-UTT: 1 vectors, dim 11, meragent (1 tied to their source), "
        "/models/a/final (layers=4, pooling=mean)"
    )
    code, out, _ = cli("features", "check", str(root), "--json")
    listed = {entry["name"]: entry for entry in json.loads(out)}
    assert listed["chinese-hubert-large-UTT"]["provenance"] == "plain"
    assert listed["chinese-hubert-large-UTT"]["model"] is None
    assert listed["prosody-UTT"]["model"] == "/models/a/final"
    assert listed["prosody-UTT"]["dims"] == [11] and listed["prosody-UTT"]["with_source"] == 1


def test_features_check_flags_unreadable_files_with_rc_1(tmp_path: Path) -> None:
    folder = tmp_path / "x-UTT"
    folder.mkdir()
    (folder / "broken.npy").write_bytes(b"not numpy")
    np.save(folder / "fine.npy", np.ones(3, dtype=np.float32))
    code, out, _ = cli("features", "check", str(tmp_path))
    assert code == 1 and "1 unreadable: broken" in out
    code, _, err = cli("features", "check", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in err


# ---------------------------------------------------------------- (b) the same through `batch`


def _prosody_only_profile(path: Path) -> Path:
    roles = ["visual_encoder", "facial_expression", "text_encoder", "asr", "audio_llm"]
    roles += ["video_llm", "reasoning_llm", "labeler_llm"]
    text = '[roles.acoustic_encoder]\nbackend = "prosody"\n'
    text += "".join(f'\n[roles.{role}]\nbackend = "none"\n' for role in roles)
    text += '\n[roles.fusion]\nbackend = "late"\n\n[roles.grouper]\nbackend = "identity"\n'
    path.write_text(text, encoding="utf-8")
    return path


def test_batch_on_the_noisy_copy_caches_the_noisy_vectors(
    clean_and_noisy: tuple[Path, Path], tmp_path: Path
) -> None:
    from meragent_fakes import fake_run_deps

    from meragent.config import load_settings
    from meragent.graphs.batch import BatchOptions, run_batch
    from meragent.graphs.runtime import load_run_deps

    profile = _prosody_only_profile(tmp_path / "prosody.toml")
    settings = load_settings(profile=str(profile), home=tmp_path / "home", num_frames=2)
    folder = settings.features_dir / PROSODY_FEATURE
    found = {}
    for name, manifest in zip(("clean", "noisy"), clean_and_noisy, strict=True):
        runtime = load_run_deps(settings, track="all")
        fakes = fake_run_deps(settings=settings)
        runtime.chat_models, runtime.tally = fakes.chat_models, fakes.tally
        options = BatchOptions(progress=False, concurrency=2)
        summary = run_batch(settings, manifest, name, options, runtime=runtime)
        assert (summary.n_clips, summary.n_failed) == (2, 0)
        found[name] = vectors(folder)
    assert sorted(found["noisy"]) == ["synth_000", "synth_001"]
    for clip_id, clean_vector in found["clean"].items():
        assert not np.allclose(found["noisy"][clip_id], clean_vector)


# ---------------------------------------------------------------- extract, then the pipeline


def test_vectors_from_features_extract_are_reused_by_the_tools(
    synth_dataset: Path, tmp_path: Path, tiny_hubert: Path, tiny_bert: Path
) -> None:
    """Both paths record the same recipe and source, so `batch` after `extract` computes nothing."""
    from meragent.config import load_settings
    from meragent.data.media_types import DecodedMedia
    from meragent.tools.lazy import Lazy
    from meragent.tools.registry import build_toolset

    profile = tmp_path / "tiny.toml"
    profile.write_text(
        f'[roles.acoustic_encoder]\nbackend = "hubert"\nmodel = "{tiny_hubert}"\n'
        "options = { layers = 2 }\n\n"
        f'[roles.text_encoder]\nbackend = "hf"\nmodel = "{tiny_bert}"\noptions = {{ layers = 2 }}\n'
        + "".join(
            f'\n[roles.{role}]\nbackend = "none"\n'
            for role in ("visual_encoder", "facial_expression", "asr")
        ),
        encoding="utf-8",
    )
    home = ["--home", str(tmp_path / "home"), "--profile", str(profile)]
    for encoder in ("acoustic", "lexical", "prosody"):
        code, out, err = cli("features", "extract", str(synth_dataset), "--encoder", encoder, *home)
        assert code == 0, err
        assert summary(out)["extracted"] == 4
    settings = load_settings(profile=str(profile), home=tmp_path / "home")
    tools = build_toolset(settings)

    def no_model() -> None:
        raise AssertionError("the encoder ran although the cache held this clip's vector")

    for tool in (tools.acoustic, tools.lexical):
        tool.encoder.model = Lazy(no_model)  # type: ignore[union-attr]
    clip = load_manifest(synth_dataset).clips[0]
    assert clip.video is not None
    media = decode_media(clip.video, clip_id=clip.id, num_frames=1)
    acoustic = tools.acoustic.analyze(clip, media)
    lexical = tools.lexical.analyze(
        clip, DecodedMedia(clip_id=clip.id, sample_rate=16000, duration=1)
    )
    assert acoustic.error is None and lexical.error is None
    features = settings.features_dir
    assert acoustic.feature_ref == str(
        features / f"{tiny_hubert.name}-last2-UTT" / f"{clip.id}.npy"
    )
    assert lexical.feature_ref == str(features / f"{tiny_bert.name}-last2-UTT" / f"{clip.id}.npy")
    assert acoustic.data["prosody_ref"] == str(features / PROSODY_FEATURE / f"{clip.id}.npy")


def test_ray_graph_stage_ignores_a_vector_made_with_another_recipe(tmp_path: Path) -> None:
    """An encoder actor whose tool resolved another recipe (bf16 on its GPU, fp32 on the graph
    actor's CPU) must not have its vector saved under the graph stage's recipe."""
    from meragent.data.media_types import DecodedMedia
    from meragent.graphs.ray_stages import (
        CLIP,
        EncoderStage,
        StagedInputs,
        StagedTool,
        decode_clip,
        objects,
        staging_from_row,
    )
    from meragent.tools.lazy import Lazy

    def lexical(folder: str, recipe: FeatureRecipe) -> tuple[LexicalTool, TextEncoderDouble]:
        encoder = TextEncoderDouble()
        slot = EncoderSlot(Lazy(lambda: encoder), "text-UTT", "text", recipe=recipe)
        return LexicalTool(cache=FeatureCache(tmp_path / folder), encoder=slot), encoder

    on_gpu, gpu_encoder = lexical("gpu", FeatureRecipe("text", {"precision": "bf16"}, "text"))
    on_cpu, cpu_encoder = lexical("cpu", FeatureRecipe("text", {}, "text"))
    stage = object.__new__(EncoderStage)
    stage.tools = {"lexical": on_gpu}
    clip = Clip(id="c", subtitle="some words")
    media = DecodedMedia(clip_id="c", sample_rate=16000, duration=1.0)
    row = decode_clip(clip, lambda c: media)
    batch = {CLIP: objects([clip.model_dump_json()])}
    batch.update({name: objects([value]) for name, value in row.items()})
    columns = stage(batch)
    staged = StagedInputs()
    staged.put("c", staging_from_row(columns, 0))
    StagedTool("lexical", on_cpu, staged).analyze(clip, media)
    assert (gpu_encoder.calls, cpu_encoder.calls) == (1, 1)  # encoded again on the CPU side
    same, same_encoder = lexical("same", FeatureRecipe("text", {"precision": "bf16"}, "text"))
    StagedTool("lexical", same, staged).analyze(clip, media)
    assert same_encoder.calls == 0  # same recipe: the staged vector is used
