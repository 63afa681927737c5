"""Where a notebook finds the repository and the shared data beside it, whatever its working directory."""

from __future__ import annotations

from pathlib import Path

from shapley_svc.errors import ConfigError


def repository_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding ``pyproject.toml``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise ConfigError(f"no pyproject.toml at or above {here}: run the notebook from inside the repository")


def shared_folder(name: str, start: Path | None = None) -> Path:
    """``../shared/<name>`` beside the repository root (e.g. ``data`` or ``games``); it must exist."""
    folder = repository_root(start).parent / "shared" / name
    if not folder.is_dir():
        raise ConfigError(f"{folder} does not exist: put the shared folder beside the repository")
    return folder
