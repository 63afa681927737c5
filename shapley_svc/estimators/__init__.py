"""Shapley-value estimators behind one ask/tell protocol, a registry with "did you mean" errors.

Example:
    >>> from shapley_svc.estimators import make_estimator
    >>> make_estimator("default", n_players=4, budget=16, seed=0).name
    'structured_gp'
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shapley_svc.errors import ConfigError
from shapley_svc.estimators.base import CoalitionRequest, Estimator, EstimatorSettings
from shapley_svc.estimators.loop import estimate
from shapley_svc.estimators.result import ShapleyResult

DEFAULT_ESTIMATOR = "structured_gp"


@dataclass(frozen=True)
class EstimatorEntry:
    """Where an estimator lives, its fixed options, and a one-line description for ``--help``."""

    module: str
    class_name: str
    description: str
    truncation_tolerance: float | None = None


REGISTRY: dict[str, EstimatorEntry] = {
    "structured_gp": EstimatorEntry(
        "structured_gp",
        "StructuredGPEstimator",
        "Bayesian quadrature: additive + size + local + heredity priors, designed pairs (recommended)",
    ),
    "heredity_gp": EstimatorEntry(
        "gp", "HeredityGPEstimator", "Bayesian regression, effect-heredity prior, misfit term, paired design"
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


def estimator_params(name: str) -> tuple[str, ...]:
    """The parameters (constructor keywords beyond the settings) the estimator ``name`` accepts."""
    cls = _estimator_class(_registered(name))
    return tuple(list(inspect.signature(cls.__init__).parameters)[2:])  # drop self, settings


def check_estimator(name: str, params: Mapping[str, Any] | None = None) -> str:
    """The registry key of ``name``; a ConfigError for an unknown name or parameter (checked before any work)."""
    key = _registered(name)
    accepted = estimator_params(key)
    unknown = [option for option in params or {} if option not in accepted]
    if unknown:
        closest = {option: difflib.get_close_matches(option, accepted, n=1) for option in unknown}
        hints = ", ".join(
            f"{option!r} (did you mean {close[0]!r}?)" if close else repr(option) for option, close in closest.items()
        )
        raise ConfigError(f"estimator {key!r} does not take the parameter(s) {hints}; it takes {list(accepted)}")
    return key


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
    truncation = REGISTRY[key].truncation_tolerance
    options: dict[str, Any] = {} if truncation is None else {"truncation_tolerance": truncation}
    options.update(params or {})
    settings = EstimatorSettings(n_players=n_players, budget=budget, seed=seed, player_names=player_names)
    try:
        estimator = _estimator_class(key)(settings, **options)
    except (TypeError, ValueError) as error:  # e.g. a string where a number belongs
        raise ConfigError(f"estimator {key!r} rejected its parameters {dict(params or {})}: {error}") from error
    estimator.name = key
    return estimator


def _registered(name: str) -> str:
    """The registry key of ``name`` (``default`` resolved); a ConfigError with the closest name if unknown."""
    key = DEFAULT_ESTIMATOR if name == "default" else name
    if key not in REGISTRY:
        close = difflib.get_close_matches(name, estimator_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown estimator {name!r}{hint} Known: {', '.join(estimator_names())}")
    return key


def _estimator_class(key: str) -> type[Estimator]:
    entry = REGISTRY[key]
    return getattr(importlib.import_module(f"shapley_svc.estimators.{entry.module}"), entry.class_name)


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
