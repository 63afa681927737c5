"""Shapley-value estimators behind one ask/tell protocol, a registry with "did you mean" errors.

Example:
    >>> from shapley_svc.estimators import make_estimator
    >>> make_estimator("default", n_players=4, budget=16, seed=0).name
    'heredity_gp'
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import CoalitionRequest, Estimator, EstimatorSettings
from shapley_svc.estimators.loop import estimate
from shapley_svc.estimators.result import ShapleyResult

DEFAULT_ESTIMATOR = "heredity_gp"


@dataclass(frozen=True)
class EstimatorEntry:
    """Where an estimator lives, its fixed options, and a one-line description for ``--help``."""

    module: str
    class_name: str
    description: str
    truncation_tolerance: float | None = None


REGISTRY: dict[str, EstimatorEntry] = {
    "heredity_gp": EstimatorEntry(
        "gp", "HeredityGPEstimator", "Bayesian regression, effect-heredity prior, paired design (recommended)"
    ),
    "kernelshap": EstimatorEntry("kernel", "KernelSHAPEstimator", "paired KernelSHAP with efficiency constraint"),
    "permutation": EstimatorEntry("permutation", "PermutationEstimator", "antithetic permutation sampling"),
    "truncated_permutation": EstimatorEntry(
        "permutation", "PermutationEstimator", "truncated Monte Carlo (tolerance 1%), biased", 0.01
    ),
    "stratified": EstimatorEntry("stratified", "StratifiedEstimator", "stratified by size, Neyman allocation"),
    "player_stratified": EstimatorEntry(
        "player_stratified", "PlayerStratifiedEstimator", "per-player stratified marginals, focusable"
    ),
    "banzhaf": EstimatorEntry("msr", "MeanDifferenceEstimator", "Banzhaf values by maximum sample reuse"),
    "seed_compatible": EstimatorEntry(
        "msr", "SeedCompatibleEstimator", "seed paper: mean present - mean absent, 90% kept"
    ),
    "leave_one_out": EstimatorEntry("loo", "LeaveOneOutEstimator", "v(N) - v(N minus i)"),
    "exact": EstimatorEntry("exact", "ExactEstimator", "enumerate all 2^n coalitions (n <= 20)"),
}


def estimator_names() -> tuple[str, ...]:
    """Every registered name, ``default`` first."""
    return ("default", *REGISTRY)


def make_estimator(
    name: str, n_players: int, budget: int, seed: int = 0, player_names: tuple[str, ...] = ()
) -> Estimator:
    """Build a registered estimator; ``default`` is the recommended one."""
    key = DEFAULT_ESTIMATOR if name == "default" else name
    if key not in REGISTRY:
        close = difflib.get_close_matches(name, estimator_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown estimator {name!r}{hint} Known: {', '.join(estimator_names())}")
    entry = REGISTRY[key]
    module = importlib.import_module(f"shapley_svc.estimators.{entry.module}")
    settings = EstimatorSettings(n_players=n_players, budget=budget, seed=seed, player_names=player_names)
    cls = getattr(module, entry.class_name)
    if entry.truncation_tolerance is not None:
        estimator: Estimator = cls(settings, truncation_tolerance=entry.truncation_tolerance)
        estimator.name = key
        return estimator
    return cls(settings)


__all__ = [
    "DEFAULT_ESTIMATOR",
    "REGISTRY",
    "CoalitionRequest",
    "Estimator",
    "EstimatorSettings",
    "ShapleyResult",
    "estimate",
    "estimator_names",
    "make_estimator",
]
