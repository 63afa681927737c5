"""The CLI without the optional extras: the README's first command installs only `[ray]`."""

from __future__ import annotations

import subprocess
import sys

# Runs in a fresh interpreter in which the service extra's packages cannot be imported.
PROGRAM = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"httpx", "fastapi", "uvicorn"}:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, Missing())
from shapley_svc.cli import main
for command in (["run", "--help"], ["serve", "--dev"], ["status", "--url", "http://127.0.0.1:9"]):
    try:
        code = main(command)
    except SystemExit as exit:
        code = exit.code
    print(command[0], code, flush=True)
"""


def test_every_command_parses_without_the_service_extra_and_the_server_commands_say_what_to_install() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-3:] == ["run 0", "serve 2", "status 2"]
    assert done.stderr.count("pip install 'shapley-svc[service]'") == 2
