"""Entry points behind ``meragent run`` and ``meragent demo``.

``run_one`` answers a single clip (a media file, a one-clip manifest, or ``MANIFEST#CLIP``) and
records its steps in the ``single`` run's trace store; a clip that fails raises
:class:`ClipFailedError` (exit code 1: the command ran, the clip did not), a clip answered from
what remained of broken media comes back with ``status="degraded"``. ``run_demo`` makes (or
reuses) synthetic clips under ``settings.home/demo`` and runs the whole graph on them as the
batch ``demo``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meragent.config import Settings
from meragent.errors import ConfigError, DataError, MeragentError
from meragent.graphs.batch import BatchOptions, BatchSummary, run_batch, run_dir_for
from meragent.graphs.runtime import RunDeps, load_run_deps
from meragent.graphs.session import ClipResult
from meragent.graphs.state import TRACKS
from meragent.graphs.trace import open_trace
from meragent.schema import Clip

SINGLE_RUN = "single"
DEMO_RUN = "demo"
#: Token budgets of the demo's local LLMs, so two clips take about a minute on 2 CPU cores.
DEMO_MAX_NEW_TOKENS: dict[str, int] = {"reasoning_llm": 64, "labeler_llm": 24}


def split_target(target: str) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH#CLIP`` (the whole string wins when it names an existing file)."""
    whole = Path(target).expanduser()
    if whole.exists() or "#" not in target:
        return whole, None
    path, _, key = target.rpartition("#")
    return Path(path).expanduser(), key or None


def resolve_clip(target: str, settings: Settings) -> Clip:
    """The clip a ``meragent run`` argument names (DataError with the reason otherwise)."""
    from meragent.data.manifest import load_manifest

    path, key = split_target(target)
    loaded = load_manifest(path, data_root=settings.data_root)
    clips = loaded.clips
    if key is not None:
        for clip in clips:
            if clip.id == key:
                return clip
        if key.isdigit() and int(key) < len(clips):
            return clips[int(key)]
        bad = next((e for e in loaded.errors if e.clip_id == key), None)
        if bad is not None:
            raise DataError(f"clip {key} in {path}: {bad.reason}")
        raise DataError(f"no clip {key!r} in {path} ({len(clips)} clips)")
    if len(clips) == 1:
        return clips[0]
    if not clips:
        reason = loaded.errors[0].reason if loaded.errors else "it lists no clips"
        raise DataError(f"no usable clip in {path}: {reason}")
    raise DataError(
        f"{path} has {len(clips)} clips; name one as {path}#CLIP_ID (or use meragent batch)"
    )


class ClipFailedError(MeragentError):
    """The clip of ``meragent run`` failed in the graph (recorded in the trace store)."""

    exit_code = 1


@dataclass
class ClipOutcome:
    """One clip's final graph output and where its trace lives.

    ``status``: ``ok``, or ``degraded`` with ``degraded_reason`` (media not decoded, answered
    from the subtitle).
    """

    clip: Clip
    output: dict[str, Any]
    run_dir: Path
    run_id: str
    latency_s: float
    n_steps: int
    status: str = "ok"
    degraded_reason: str | None = None


def run_one(
    settings: Settings,
    target: str,
    *,
    track: str = "all",
    run_name: str = SINGLE_RUN,
    runtime: RunDeps | None = None,
) -> ClipOutcome:
    """Run the graph on one clip; its steps land in ``runs_dir/run_name/trace.sqlite``."""
    from meragent.graphs.builder import build_graph

    if track not in TRACKS:
        raise ConfigError(f"unknown track {track!r} (choose from {', '.join(TRACKS)})")
    clip = resolve_clip(target, settings)
    run_dir = run_dir_for(settings, run_name)
    rt = runtime or load_run_deps(settings, track=track)
    with open_trace(run_dir, secrets=rt.secrets) as store:
        known = store.clip_ids(run_name)
        seq = known.index(clip.id) if clip.id in known else len(known)
        store.start_run(
            run_name,
            track=track,
            profile=settings.profile,
            config=settings.masked_dump(),
            n_clips=len(known) + (clip.id not in known),
        )
        graph = build_graph(track)
        context = rt.context(trace=store)
        clock = time.perf_counter()
        try:
            output = dict(graph.invoke({"run_id": run_name, "clip": clip}, context=context))
        except Exception as exc:
            failure = ClipResult.failed(seq, clip, exc, time.perf_counter() - clock)
            store.commit_clip(run_name, failure)
            store.finish_run(run_name, status="finished", usage=rt.tally.as_dict())
            message = f"clip {clip.id} failed [{failure.stage}]: {failure.reason}"
            raise ClipFailedError(store.scrub(message)) from exc
        latency = time.perf_counter() - clock
        result = ClipResult.answered(seq, clip.id, output, latency)
        store.commit_clip(run_name, result)
        store.finish_run(run_name, status="finished", usage=rt.tally.as_dict())
        n_steps = len(store.steps(run_name, clip.id))
        reason = store.scrub(result.reason) if result.reason is not None else None
    status = "ok" if reason is None else "degraded"
    return ClipOutcome(clip, output, run_dir, run_name, latency, n_steps, status, reason)


@dataclass
class DemoResult:
    """The demo batch and where to look afterwards."""

    summary: BatchSummary
    manifest: Path
    html: Path


def demo_manifest(settings: Settings, n_clips: int) -> Path:
    """Reuse ``home/demo/clips/manifest.csv`` when it has enough clips, else make it."""
    from meragent.data.synth import make_synthetic_dataset

    folder = settings.home / "demo" / "clips"
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        with manifest.open(encoding="utf-8") as handle:
            existing = sum(1 for line in handle if line.strip()) - 1
        if existing >= n_clips:
            return manifest
    return make_synthetic_dataset(folder, n_clips, seed=0)


def demo_settings(settings: Settings) -> Settings:
    """The settings with the local chat roles' ``max_new_tokens`` capped for the demo."""
    models = dict(settings.models)
    for role_name, cap in DEMO_MAX_NEW_TOKENS.items():
        role = settings.role(role_name)
        if role.backend != "local":
            continue
        budget = min(int(role.options.get("max_new_tokens", cap)), cap)
        models[role_name] = role.model_copy(
            update={"options": {**role.options, "max_new_tokens": budget}}
        )
    return settings.model_copy(update={"models": models})


def run_demo(
    settings: Settings, *, n_clips: int = 2, progress: bool = True, runtime: RunDeps | None = None
) -> DemoResult:
    """Synthetic clips through the full graph (track ``all``), then an HTML trace."""
    from meragent.graphs.report import export_run_html

    if n_clips < 1:
        raise ConfigError("--clips must be at least 1")
    manifest = demo_manifest(settings, n_clips)
    options = BatchOptions(track="all", overwrite=True, progress=progress, limit=n_clips)
    summary = run_batch(demo_settings(settings), manifest, DEMO_RUN, options, runtime=runtime)
    html = export_run_html(summary.run_dir, summary.run_dir / "trace.html")
    return DemoResult(summary=summary, manifest=manifest, html=html)
