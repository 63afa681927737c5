"""Service settings: file < environment < flags, and the server's refusal to start without a usable token."""

from __future__ import annotations

from pathlib import Path

import pytest

from shapley_svc.errors import ConfigError
from shapley_svc.service.settings import ServiceSettings, load_settings


def test_the_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("token: from-the-file-0123456789\nurl: http://file:1\nstore: file.sqlite\n")
    environ = {"SHAPLEY_SVC_SETTINGS": str(settings_file), "SHAPLEY_SVC_URL": "http://env:2"}
    settings = load_settings(environ=environ, overrides={"store": "flag.sqlite", "ray_address": None})
    assert settings.token is not None and settings.token.get_secret_value() == "from-the-file-0123456789"
    assert (settings.url, settings.store, settings.ray_address) == ("http://env:2", "flag.sqlite", None)
    assert "from-the-file" not in repr(settings), "the token must not show in logs or tracebacks"
    from_env = load_settings(environ={**environ, "SHAPLEY_SVC_TOKEN": "from-the-environment-0123"})
    assert from_env.token is not None and from_env.token.get_secret_value() == "from-the-environment-0123"


def test_no_settings_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings(environ={})
    assert settings.token is None and settings.url == "http://127.0.0.1:8000" and settings.max_concurrent_jobs == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [("token: [unclosed", "not valid YAML"), ("- a list", "must be a mapping"), ("colour: blue", "colour")],
)
def test_a_bad_settings_file_is_a_config_error(tmp_path: Path, content: str, message: str) -> None:
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(settings_file, environ={})


def test_serving_needs_a_long_enough_token_unless_in_development() -> None:
    with pytest.raises(ConfigError, match="--dev"):
        ServiceSettings().check_can_serve()
    with pytest.raises(ConfigError, match="at least 16"):
        ServiceSettings(token="short").check_can_serve()
    ServiceSettings(dev=True).check_can_serve()
    ServiceSettings(token="long-enough-token-123").check_can_serve()


def test_serving_checks_the_read_token_and_the_policys_folders(tmp_path: Path) -> None:
    token = "long-enough-token-123"
    with pytest.raises(ConfigError, match="read token has 5 characters"):
        ServiceSettings(token=token, read_token="short").check_can_serve()
    with pytest.raises(ConfigError, match="read token equals the write token"):
        ServiceSettings(token=token, read_token=token).check_can_serve()
    with pytest.raises(ConfigError, match=r"policy.data_roots: .*missing is not a folder"):
        ServiceSettings(token=token, policy={"data_roots": [str(tmp_path / "missing")]}).check_can_serve()
    ServiceSettings(
        token=token, read_token="another-token-12345", policy={"model_roots": [str(tmp_path)]}
    ).check_can_serve()


def test_no_settings_at_all_give_the_safe_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    policy = load_settings(environ={}).policy
    assert (policy.model_roots, policy.data_roots, policy.task_roots) == ((), (), ())
    assert policy.models == ("demo",) and policy.lm_eval_tasks is None and policy.max_evaluations == 20_000
    assert (policy.max_workers, policy.max_threads_per_worker, policy.max_cpus_per_worker) == (None, None, None)
