"""Settings: profiles as data, precedence (args > env > profile), masked secrets, home paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from meragent.config import ROLES, RoleConfig, load_profile, load_settings
from meragent.errors import ConfigError


def test_offline_profile_is_default_and_names_every_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MERAGENT_PROFILE", raising=False)
    settings = load_settings()
    assert settings.profile == "offline"
    assert set(settings.models) == set(ROLES)
    assert settings.role("facial_expression").backend == "fer"
    assert settings.role("asr").model == "bundled:whisper-base"


@pytest.mark.parametrize("name", ["offline", "small", "full"])
def test_builtin_profiles_load(name: str) -> None:
    roles = load_profile(name)
    assert set(roles) <= set(ROLES)
    assert all(RoleConfig(**cfg) for cfg in roles.values())


def test_full_profile_uses_paper_encoders() -> None:
    settings = load_settings(profile="full")
    assert settings.role("acoustic_encoder").model == "TencentGameMate/chinese-hubert-large"
    assert settings.role("visual_encoder").model == "openai/clip-vit-large-patch14"


def test_env_overrides_one_field_of_a_role_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MERAGENT_HOME", str(tmp_path))
    monkeypatch.setenv("MERAGENT_MODELS__REASONING_LLM__MODEL", "my-local-llm")
    settings = load_settings()
    assert settings.home == tmp_path
    assert settings.features_dir == tmp_path / "features"
    assert settings.runs_dir == tmp_path / "runs"
    role = settings.role("reasoning_llm")
    assert role.model == "my-local-llm"
    assert role.backend == "local"
    assert role.options["max_new_tokens"] == 96


def test_explicit_argument_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERAGENT_PROFILE", "full")
    assert load_settings(profile="small").profile == "small"


def test_api_key_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERAGENT_LLM_API_KEY", "sk-very-secret")
    settings = load_settings()
    assert settings.llm_api_key is not None
    assert settings.llm_api_key.get_secret_value() == "sk-very-secret"
    dumped = settings.masked_dump()
    assert dumped["llm_api_key"] == "********"
    assert "sk-very-secret" not in str(dumped)


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_settings(profile="nope")


def test_profile_file_with_unknown_role_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[roles.teleporter]\nbackend = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="teleporter"):
        load_settings(profile=str(path))


def test_custom_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[roles.asr]\nbackend = "whisperx"\nmodel = "/models/w"\n', encoding="utf-8")
    settings = load_settings(profile=str(path))
    assert settings.role("asr").model == "/models/w"
    assert settings.role("video_llm").backend == "none"


def test_invalid_value_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid settings"):
        load_settings(device="tpu")


def test_explicit_device_is_returned_without_probing() -> None:
    assert load_settings(device="cpu").resolved_device() == "cpu"
