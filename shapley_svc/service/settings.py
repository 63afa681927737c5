"""Service settings: the API tokens, the store, the Ray address, the server URL and the policy, from one place.

Read in this order, later sources winning: a YAML settings file (``--settings FILE``, else
``$SHAPLEY_SVC_SETTINGS``, else ``~/.config/shapley-svc/settings.yaml`` when it exists), then the
environment (``SHAPLEY_SVC_TOKEN``, ``SHAPLEY_SVC_READ_TOKEN``, ``SHAPLEY_SVC_URL``, ``SHAPLEY_SVC_STORE``,
``SHAPLEY_SVC_RAY_ADDRESS``, and ``SHAPLEY_SVC_POLICY_<SETTING>`` for each policy setting: folder lists
``os.pathsep``-separated, other lists comma-separated), then command-line flags. Settings are built once at
the edge (CLI or test) and passed down; nothing below reads the environment.

Example settings file::

    token: 3J0v...   # at least 16 characters; e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"
    read_token: 9xQe...   # optional: may read jobs and results, not submit or cancel
    url: http://127.0.0.1:8000
    store: /data/shapley-svc.sqlite
    ray_address: ray://head:10001
    max_concurrent_jobs: 2
    policy: {model_roots: [/srv/models], data_roots: [/srv/data], max_workers: 4}   # see service/policy.py
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from shapley_svc.errors import ConfigError
from shapley_svc.service.policy import NAME_LIST_SETTINGS, ROOT_SETTINGS, ServicePolicy

SETTINGS_ENV = "SHAPLEY_SVC_SETTINGS"
DEFAULT_SETTINGS_FILE = Path("~/.config/shapley-svc/settings.yaml")
DEFAULT_URL = "http://127.0.0.1:8000"
MIN_TOKEN_LENGTH = 16
POLICY_ENV_PREFIX = "SHAPLEY_SVC_POLICY_"
_ENVIRONMENT = {
    "token": "SHAPLEY_SVC_TOKEN",
    "read_token": "SHAPLEY_SVC_READ_TOKEN",
    "url": "SHAPLEY_SVC_URL",
    "store": "SHAPLEY_SVC_STORE",
    "ray_address": "SHAPLEY_SVC_RAY_ADDRESS",
}


class ServiceSettings(BaseModel):
    """What the server and its clients need: tokens, URL, store file, Ray address, job concurrency, policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr | None = Field(None, description="bearer token of every write (and read) endpoint")
    read_token: SecretStr | None = Field(None, description="a second token that may only read")
    open_reads: bool = Field(False, description="reads need no token (jobs and results visible to anyone)")
    url: str = Field(DEFAULT_URL, description="where clients reach the server")
    store: str = Field("shapley-svc.sqlite", min_length=1, description="SQLite store of jobs, results and cache")
    ray_address: str | None = Field(
        None, description="Ray cluster for jobs with executor kind 'ray'; None starts a local Ray"
    )
    max_concurrent_jobs: int = Field(2, ge=1, description="jobs run at the same time; the rest wait, queued")
    dev: bool = Field(
        False, description="local development on loopback: no token needed, requests may name any local path"
    )
    policy: ServicePolicy = Field(default_factory=ServicePolicy, description="what requests may reach and use")

    def check_can_serve(self) -> None:
        """Refuse to serve without a usable token (unless a development run) or with a policy folder missing."""
        for setting in ROOT_SETTINGS:
            for root in getattr(self.policy, setting):
                if not Path(root).expanduser().is_dir():
                    raise ConfigError(f"policy.{setting}: {root} is not a folder; create it or remove it")
        if self.read_token is not None:
            self._check_token_length(self.read_token, "read token")
            if self.token is not None and self.read_token.get_secret_value() == self.token.get_secret_value():
                raise ConfigError("the read token equals the write token; give the read-only token its own value")
        if self.token is None:
            if self.dev:
                return
            raise ConfigError(
                "no API token: set SHAPLEY_SVC_TOKEN or 'token' in the settings file (at least "
                f'{MIN_TOKEN_LENGTH} characters, e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"), '
                "or pass --dev for a local development run whose writes need no token"
            )
        self._check_token_length(self.token, "API token")

    @staticmethod
    def _check_token_length(token: SecretStr, what: str) -> None:
        if len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"the {what} has {len(token.get_secret_value())} characters; use at least "
                f'{MIN_TOKEN_LENGTH} (e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")'
            )


def settings_file(explicit: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    """The settings file to read: ``explicit``, else ``$SHAPLEY_SVC_SETTINGS``, else the default if it exists."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if environ.get(SETTINGS_ENV):
        return Path(environ[SETTINGS_ENV]).expanduser()
    default = DEFAULT_SETTINGS_FILE.expanduser()
    return default if default.is_file() else None


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServiceSettings:
    """Settings from the file, then the environment, then ``overrides`` (flags; None values are ignored)."""
    environment = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    source = settings_file(path, environment)
    if source is not None:
        values.update(_read_file(source))
    values.update({key: environment[name] for key, name in _ENVIRONMENT.items() if environment.get(name)})
    policy = _policy_from_environment(environment)
    if policy:
        file_policy = values.get("policy")
        values["policy"] = {**(file_policy if isinstance(file_policy, dict) else {}), **policy}
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    try:
        return ServiceSettings.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '(top level)'}: {issue['msg']}"
            for issue in error.errors()
        )
        where = f" (settings file {source})" if source is not None else ""
        raise ConfigError(f"invalid service settings{where}: {problems}") from error


def _policy_from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """``SHAPLEY_SVC_POLICY_<SETTING>`` values: folder lists split on ``os.pathsep``, other lists on commas."""
    policy: dict[str, Any] = {}
    for setting in ServicePolicy.model_fields:
        value = environ.get(POLICY_ENV_PREFIX + setting.upper())
        if not value:
            continue
        if setting in ROOT_SETTINGS:
            policy[setting] = [part for part in value.split(os.pathsep) if part]
        elif setting in NAME_LIST_SETTINGS:
            policy[setting] = [part.strip() for part in value.split(",") if part.strip()]
        else:
            policy[setting] = value
    return policy


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read the settings file {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"the settings file {path} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the settings file {path} must be a mapping (token: ..., url: ...), got {type(data).__name__}"
        )
    return data
