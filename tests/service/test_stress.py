"""The CI variant of benchmarks/service_stress.py: 40 submissions from 4 clients on loopback, bounded in time."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def service_stress(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import service_stress

    return service_stress


def test_mixed_concurrent_submissions_lose_nothing_and_match_the_jobs_run_alone(
    service_stress: ModuleType, tiny_checkpoint: Path
) -> None:
    summary = service_stress.run_stress(40, 4, timeout=180, checkpoint=tiny_checkpoint, log=lambda line: None)
    assert summary["checks"] == dict.fromkeys(summary["checks"], True), summary
    assert summary["accepted"] == summary["valid"] > 0 and summary["malformed"] >= 20
    assert {"201", "401", "403", "413", "422"} <= set(summary["statuses"]), summary["statuses"]
