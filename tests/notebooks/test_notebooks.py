"""Every notebook runs top to bottom from a clean kernel with the reduced (smoke) budget and an empty store.

The notebooks read ``SHAPLEY_SVC_NOTEBOOK_BUDGET`` and ``SHAPLEY_SVC_NOTEBOOK_STORE`` in their parameters cell;
the kernel inherits this process's environment. A cell that raises fails the test with the cell's error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebooks extra (nbformat, nbclient, ipykernel) is missing")
nbclient = pytest.importorskip("nbclient", reason="the notebooks extra (nbformat, nbclient, ipykernel) is missing")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there() -> None:
    assert {path.name for path in NOTEBOOKS} >= {
        "task_tradeoffs.ipynb",
        "estimators.ipynb",
        "static_vs_shapley.ipynb",
    }


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_with_the_smoke_budget(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("SHAPLEY_SVC_NOTEBOOK_BUDGET", "smoke")
    monkeypatch.setenv("SHAPLEY_SVC_NOTEBOOK_STORE", str(tmp_path / "store.sqlite"))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name} raised in a cell:\n{error}")
    figures = [
        output for cell in notebook.cells for output in cell.get("outputs", []) if "image/png" in output.get("data", {})
    ]
    assert figures, f"{path.name} ran but drew no figure"
