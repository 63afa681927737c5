"""Files shipped inside installed wheels (the demo model, LAMBADA, packaged data sets), located, never imported."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from shapley_svc.errors import ShapleySvcError


def installed_file(
    package: str, relative: str, *, needed_for: str, install_command: str, error: type[ShapleySvcError], hint: str = ""
) -> tuple[Path, str]:
    """``(path of relative inside package, package version)``; a missing package is ``error`` naming the command."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as missing:
        raise error(
            f"{needed_for} needs the package {package}, which is not installed; "
            f"install it with: {install_command}{hint}"
        ) from missing
    return Path(str(distribution.locate_file(relative))), distribution.version
