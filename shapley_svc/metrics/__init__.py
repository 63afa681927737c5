"""Importance without Shapley sampling: static metrics from one pass with hooks, and leave-one-out values."""

from shapley_svc.metrics.loo import LeaveOneOut, leave_one_out, leave_one_out_coalitions
from shapley_svc.metrics.static import METHODS, StaticMetrics, static_metrics, token_metrics

__all__ = [
    "METHODS",
    "LeaveOneOut",
    "StaticMetrics",
    "leave_one_out",
    "leave_one_out_coalitions",
    "static_metrics",
    "token_metrics",
]
