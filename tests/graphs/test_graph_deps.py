"""How a run's deps are chosen: the profile's registries, or a ``run_deps`` plug-in it names."""

from __future__ import annotations

from pathlib import Path

import pytest
from meragent_fakes import FakeToolSet, write_fake_profile

from meragent.config import load_settings
from meragent.errors import ConfigError
from meragent.graphs.runtime import RunDeps, load_run_deps, profile_grouper


def test_a_profile_naming_a_run_deps_plugin_gets_its_deps(tmp_path: Path) -> None:
    settings = load_settings(profile=str(write_fake_profile(tmp_path / "p.toml", delay_s=0.25)))
    deps = load_run_deps(settings, track="all")
    assert isinstance(deps, RunDeps) and isinstance(deps.tools, FakeToolSet)
    assert deps.tools.acoustic.delay_s == 0.25  # the role's options reach the factory
    assert deps.model_ids() == {"reasoning": "scripted-reasoning", "labeler": "scripted-labeler"}
    assert type(profile_grouper(settings)).__name__ == "IdentityGrouper"


def test_the_default_profile_names_no_plugin() -> None:
    # Nothing switches a user's run to doubles: not an environment variable, not a default.
    assert load_settings(profile="offline").role("run_deps").backend == "none"


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("fakes", "backend 'fakes' must be 'none' or 'py:MODULE:ATTR'"),
        ("py:meragent_fakes", "must be 'py:MODULE:ATTR'"),
        ("py:no_such_module_xyz:f", "cannot import plug-in module 'no_such_module_xyz'"),
        ("py:meragent_fakes:missing", "'meragent_fakes' has no attribute 'missing'"),
        ("py:meragent_fakes:DOUBLES_DIR", "is not callable"),
    ],
)
def test_a_bad_run_deps_plugin_is_a_config_error(backend: str, message: str) -> None:
    settings = load_settings(models={"run_deps": {"backend": backend}})
    with pytest.raises(ConfigError, match="role run_deps: .*" + message.replace("(", r"\(")):
        load_run_deps(settings, track="all")


def test_a_plugin_that_returns_something_else_is_a_config_error() -> None:
    backend = "py:builtins:slice"  # any callable of three arguments: here it returns a slice
    settings = load_settings(models={"run_deps": {"backend": backend}})
    with pytest.raises(ConfigError, match="returned slice"):
        load_run_deps(settings, track="all")
