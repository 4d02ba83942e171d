"""One ``Settings`` object: home dir, device, profile and per-role models, LLM endpoint.

Precedence: explicit arguments > environment (``MERAGENT_*``, nested with ``__``) > profile file.
A profile is a TOML file shipped in ``meragent/profiles/`` (or any path) naming a model per role.
"""

from __future__ import annotations

import tomllib
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
)
BUILTIN_PROFILES: tuple[str, ...] = ("offline", "small", "full")


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


def load_profile(name: str) -> dict[str, dict[str, Any]]:
    """Read a profile's role table as plain dicts."""
    path = profile_path(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile {path} is not valid TOML: {exc}") from exc
    roles = data.get("roles", {})
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ConfigError(f"profile {path} names unknown roles: {', '.join(unknown)}")
    return roles


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
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

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
        return data


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
