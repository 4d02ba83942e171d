"""One ``Settings`` object: home dir, device, precision, profile and per-role models, LLM endpoint.

Precedence: explicit arguments > environment (``MERAGENT_*``, nested with ``__``) > profile file.
A profile is a TOML file shipped in ``meragent/profiles/`` (or any path) naming a model per role
(and optionally a top-level ``precision``).

The one device resolver (:func:`resolve_device`) and the one precision resolver
(:func:`resolve_precision`, :func:`autocast`) live here, so every encoder, trainer and chat
backend makes the same choice.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from meragent.errors import ConfigError
from meragent.secrets import register_secret

#: Every role a profile may name (DESIGN.md, "Backends and profiles").
ROLES: tuple[str, ...] = (
    "acoustic_encoder",
    "visual_encoder",
    "facial_expression",
    "text_encoder",
    "asr",
    "audio_llm",
    "video_llm",
    "reasoning_llm",
    "labeler_llm",
    "fusion",
    "grouper",
    # Who builds a run's loaded models: "none" = the registries above; "py:MODULE:ATTR" = a plug-in.
    "run_deps",
)
BUILTIN_PROFILES: tuple[str, ...] = ("offline", "small", "full")
Precision = Literal["auto", "fp32", "bf16"]
ResolvedPrecision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
#: CPU flags that mean native bf16 matmuls (AVX-512 BF16, or Intel AMX tiles).
BF16_CPU_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16"})
_ANNOUNCED: set[str] = set()
_ANNOUNCE_LOCK = threading.Lock()


def resolve_device(device: str | None) -> str:
    """``auto``/None → ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged.

    Asking for CUDA on a machine without a GPU is a ``ConfigError`` now, not a torch error
    deep inside the first model load.
    """
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but no CUDA GPU is available")
    return device


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """Native bf16 on this CPU: torch's capability (AVX512_BF16 / AMX) or the cpuinfo flags."""
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in capability or "BF16" in capability:
        return True
    return bool(cpu_flags() & BF16_CPU_FLAGS)


def precision_choice(precision: str, device: str) -> tuple[ResolvedPrecision, str]:
    """The precision to compute in on ``device`` and why (for the line printed once)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision != "auto":
        return ("bf16" if precision == "bf16" else "fp32"), "asked for"
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU supports bf16"
        return "fp32", "auto: the GPU has no bf16"
    if device == "cpu" and cpu_has_bf16():
        return "bf16", "auto: the CPU has avx512_bf16/AMX"
    return "fp32", f"auto: no native bf16 on {device}"


def resolve_precision(precision: str, device: str) -> ResolvedPrecision:
    """``fp32`` or ``bf16`` for ``precision`` (``auto|fp32|bf16``) on a resolved ``device``."""
    return precision_choice(precision, device)[0]


def announce_precision(precision: str, device: str) -> ResolvedPrecision:
    """Resolve, and print the choice on stderr once per process and device."""
    resolved, reason = precision_choice(precision, device)
    line = f"meragent: precision {resolved} on {device} ({reason})"
    with _ANNOUNCE_LOCK:
        if line in _ANNOUNCED:
            return resolved
        _ANNOUNCED.add(line)
    print(line, file=sys.stderr)
    return resolved


@contextlib.contextmanager
def autocast(device: str, precision: str) -> Iterator[None]:
    """bf16 autocast on ``device`` when ``precision`` is bf16; nothing for fp32.

    Weights stay fp32 (the master copy); callers pool, normalise and take losses in fp32.
    """
    if precision != "bf16":
        yield
        return
    import torch

    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        yield


class RoleConfig(BaseModel):
    """Which backend fills a role, with which model id or local path and options."""

    model_config = ConfigDict(extra="forbid")

    backend: str = "none"
    model: str | None = None
    adapter: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.backend != "none"


def profile_path(name: str) -> Path:
    """Locate a profile: a built-in name or a path to a TOML file."""
    candidate = Path(name).expanduser()
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise ConfigError(f"profile file not found: {candidate}")
        return candidate
    if name not in BUILTIN_PROFILES:
        raise ConfigError(f"unknown profile {name!r} (built-in: {', '.join(BUILTIN_PROFILES)})")
    return Path(str(resources.files("meragent") / "profiles" / f"{name}.toml"))


def _read_profile(name: str) -> tuple[Path, dict[str, Any]]:
    path = profile_path(name)
    try:
        return path, tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile {path} is not valid TOML: {exc}") from exc


def load_profile(name: str) -> dict[str, dict[str, Any]]:
    """Read a profile's role table as plain dicts."""
    path, data = _read_profile(name)
    roles = data.get("roles", {})
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ConfigError(f"profile {path} names unknown roles: {', '.join(unknown)}")
    return roles


def profile_precision(name: str) -> str | None:
    """The profile's top-level ``precision`` key, if it sets one."""
    path, data = _read_profile(name)
    value = data.get("precision")
    if value is not None and value not in PRECISIONS:
        raise ConfigError(
            f"profile {path}: unknown precision {value!r} (choose from {', '.join(PRECISIONS)})"
        )
    return None if value is None else str(value)


def _merge_roles(profile: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {role: dict(cfg) for role, cfg in profile.items()}
    for role, cfg in override.items():
        given = cfg.model_dump(exclude_unset=True) if isinstance(cfg, RoleConfig) else dict(cfg)
        base = merged.setdefault(role, {})
        options = {**base.get("options", {}), **given.pop("options", {})}
        base.update(given)
        base["options"] = options
    return merged


class Settings(BaseSettings):
    """Resolved configuration of one meragent process."""

    model_config = SettingsConfigDict(
        env_prefix="MERAGENT_", env_nested_delimiter="__", extra="forbid"
    )

    home: Path = Field(default_factory=lambda: Path("~/.cache/meragent").expanduser())
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Compute precision of encoders, trainers and local generation (``auto``: bf16 where native).
    precision: Precision = "auto"
    profile: str = "offline"
    data_root: Path | None = None
    models: dict[str, RoleConfig] = Field(default_factory=dict)
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(default=120.0, gt=0)
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    num_frames: int = Field(default=8, ge=1, le=256)
    sample_rate: int = Field(default=16000, ge=8000)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        profile = load_profile(str(data.get("profile", "offline")))
        data = dict(data)
        data["models"] = _merge_roles(profile, data.get("models") or {})
        from_profile = profile_precision(str(data.get("profile", "offline")))  # checked always
        if data.get("precision") is None:  # explicit and env values come before the profile's
            data.pop("precision", None)
            if from_profile is not None:
                data["precision"] = from_profile
        return data

    @model_validator(mode="after")
    def _expand_home(self) -> Settings:
        self.home = self.home.expanduser()
        return self

    def role(self, name: str) -> RoleConfig:
        if name not in ROLES:
            raise ConfigError(f"unknown role {name!r}")
        return self.models.get(name, RoleConfig())

    def resolved_device(self) -> str:
        """``cuda`` when asked or when ``auto`` finds a GPU, else ``cpu`` (imports torch lazily)."""
        return resolve_device(self.device)

    def resolved_precision(self) -> ResolvedPrecision:
        """``fp32`` or ``bf16``: the ``precision`` setting on this settings' resolved device."""
        return resolve_precision(self.precision, self.resolved_device())

    # Every artifact path derives from ``home``: nothing is written anywhere else by default.
    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def masked_dump(self) -> dict[str, Any]:
        """The resolved config as plain data, with secrets masked (for ``config show``)."""
        data = self.model_dump(mode="json")
        data["llm_api_key"] = "********" if self.llm_api_key else None
        data["resolved"] = self.resolved_choices()
        return data

    def resolved_choices(self) -> dict[str, str]:
        """What ``auto`` became on this machine: the device and the compute precision.

        Recorded with every run (the trace store's run config), so a result says whether its
        encoders ran in bf16 or fp32.
        """
        try:
            device = self.resolved_device()
            return {"device": device, "precision": resolve_precision(self.precision, device)}
        except ConfigError as exc:  # e.g. cuda asked on a machine without one: say so
            return {"device": f"unavailable: {exc}", "precision": "unresolved"}


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment plus explicit overrides (``None`` values ignored)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings = Settings(**given)
    except ConfigError:
        raise
    except ValueError as exc:
        first = str(exc).splitlines()
        raise ConfigError(f"invalid settings: {' '.join(first[:3])}") from exc
    register_secret(settings.llm_api_key)  # scrubbed from every terminal line, log and store
    return settings
