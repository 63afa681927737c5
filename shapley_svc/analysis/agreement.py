"""Agreement between importance rankings of the same players (static metrics, leave-one-out, Shapley):
Spearman's rho of every pair and the overlap of the k players each would prune first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.stats import spearman


@dataclass(frozen=True)
class Agreement:
    """``rho[m, m]`` Spearman between methods and ``overlap[m, m]``: shared players among each one's k lowest."""

    methods: tuple[str, ...]
    rho: np.ndarray
    overlap: np.ndarray
    k: int
    lowest: dict[str, tuple[str, ...]]  # per method, its k least important players


def ranking_agreement(scores: Mapping[str, Mapping[str, float]], k: int) -> Agreement:
    """Compare rankings given as ``{method: {player: score}}`` (higher = more important), same players each."""
    methods = tuple(scores)
    if not methods:
        raise ConfigError("give at least one ranking")
    players = tuple(scores[methods[0]])
    for method in methods:
        if set(scores[method]) != set(players):
            raise ConfigError(f"ranking {method!r} scores other players than {methods[0]!r}")
    if not 1 <= k < len(players):
        raise ConfigError(f"k must be between 1 and {len(players) - 1}, got {k}")
    matrix = np.array([[scores[method][player] for player in players] for method in methods])  # [m, n]
    lowest = {
        method: tuple(players[i] for i in np.argsort(matrix[index], kind="stable")[:k])
        for index, method in enumerate(methods)
    }
    count = len(methods)
    rho, overlap = np.ones((count, count)), np.full((count, count), float(k))
    for i in range(count):
        for j in range(i + 1, count):
            rho[i, j] = rho[j, i] = float(spearman(matrix[i], matrix[j]))
            overlap[i, j] = overlap[j, i] = len(set(lowest[methods[i]]) & set(lowest[methods[j]]))
    return Agreement(methods, rho, overlap, k, lowest)
