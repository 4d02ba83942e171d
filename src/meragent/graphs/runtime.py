"""Everything a graph run needs, built once from Settings: tools, chat models, decoder, fusion.

``build_runtime`` loads only what the track needs (no labeler for six-class tracks, no LLM at
all when a trained fusion head answers them). The profile's ``grouper`` role scores open-set
labels, in the evaluator node and in ``metrics.json``, with the options ``meragent eval ov``
uses for the same grouping (``profile_grouper``); it loads its encoder on first use only.
``fake_runtime`` swaps in the doubles from ``graphs.fakes``; ``runtime_for`` picks it when
``MERAGENT_FAKE_RUNTIME=1`` (tests, benchmark).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meragent.agents.chat import RoleChat, UsageTally, make_chat_model, policy_for
from meragent.config import RoleConfig, Settings
from meragent.graphs.media_cache import MediaDecoder, default_decoder
from meragent.tools.lazy import Lazy

#: Set to 1 to run the pipeline on fakes (subprocess tests, benchmark): no weights, no decoding.
FAKE_RUNTIME_ENV = "MERAGENT_FAKE_RUNTIME"
#: Seconds each fake tool / LLM call sleeps (to make fake runs take measurable time).
FAKE_DELAY_ENV = "MERAGENT_FAKE_DELAY_S"

#: Chat roles of the graph and the profile role that configures each.
CHAT_ROLES: dict[str, str] = {"reasoning": "reasoning_llm", "labeler": "labeler_llm"}


@dataclass
class Runtime:
    """Loaded models and helpers shared by every clip of a run."""

    tools: Any
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
    fake: bool = False

    def graph_options(self) -> dict[str, Any]:
        """The ``build_graph`` keyword arguments taken from this runtime, shared by every caller."""
        return {
            "fusion_model": self.fusion_model,
            "fusion_weights": self.fusion_weights,
            "llm_weight": self.llm_weight,
            "grouper": self.grouper,
            "features_dir": self.features_dir,
            "labeler_few_shot": self.labeler_few_shot,
        }

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


def build_runtime(settings: Settings, *, track: str) -> Runtime:
    """Load the profile's tools and chat models for ``track`` (real weights)."""
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
    return Runtime(
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
    from meragent.errors import ConfigError
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
    from meragent.errors import ConfigError
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


def fake_runtime(*, delay_s: float = 0.0, settings: Settings | None = None) -> Runtime:
    """Fake tools, decoder and scripted chat models (no weights, no media decoding)."""
    from meragent.agents.chat import CallPolicy
    from meragent.graphs.fakes import fake_chat_models, fake_decoder, fake_toolset

    tally = UsageTally()
    retries = settings.llm_max_retries if settings is not None else 2
    policy = CallPolicy(timeout_s=None, max_retries=retries, backoff_s=0.01)
    chats: dict[str, RoleChat | None] = {
        name: RoleChat(name, model, policy=policy, tally=tally)
        for name, model in fake_chat_models(delay_s).items()
    }
    return Runtime(
        tools=fake_toolset(delay_s),
        chat_models=chats,
        decoder=fake_decoder(delay_s),
        tally=tally,
        fake=True,
    )


def runtime_for(settings: Settings, *, track: str) -> Runtime:
    """The real runtime, or the fake one when ``MERAGENT_FAKE_RUNTIME=1`` is set."""
    if os.environ.get(FAKE_RUNTIME_ENV, "") not in ("", "0"):
        return fake_runtime(
            delay_s=float(os.environ.get(FAKE_DELAY_ENV, "0") or 0), settings=settings
        )
    return build_runtime(settings, track=track)


def grouper_for(settings: Settings) -> Any:
    """The grouper ``runtime_for`` would give, without building the rest of the runtime.

    For ``metrics.json`` of a run whose clips are all done already (nothing else to load).
    """
    if os.environ.get(FAKE_RUNTIME_ENV, "") not in ("", "0"):
        return None  # the fake runtime scores with the identity grouper
    return profile_grouper(settings)
