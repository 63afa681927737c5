"""Pruning: select players from a ranking, remove or skip them, save a loadable checkpoint, measure the
savings, recover with cheap emulators, and draw pruning curves judged on held-out data.

Modules: :mod:`.select` (what goes), :mod:`.apply` (plain and skip forms of the checkpoint),
:mod:`.savings` (parameters, KV bytes per token, latency), :mod:`.recovery` (bias / low-rank emulators),
:mod:`.curves` (curves and the honest-evaluation summary), :mod:`.workflow` (all of it in one call,
as ``shapley-svc prune`` runs it).
"""

from shapley_svc.players import parse_player
from shapley_svc.pruning.apply import load_skipping, prune_model, save_pruned
from shapley_svc.pruning.curves import CurveSet, PruningSummary, Split, describe_split, pruning_curves
from shapley_svc.pruning.recovery import RecoveryAdapters, attached, calibrate_scales, evaluate_value, fit
from shapley_svc.pruning.savings import Footprint, footprint
from shapley_svc.pruning.select import (
    PruningPlan,
    conditional_leave_one_out,
    iterative_order,
    select,
    select_iteratively,
)

__all__ = [
    "CurveSet",
    "Footprint",
    "PruningPlan",
    "PruningSummary",
    "RecoveryAdapters",
    "Split",
    "attached",
    "calibrate_scales",
    "conditional_leave_one_out",
    "describe_split",
    "evaluate_value",
    "fit",
    "footprint",
    "iterative_order",
    "load_skipping",
    "parse_player",
    "prune_model",
    "pruning_curves",
    "save_pruned",
    "select",
    "select_iteratively",
]
