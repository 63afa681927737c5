"""The computing behind the notebooks: cached games, task trade-offs, estimator convergence, ranking agreement.

Each notebook calls these and only plots; the tests in ``tests/analysis`` check them on tiny models and tables.
"""

from shapley_svc.analysis.agreement import Agreement, ranking_agreement
from shapley_svc.analysis.convergence import Convergence, DecisionRun, error_vs_budget, pruning_set_decided_runs
from shapley_svc.analysis.crosstask import PlanJudgement, judge_plans
from shapley_svc.analysis.games import BlockView, CachedGame
from shapley_svc.analysis.paths import repository_root, shared_folder
from shapley_svc.analysis.tasks import (
    RankCorrelation,
    RankingCurves,
    rank_correlations,
    ranking_curves,
    shapley_values,
    task_scores,
)
from shapley_svc.stats import paired_difference

__all__ = [
    "Agreement",
    "BlockView",
    "CachedGame",
    "Convergence",
    "DecisionRun",
    "PlanJudgement",
    "RankCorrelation",
    "RankingCurves",
    "error_vs_budget",
    "judge_plans",
    "paired_difference",
    "pruning_set_decided_runs",
    "rank_correlations",
    "ranking_agreement",
    "ranking_curves",
    "repository_root",
    "shapley_values",
    "shared_folder",
    "task_scores",
]
