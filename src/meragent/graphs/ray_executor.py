"""``meragent batch --executor ray``: the batch of ``graphs.batch``, run as a Ray Data pipeline.

```
manifest (driver) → skip clips already ok in the run's store (resume)
  → decode + face crops          CPU tasks                      (ray_stages.decode_batch)
  → speech / image / text encoders  actor pool, num_gpus=G, batched (ray_stages.EncoderStage)
  → clip graph: tools, reasoning, labeler, fusion, answer    actor pool (ray_stages.GraphStage)
  → driver: trace steps + clip_result committed to runs/NAME/trace.sqlite, outputs regenerated
```

The driver keeps everything that makes a run a run: the ``flock``, the resume rule, the trace
store as commit log (only the driver writes it, so workers on other machines need no access to
it), the periodic and final outputs written by ``graphs.outputs``. A clip is committed once: rows
are deduplicated by clip id, and the store's primary key would replace a second row anyway.

Failures stay per clip: every stage records a clip's error in its row instead of raising; a worker
that dies is restarted and its batch retried by Ray (``max_restarts`` / ``max_task_retries``); a
block that still fails is dropped by Ray Data (``max_errored_blocks=-1``), its clips are run again
one per batch, and a clip that still kills its worker is recorded as failed (stage ``worker``),
to be retried by ``--resume``.

What differs from the in-process executor: there is no LangGraph checkpointer (a clip cut off
mid-graph restarts from its first node), and the feature cache is written by the graph workers,
so on several machines ``MERAGENT_HOME`` should be a shared filesystem for the cache to be shared.
Ray is imported only here and only when this executor runs (optional extra ``meragent[ray]``).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from meragent.config import Settings
from meragent.errors import ConfigError, MeragentError, one_line
from meragent.graphs.ray_stages import (
    CLIP_ID,
    PAYLOAD,
    USAGE,
    EncoderStage,
    GraphStage,
    RuntimeFactory,
    StageContext,
    decode_batch,
    without_chat_roles,
    worker_environment,
)
from meragent.graphs.session import BatchOptions, BatchSummary, ClipResult, RunSession
from meragent.graphs.trace import TraceStore
from meragent.schema import Clip, ClipFailure, TraceStep

INSTALL_HINT = "pip install 'meragent[ray]'"
LOST_STAGE = "worker"
LOST_REASON = "its Ray worker died on every retry, also with the clip alone in its batch"


@dataclass
class RayOptions:
    """How to run a batch on Ray; validated on construction.

    ``address``: None starts a local Ray (or uses the one this process already initialised),
    ``"auto"`` or ``HOST:PORT`` joins a running cluster. ``gpus_per_worker``: GPUs per encoder
    actor (0: encoders on CPU). Worker counts default to one encoder actor per
    ``gpus_per_worker`` GPUs of the cluster (1 without GPUs) and as many graph actors; CPU shares
    default to what the cluster can give without starving the decode tasks.
    ``llm_urls``: OpenAI-compatible servers for the LLM roles, clips spread over them.
    ``runtime_factory``: builds each worker's RunDeps (default ``graphs.runtime.load_run_deps``).
    """

    address: str | None = None
    gpus_per_worker: float = 0.0
    encoder_batch_size: int = 16
    encoder_workers: int | None = None
    graph_workers: int | None = None
    decode_cpus: float | None = None
    actor_cpus: float | None = None
    max_restarts: int = 3
    max_task_retries: int = 3
    llm_urls: tuple[str, ...] = ()
    runtime_factory: RuntimeFactory | None = None

    def __post_init__(self) -> None:
        if self.gpus_per_worker < 0:
            raise ConfigError("--gpus-per-worker must be 0 or more")
        if self.encoder_batch_size < 1:
            raise ConfigError("the encoder batch size must be at least 1")
        for name in ("encoder_workers", "graph_workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        for name in ("decode_cpus", "actor_cpus"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.max_restarts < 0 or self.max_task_retries < 0:
            raise ConfigError("max_restarts and max_task_retries must be 0 or more")
        self.llm_urls = tuple(url for url in self.llm_urls if url)


@dataclass(frozen=True)
class ResourcePlan:
    """Actor counts and resource shares for one run, derived from the cluster's size."""

    encoder_workers: int
    graph_workers: int
    decode_cpus: float
    actor_cpus: float
    gpus_per_worker: float


def import_ray() -> Any:
    """``ray`` with Ray Data, or a one-line ConfigError saying how to install it."""
    try:
        import ray
        import ray.data  # Ray Data ships in the ray[data] extra, not in plain ray
    except ImportError as exc:
        raise ConfigError(
            f"--executor ray needs Ray Data, which is not installed ({exc}); {INSTALL_HINT}"
        ) from None
    return ray


def plan_resources(cluster: dict[str, float], options: RayOptions) -> ResourcePlan:
    """Worker counts and CPU shares for ``cluster`` (``ray.cluster_resources()``)."""
    cpus = float(cluster.get("CPU", 1.0))
    gpus = float(cluster.get("GPU", 0.0))
    per_gpu = options.gpus_per_worker
    if per_gpu > 0 and gpus < per_gpu:
        raise ConfigError(
            f"--gpus-per-worker {per_gpu:g} but the Ray cluster has {gpus:g} GPU(s); "
            "use --gpus-per-worker 0 to run the encoders on CPU"
        )
    default_encoders = max(1, int(gpus // per_gpu)) if per_gpu > 0 else 1
    encoders = options.encoder_workers or default_encoders
    graphs = options.graph_workers or encoders
    # Actors hold their CPUs for the whole run: give them at most half the cluster, so the
    # decode tasks always have room and the pipeline cannot stall.
    actor_cpus = options.actor_cpus or min(1.0, cpus / (2 * (encoders + graphs)))
    decode_cpus = options.decode_cpus or min(1.0, cpus / 2)
    return ResourcePlan(encoders, graphs, decode_cpus, actor_cpus, per_gpu)


@contextmanager
def ray_session(ray: Any, address: str | None) -> Iterator[bool]:
    """Use this process's Ray, or start / join one for the run (and shut it down after)."""
    if ray.is_initialized():
        yield False
        return
    kwargs: dict[str, Any] = {
        "address": address,
        "runtime_env": {"env_vars": worker_environment(dict(os.environ))},
        "logging_level": "WARNING",
    }
    if address is None:
        kwargs["include_dashboard"] = False
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray instance"
        message = one_line(exc)
        raise ConfigError(f"cannot start or reach {where}: {message}") from None
    try:
        yield True
    finally:
        ray.shutdown()


@contextmanager
def data_context(ray: Any, progress: bool) -> Iterator[None]:
    """Ray Data settings for the run: drop (and report) failed blocks instead of aborting."""
    import logging

    context = ray.data.DataContext.get_current()
    saved = (context.max_errored_blocks, context.enable_progress_bars)
    context.max_errored_blocks = -1
    context.enable_progress_bars = progress
    # Ray Data announces every execution at INFO level; the batch has its own progress line.
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        context.max_errored_blocks, context.enable_progress_bars = saved
        data_logger.setLevel(level)


def build_dataset(
    ray: Any,
    todo: list[tuple[int, Clip]],
    context: StageContext,
    plan: ResourcePlan,
    options: RayOptions,
    *,
    isolate: bool = False,
) -> Any:
    """The lazy Ray Data pipeline from the clips to one result row per clip.

    ``isolate``: one clip per batch in every stage (the retry of batches Ray gave up on).
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        return _stages(ray, todo, context, plan, options, isolate)


def _stages(
    ray: Any,
    todo: list[tuple[int, Clip]],
    context: StageContext,
    plan: ResourcePlan,
    options: RayOptions,
    isolate: bool,
) -> Any:
    items = [{"seq": seq, "clip": clip.model_dump_json()} for seq, clip in todo]
    batch = options.encoder_batch_size
    dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch)))
    retries = actor_retry_args(dataset, options)
    dataset = dataset.map_batches(
        decode_batch,
        fn_kwargs={"context": context},
        batch_size=batch,
        batch_format="numpy",
        num_cpus=plan.decode_cpus,
    )
    dataset = dataset.map_batches(
        EncoderStage,
        fn_constructor_kwargs={"context": context},
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.encoder_workers),
        num_cpus=plan.actor_cpus,
        num_gpus=plan.gpus_per_worker or None,
        **retries,
    )
    return dataset.map_batches(
        GraphStage,
        fn_constructor_kwargs={"context": context},
        batch_size=1 if isolate else max(1, 2 * context.concurrency),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.graph_workers),
        num_cpus=plan.actor_cpus,
        **retries,
    )


def actor_retry_args(dataset: Any, options: RayOptions) -> dict[str, int]:
    """Bounded actor restarts and task retries (Ray Data's own default is to retry forever).

    Ray 2.5x-2.6x takes them only as extra remote arguments (deprecated there, with no named
    replacement yet): pass them while ``map_batches`` accepts them, else keep Ray's default.
    """
    import inspect

    parameters = inspect.signature(dataset.map_batches).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return {}
    return {"max_restarts": options.max_restarts, "max_task_retries": options.max_task_retries}


# --------------------------------------------------------------------------- driver side


def row_result(row: dict[str, Any]) -> ClipResult:
    """The ``ClipResult`` of one graph-stage row (its trace steps and usage with it)."""
    payload = json.loads(str(row[PAYLOAD]))
    clip_id, seq = str(row[CLIP_ID]), int(row["seq"])
    steps = tuple(
        (TraceStep.model_validate(entry["step"]), entry.get("inputs"))
        for entry in payload.get("steps", [])
    )
    usage = json.loads(str(row[USAGE])) if row.get(USAGE) else {}
    latency = float(payload.get("latency_s", 0.0))
    if payload["status"] == "ok":  # answered: ok or degraded, decided as in-process
        return ClipResult.answered(seq, clip_id, payload["output"], latency, steps=steps,
                                   usage=usage)  # fmt: skip
    return ClipResult(
        seq=seq,
        clip_id=clip_id,
        status="failed",
        latency_s=latency,
        result={"clip": payload.get("clip")},
        stage=payload["stage"],
        error=payload["error"],
        reason=payload["reason"],
        steps=steps,
        usage=usage,
    )


def commit_row(store: TraceStore, run_id: str, row: dict[str, Any]) -> ClipFailure | None:
    """Write one graph-stage row to the store (steps and result together); its outcome."""
    result = row_result(row)
    store.commit_clip(run_id, result)
    return result.outcome


def lost_result(seq: int, clip: Clip) -> ClipResult:
    """A clip whose batch Ray gave up on: failed, so that ``--resume`` tries it again."""
    return ClipResult.failure(seq, clip.id, clip, LOST_STAGE, LOST_REASON, "WorkerLost", 0.0)


def settings_secrets(settings: Settings) -> list[str]:
    return [settings.llm_api_key.get_secret_value()] if settings.llm_api_key else []


def run_batch_ray(
    settings: Settings,
    source: Path | str | None,
    run_name: str,
    options: BatchOptions | None = None,
    ray_options: RayOptions | None = None,
) -> BatchSummary:
    """Run every clip of ``source`` on Ray into ``runs_dir/run_name`` (same files as run_batch)."""
    options = options or BatchOptions()
    ray = import_ray()  # fail before touching the run folder
    executor = RayExecutor(ray, settings, ray_options or RayOptions())
    with RunSession(settings, source, run_name, options, secrets=settings_secrets(settings)) as run:
        return run.run(executor)


class RayExecutor:
    """Clips through the Ray Data pipeline; yields each clip's result once, as rows arrive."""

    def __init__(self, ray: Any, settings: Settings, ray_options: RayOptions) -> None:
        self.ray, self.settings, self.ray_options = ray, settings, ray_options
        self._grouper: Any = None

    def usage(self) -> dict[str, Any]:
        return {}  # every row carries its own usage; the session adds them up

    def grouper(self, session: RunSession) -> Any:
        """metrics.json's grouper: the one the workers' runtime has (built on the driver)."""
        if self._grouper is None and self.ray_options.runtime_factory is None:
            from meragent.graphs.runtime import profile_grouper

            return profile_grouper(self.settings)
        if self._grouper is None:
            self._grouper = self._driver_runtime(session).grouper
        return self._grouper

    def _driver_runtime(self, run: RunSession) -> Any:
        context = stage_context(self.settings, run.run_id, run.options, self.ray_options)
        return context.runtime(without_chat_roles(context.cpu_settings(), only_backend="local"))

    def results(self, session: RunSession, todo: list[tuple[int, Clip]]) -> Iterator[ClipResult]:
        ray, ray_options = self.ray, self.ray_options
        context = stage_context(self.settings, session.run_id, session.options, ray_options)
        # Build the runtime once here (without loading local LLM weights): a bad profile, model
        # path or LLM endpoint fails now, as one line, instead of killing every worker that tries.
        self._grouper = self._driver_runtime(session).grouper
        committed: set[str] = set()

        def fresh(rows: Iterator[dict[str, Any]]) -> Iterator[ClipResult]:
            for row in rows:
                if str(row[CLIP_ID]) not in committed:  # never twice, whatever Ray retried
                    committed.add(str(row[CLIP_ID]))
                    yield row_result(row)

        with ray_session(ray, ray_options.address), data_context(ray, progress=False):
            plan = plan_resources(ray.cluster_resources(), ray_options)
            context = replace(context, gpu=plan.gpus_per_worker > 0)
            dataset = build_dataset(ray, todo, context, plan, ray_options)
            yield from fresh(_result_rows(ray, dataset))
            lost = [(seq, clip) for seq, clip in todo if clip.id not in committed]
            if lost and (ray_options.encoder_batch_size > 1 or session.options.concurrency > 1):
                # Ray gave up on whole batches: run their clips again one per batch, so that only
                # a clip that itself kills its worker is lost.
                alone = replace(ray_options, encoder_batch_size=1)
                dataset = build_dataset(ray, lost, context, plan, alone, isolate=True)
                yield from fresh(_result_rows(ray, dataset))
            for seq, clip in todo:
                if clip.id not in committed:
                    yield lost_result(seq, clip)


def stage_context(
    settings: Settings, run_id: str, options: BatchOptions, ray_options: RayOptions
) -> StageContext:
    """What the workers rebuild the runtime from; the first ``--llm-url`` is the default URL."""
    from meragent.graphs.runtime import load_run_deps

    if ray_options.llm_urls:
        settings = settings.model_copy(update={"llm_base_url": ray_options.llm_urls[0]})
    return StageContext(
        settings=settings,
        track=options.run_track,
        run_id=run_id,
        factory=ray_options.runtime_factory or load_run_deps,
        token=uuid.uuid4().hex,
        concurrency=options.concurrency,
        llm_urls=ray_options.llm_urls,
    )


def _result_rows(ray: Any, dataset: Any) -> Iterator[dict[str, Any]]:
    """The pipeline's rows; a failure of Ray itself becomes one line that says what to do."""
    data_errors = getattr(ray.data, "exceptions", None)
    failures: tuple[type[BaseException], ...] = tuple(
        cls
        for cls in (
            getattr(ray.exceptions, "RayError", None),
            getattr(data_errors, "SystemException", None),
            getattr(data_errors, "ExecutionTimeoutError", None),
        )
        if isinstance(cls, type) and issubclass(cls, BaseException)
    )
    try:
        yield from dataset.iter_rows()
    except failures as exc:
        first = one_line(exc)
        raise MeragentError(
            f"the Ray pipeline stopped ({type(exc).__name__}: {first[:300]}); finished clips "
            "are saved: fix the cause, then run again with --resume"
        ) from exc
