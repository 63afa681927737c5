"""Rankings, rank correlations and progress as the API computes them, checked against scipy and by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from shapley_svc.service.views import defined_or_none, importance_ranks, job_progress
from shapley_svc.stats import kendall_tau_b, spearman
from shapley_svc.store.base import JobRecord, JobStatus


def test_correlation_of_a_constant_ranking_is_undefined() -> None:
    constant, other = np.ones(4), np.arange(4.0)
    assert (
        defined_or_none(spearman, constant, other) is None and defined_or_none(kendall_tau_b, constant, other) is None
    )


def test_importance_ranks_put_the_highest_first_the_earlier_of_ties_first_and_undefined_last() -> None:
    assert importance_ranks([0.1, None, 0.5, 0.1]) == [2, 4, 1, 3]


def record(status: JobStatus, progress: dict, spec: dict) -> JobRecord:
    now = datetime.now(UTC)
    return JobRecord("job", spec, status, progress, now, now, now, None, None)


SPEC = {
    "players": {"granularities": ["block", "sublayer"]},
    "tasks": [{"name": "lm_loss"}],
    "estimators": [{"name": "exact"}],
    "budget": {"evaluations": 100},
}


def test_progress_counts_finished_runs_whole_and_the_current_one_by_evaluations() -> None:
    progress = {
        "runs": [{"granularity": "block", "estimator": "exact", "told": 16, "evaluated": 10, "cache_hits": 6}],
        "current": {"granularity": "sublayer", "estimator": "exact", "told": 30, "cache_hits": 4},
    }
    view = job_progress(record(JobStatus.RUNNING, progress, SPEC))
    assert (view.runs_done, view.runs_total, view.current_run) == (1, 2, "sublayer/exact")
    assert (view.evaluations_done, view.evaluations_total, view.fraction) == (130, 200, 0.65)
    assert view.cache_hits == 10 and view.runs[0].evaluated == 10
    assert job_progress(record(JobStatus.SUCCEEDED, {"runs": []}, SPEC)).fraction == 1


def test_progress_of_a_job_whose_spec_no_longer_validates_reports_what_it_can() -> None:
    view = job_progress(record(JobStatus.RUNNING, {"runs": [{"granularity": "block", "estimator": "x"}]}, {"v": 9}))
    assert view.runs_done == 1 and view.fraction is None and view.runs_total is None
