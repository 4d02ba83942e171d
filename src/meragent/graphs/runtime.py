"""Everything a graph run needs, loaded once from Settings: tools, chat models, decoder, fusion.

``load_run_deps`` loads only what the track needs (no labeler for six-class tracks, no LLM at
all when a trained fusion head answers them). A profile may hand the whole job to a plug-in: the
``run_deps`` role's backend ``py:MODULE:ATTR`` names a factory ``(settings, track, role) ->
RunDeps`` (how tests run the CLI, subprocesses and Ray workers on their doubles). The profile's
``grouper`` role scores open-set labels, in the evaluator node and in ``metrics.json``, with the
options ``meragent eval ov`` uses for the same grouping (``profile_grouper``); it loads its
encoder on first use only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meragent.agents.chat import RoleChat, UsageTally, make_chat_model, policy_for
from meragent.config import RoleConfig, Settings
from meragent.errors import ConfigError
from meragent.graphs.context import GraphContext, StepSink
from meragent.graphs.media_cache import MediaCache, MediaDecoder, default_decoder
from meragent.tools.base import ToolSet
from meragent.tools.lazy import Lazy

#: Chat roles of the graph and the profile role that configures each.
CHAT_ROLES: dict[str, str] = {"reasoning": "reasoning_llm", "labeler": "labeler_llm"}


@dataclass
class RunDeps:
    """Loaded models and helpers shared by every clip of a run (``graphs.runtime.Runtime`` before;
    renamed so it does not clash with ``langgraph.runtime.Runtime``)."""

    tools: ToolSet
    chat_models: dict[str, RoleChat | None]
    decoder: MediaDecoder
    tally: UsageTally
    fusion_model: Any = None
    fusion_weights: dict[str, float] = field(default_factory=dict)
    llm_weight: float = 1.0
    grouper: Any = None
    features_dir: Path | None = None
    labeler_few_shot: bool = True
    secrets: list[str] = field(default_factory=list)

    def context(
        self,
        *,
        trace: StepSink | None = None,
        media: MediaCache | None = None,
        tools: ToolSet | None = None,
        structured: bool | None = None,
    ) -> GraphContext:
        """The graph context of these deps (``media`` default: a cache over ``decoder``)."""
        return GraphContext(
            tools=self.tools if tools is None else tools,
            media=media if media is not None else MediaCache(self.decoder),
            reasoning=self.chat_models.get("reasoning"),
            labeler=self.chat_models.get("labeler"),
            fusion_model=self.fusion_model,
            fusion_weights=self.fusion_weights,
            llm_weight=self.llm_weight,
            grouper=self.grouper,
            features_dir=self.features_dir,
            trace=trace,
            structured=structured,
            few_shot=self.labeler_few_shot,
        )

    def model_ids(self) -> dict[str, str]:
        """Model id per chat role, for the run record."""
        return {role: chat.model_id for role, chat in self.chat_models.items() if chat is not None}


def _prices(options: dict[str, Any]) -> tuple[float, float]:
    """USD per 1,000 input / output tokens from a role's options (0 when not given)."""
    return (
        float(options.get("usd_per_1k_input", 0.0)),
        float(options.get("usd_per_1k_output", 0.0)),
    )


def needed_chat_roles(track: str, trained_fusion: bool) -> list[str]:
    """Which chat roles a track uses."""
    roles = []
    if track in ("ov", "all") or not trained_fusion:
        roles.append("reasoning")
    if track in ("ov", "all"):
        roles.append("labeler")
    return roles


def labeler_few_shot(role: RoleConfig) -> bool:
    """Few-shot examples for a plain model; none for a LoRA adapter (tuned without them)."""
    return bool(role.options.get("few_shot", role.adapter is None))


def _load_fusion(settings: Settings) -> Any:
    role = settings.role("fusion")
    if role.backend != "attention" or not role.model:
        return None  # late fusion until a trained head is named
    from meragent.tools.fusion_model import load_fusion_model

    return load_fusion_model(Path(role.model), device=settings.resolved_device())


def load_run_deps(settings: Settings, *, track: str) -> RunDeps:
    """The run's deps: the ``run_deps`` role's plug-in when the profile names one, else
    the profile's tools and chat models for ``track`` (real weights, loaded on first use)."""
    role = settings.role("run_deps")
    if role.enabled:
        from meragent.plugins import is_plugin, load_plugin

        if not is_plugin(role.backend):
            raise ConfigError(
                f"role run_deps: backend {role.backend!r} must be 'none' or 'py:MODULE:ATTR'"
            )
        deps = load_plugin(role.backend, role="run_deps")(settings, track, role)
        if not isinstance(deps, RunDeps):
            raise ConfigError(f"role run_deps: {role.backend} returned {type(deps).__name__}")
        return deps
    return _load_profile_deps(settings, track=track)


def _load_profile_deps(settings: Settings, *, track: str) -> RunDeps:
    from meragent.tools.registry import build_toolset

    tally = UsageTally()
    fusion_model = _load_fusion(settings)
    chats: dict[str, RoleChat | None] = dict.fromkeys(CHAT_ROLES)
    for name in needed_chat_roles(track, fusion_model is not None):
        role = settings.role(CHAT_ROLES[name])
        if not role.enabled:
            continue
        model = make_chat_model(role, settings, role_name=CHAT_ROLES[name])
        chats[name] = RoleChat(
            name,
            model,
            policy=policy_for(role, settings),
            tally=tally,
            prices=_prices(role.options),
        )
    fusion_options = settings.role("fusion").options
    secrets = [settings.llm_api_key.get_secret_value()] if settings.llm_api_key else []
    return RunDeps(
        tools=build_toolset(settings),
        chat_models=chats,
        decoder=default_decoder(num_frames=settings.num_frames, sample_rate=settings.sample_rate),
        tally=tally,
        fusion_model=fusion_model,
        fusion_weights={str(k): float(v) for k, v in fusion_options.get("weights", {}).items()},
        llm_weight=float(fusion_options.get("llm_weight", 1.0)),
        features_dir=settings.features_dir,
        labeler_few_shot=labeler_few_shot(settings.role("labeler_llm")),
        grouper=profile_grouper(settings),
        secrets=secrets,
    )


# --------------------------------------------------------------------------- grouper


def grouper_options(role: RoleConfig) -> dict[str, Any]:
    """The options of the profile's grouper with the defaults ``meragent eval ov`` applies.

    ``embedding``: the role's ``model`` is the sentence encoder (default the bundled MiniLM),
    ``options`` may set ``tau``, ``scope`` and ``word_forms``; ``cached``: ``model`` (or
    ``options.groups``) is the groups JSON file.
    """
    backend = role.backend
    if backend == "embedding":
        from meragent.eval.embedding_grouper import DEFAULT_TAU

        return {
            "encoder": role.model or "bundled:minilm",
            "tau": float(role.options.get("tau", DEFAULT_TAU)),
            "scope": str(role.options.get("scope", "sample")),
            "word_forms": role.options.get("word_forms"),
        }
    if backend == "cached":
        return {"path": role.model or role.options.get("groups")}
    return dict(role.options)


class ProfileGrouper:
    """The profile's grouper, built on first use and called by one thread at a time.

    Built lazily so a run without open-set ground truth never loads the grouper's encoder; the
    lock because the evaluator nodes of parallel clips share it and fitting mutates it.
    :meth:`fresh` gives an unfitted copy (sharing the loaded encoder), so ``metrics.json`` fits
    every label at once, exactly as ``meragent eval ov`` does on the submission file.
    """

    def __init__(self, name: str, options: dict[str, Any], build: Callable[[], Any]) -> None:
        self.name = name
        self.options = options
        self._build = build
        self._inner: Any = None
        self._lock = threading.Lock()

    def fresh(self) -> ProfileGrouper:
        return ProfileGrouper(self.name, self.options, self._build)

    def describe(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.options.items()}

    def _get(self) -> Any:
        if self._inner is None:
            self._inner = self._build()
        return self._inner

    def fit(self, labels: Iterable[str]) -> None:
        with self._lock:
            fit = getattr(self._get(), "fit", None)
            if callable(fit):
                fit(labels)

    def group_ids(self, sample: str, labels: Sequence[str]) -> list[str]:
        with self._lock:
            return list(self._get().group_ids(sample, labels))


def profile_grouper(settings: Settings) -> Any:
    """The grouper the profile names (``identity`` when the role is ``none``)."""
    from meragent.eval.grouping import IdentityGrouper, available_groupers

    role = settings.role("grouper")
    backend = role.backend if role.enabled else "identity"
    if backend == "identity":
        return IdentityGrouper()
    if backend not in available_groupers():
        known = ", ".join(available_groupers())
        raise ConfigError(f"profile grouper {backend!r} is unknown (known: {known})")
    options = grouper_options(role)
    encoder = Lazy(lambda: _load_grouper_encoder(options))  # shared by every fresh copy
    return ProfileGrouper(
        backend, options, lambda: _build_grouper(backend, options, settings, encoder)
    )


def _load_grouper_encoder(options: dict[str, Any]) -> Any:
    from meragent.tools.sentence_encoder import load_sentence_encoder

    return load_sentence_encoder(str(options["encoder"]), device="cpu")


def _build_grouper(
    backend: str, options: dict[str, Any], settings: Settings, encoder: Lazy[Any]
) -> Any:
    from meragent.eval.grouping import get_grouper

    if backend == "embedding":
        rest = {k: v for k, v in options.items() if k != "encoder"}
        return get_grouper("embedding", encoder=encoder.get(), **rest)
    if backend == "cached":
        if not options.get("path"):
            raise ConfigError("profile grouper 'cached' needs model = PATH of a groups JSON file")
        return get_grouper("cached", path=Path(str(options["path"])))
    if backend == "llm":
        role = settings.role("reasoning_llm")
        chat_model = make_chat_model(role, settings, role_name="reasoning_llm")
        cache_dir = settings.cache_dir / "llm_groups"
        return get_grouper("llm", chat_model=chat_model, cache_dir=cache_dir)
    return get_grouper(backend, **options)


def describe_grouper(grouper: Any) -> dict[str, Any]:
    """Which grouper scores open-set labels and with what (tau, scope, encoder ...)."""
    info: dict[str, Any] = {"name": str(getattr(grouper, "name", type(grouper).__name__))}
    describe = getattr(grouper, "describe", None)
    if callable(describe):
        return {**info, **describe()}
    for key in ("tau", "scope"):
        value = getattr(grouper, key, None)
        if value is not None:
            info[key] = value
    return info


def grouper_label(grouper: Any) -> str:
    """``embedding(tau=0.46, scope=sample)``: the grouper as the trace's model id."""
    info = describe_grouper(grouper)
    name = info.pop("name")
    params = ", ".join(f"{k}={v}" for k, v in info.items() if k in ("tau", "scope", "path"))
    return f"{name}({params})" if params else name
