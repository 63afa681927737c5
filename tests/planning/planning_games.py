"""Games with known best removal sets for the plan tests: analytic games enumerated exactly, the shipped table,
and a wrapper that counts every distinct coalition a game is asked for (the budget, counted at the game)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from shapley_svc.estimators.table import TableGame
from shapley_svc.types import Coalitions, Values

SHIPPED_TABLE = Path(__file__).resolve().parents[3] / "shared" / "games" / "smollm2_blocks18-29_wikitext.npz"


class LayeredGame:
    """A depth-pruning-like game over ``n`` layers: each layer's own cost, neighbours that are redundant
    (removing both costs more than the sum), and a penalty that grows with how many go; two tasks."""

    def __init__(self, n_players: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.n_players = n_players
        self.player_names = tuple(f"layer{i}.block" for i in range(n_players))
        self.task_names = ("quality", "speed")
        self.costs = rng.gamma(2.0, 0.2, n_players)
        self.costs[[0, n_players - 1]] += 2.0  # the first and the last layer matter most
        self.redundancy = rng.uniform(0.0, 0.4, n_players - 1)  # extra cost of removing layers i and i + 1

    def __call__(self, coalitions: Coalitions) -> Values:
        removed = ~np.asarray(coalitions, dtype=bool)
        count = removed.sum(axis=1)
        # row by row (no matrix product, whose rounding depends on how many rows come at once)
        quality = -(removed * self.costs).sum(axis=1) - ((removed[:, :-1] & removed[:, 1:]) * self.redundancy).sum(
            axis=1
        )
        quality -= 0.05 * count**2
        return np.stack([quality, count.astype(float)], axis=1)


class CountingGame:
    """Wraps a game; ``distinct`` holds every coalition it was asked for, ``calls`` every call's size."""

    def __init__(self, game: object) -> None:
        self.game = game
        self.n_players = game.n_players  # type: ignore[attr-defined]
        self.player_names = tuple(game.player_names)  # type: ignore[attr-defined]
        self.task_names = tuple(game.task_names)  # type: ignore[attr-defined]
        self.distinct: set[bytes] = set()
        self.asked = 0

    def __call__(self, coalitions: Coalitions) -> Values:
        self.asked += len(coalitions)
        self.distinct.update(np.packbits(row).tobytes() for row in coalitions)
        return self.game(coalitions)  # type: ignore[operator]


def best_removal(
    game: object, k: int, task: int = 0, weights: np.ndarray | None = None
) -> tuple[frozenset[int], float]:
    """The best set of k players to remove, and its value, by enumerating every k-set."""
    n = game.n_players  # type: ignore[attr-defined]
    sets = list(itertools.combinations(range(n), k))
    coalitions = np.ones((len(sets), n), dtype=bool)
    for row, removal in enumerate(sets):
        coalitions[row, list(removal)] = False
    values = np.asarray(game(coalitions))  # type: ignore[operator]
    scores = values @ weights if weights is not None else values[:, task]
    best = int(np.argmax(scores))
    return frozenset(sets[best]), float(scores[best])


def shipped_table() -> TableGame:
    return TableGame.from_npz(SHIPPED_TABLE)
