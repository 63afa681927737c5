"""Shapley-value estimators behind one ask/tell protocol, a registry with "did you mean" errors.

Example:
    >>> from shapley_svc.estimators import make_estimator
    >>> make_estimator("default", n_players=4, budget=16, seed=0).name
    'structured_gp'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shapley_svc.estimators.base import CoalitionRequest, Estimator, EstimatorSettings
from shapley_svc.estimators.loop import estimate
from shapley_svc.estimators.result import ShapleyResult
from shapley_svc.registry import Entry, Registry

DEFAULT_ESTIMATOR = "structured_gp"


def _entry(module: str, class_name: str, description: str, **defaults: Any) -> Entry:
    return Entry(f"shapley_svc.estimators.{module}:{class_name}", description, defaults=defaults)


REGISTRY: Registry[Estimator] = Registry(
    "estimator",
    Estimator,
    {
        "structured_gp": _entry(
            "structured_gp",
            "StructuredGPEstimator",
            "Bayesian quadrature: additive + size + local + heredity priors, designed pairs (recommended)",
        ),
        "heredity_gp": _entry(
            "gp", "HeredityGPEstimator", "Bayesian regression, effect-heredity prior, misfit term, paired design"
        ),
        "kernelshap": _entry("kernel", "KernelSHAPEstimator", "paired KernelSHAP with efficiency constraint"),
        "permutation": _entry("permutation", "PermutationEstimator", "antithetic permutation sampling"),
        "truncated_permutation": _entry(
            "permutation",
            "PermutationEstimator",
            "truncated Monte Carlo (tolerance 1%), biased",
            truncation_tolerance=0.01,
        ),
        "stratified": _entry("stratified", "StratifiedEstimator", "stratified by size, Neyman allocation"),
        "player_stratified": _entry(
            "player_stratified", "PlayerStratifiedEstimator", "per-player stratified marginals, focusable"
        ),
        "banzhaf": _entry("msr", "MeanDifferenceEstimator", "Banzhaf values by maximum sample reuse"),
        "seed_compatible": _entry(
            "msr",
            "SeedCompatibleEstimator",
            "seed paper's one-size proxy of pruning_semivalue: mean present - mean absent, 90% kept",
        ),
        "pruning_semivalue": _entry(
            "semivalue",
            "PruningSemivalueEstimator",
            "semivalue: mean marginal contribution with k or fewer others missing (removed=k or keep_fraction)",
        ),
        "beta_shapley": _entry(
            "semivalue",
            "BetaShapleyEstimator",
            "Beta(alpha, beta) Shapley semivalue; alpha > beta favours small coalitions",
        ),
        "weighted_banzhaf": _entry(
            "semivalue", "WeightedBanzhafEstimator", "semivalue, each other player present with probability weight"
        ),
        "leave_one_out": _entry("loo", "LeaveOneOutEstimator", "v(N) - v(N minus i)"),
        "exact": _entry("exact", "ExactEstimator", "enumerate all 2^n coalitions (n <= 20)"),
    },
    aliases={"default": DEFAULT_ESTIMATOR},
)
"""Every estimator by name; ``default`` is the recommended one."""


def estimator_names() -> tuple[str, ...]:
    """Every registered name, ``default`` first."""
    return REGISTRY.names()


def estimator_params(name: str) -> tuple[str, ...]:
    """The parameters (constructor keywords beyond the settings) the estimator ``name`` accepts."""
    return REGISTRY.parameters(name, positional=1)


def check_estimator(name: str, params: Mapping[str, Any] | None = None) -> str:
    """The registry key of ``name``; a ConfigError for an unknown name or parameter (checked before any work)."""
    return REGISTRY.check_params(name, params, positional=1)


def make_estimator(
    name: str,
    n_players: int,
    budget: int,
    seed: int = 0,
    player_names: tuple[str, ...] = (),
    *,
    params: Mapping[str, Any] | None = None,
) -> Estimator:
    """Build a registered estimator; ``default`` is the recommended one.

    ``params`` are the estimator's own options (e.g. ``walks_per_round`` of ``permutation``); an unknown one
    is a ConfigError naming the accepted ones.
    """
    key = check_estimator(name, params)
    settings = EstimatorSettings(n_players=n_players, budget=budget, seed=seed, player_names=player_names)
    estimator = REGISTRY.build(key, settings, params=params)
    estimator.name = key
    return estimator


__all__ = [
    "DEFAULT_ESTIMATOR",
    "REGISTRY",
    "CoalitionRequest",
    "Estimator",
    "EstimatorSettings",
    "ShapleyResult",
    "check_estimator",
    "estimate",
    "estimator_names",
    "estimator_params",
    "make_estimator",
]
