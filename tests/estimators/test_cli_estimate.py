"""`shapley-svc estimate` through ``main`` and once through a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shapley_svc.cli import main
from shapley_svc.estimators.exact import all_coalitions, shapley_from_table


@pytest.fixture
def table(tmp_path: Path) -> Path:
    coalitions = all_coalitions(5)
    values = np.tanh(coalitions @ np.array([0.1, 0.5, 1.0, -0.2, 0.7]))
    path = tmp_path / "game.npz"
    np.savez(
        path,
        coalitions=coalitions,
        values=values,
        shapley=shapley_from_table(values[:, None])[0],
        player_names=np.array([f"layer{i}.block" for i in range(5)]),
        description="test",
    )
    return path


def test_estimate_prints_json_on_the_last_line(table: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--table", str(table), "--estimator", "default", "--budget", "20", "--seed", "3"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(payload["values"]) == 5 and len(payload["stderr"]) == 5
    assert payload["evaluations_used"] <= 20
    assert payload["estimator"] == "structured_gp"
    assert payload["player_names"][0] == "layer0.block"


def test_bad_input_is_one_line_with_advice(table: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--table", str(table.with_name("nope.npz")), "--budget", "20"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["estimate", "--table", str(table), "--estimator", "kernel_shap", "--budget", "20"]) == 2
    error = capsys.readouterr().err
    assert "did you mean 'kernelshap'" in error and "Traceback" not in error


def test_subprocess_without_torch(table: Path) -> None:
    code = (
        "import sys; from shapley_svc.cli import main; "
        f"rc = main(['estimate', '--table', {str(table)!r}, '--estimator', 'kernelshap', '--budget', '32']); "
        "print('torch' in sys.modules); sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    payload = json.loads(lines[-2])
    np.testing.assert_allclose(payload["values"], payload["values"])  # parsed as numbers
    assert payload["evaluations_used"] == 32
    assert payload["rmse_vs_exact"] < 1e-8  # 32 = 2^5: the paired design is complete
    assert lines[-1] == "False", "the estimate command must not import torch"
