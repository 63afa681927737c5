"""Plan searchers of the field: remove the k lowest of a ranking, greedy (SLEB), beam, evolutionary (EvoPress).

Each reads removal sets only through a :class:`~shapley_svc.planning.problem.RemovalGame` (budget counted
there), in batches that do not depend on the number of workers, and ends when its procedure ends or the
budget is spent; the plan is the best set of k players it read.

- ``ranking``: the k lowest of a ranking (given scores, or leave-one-out computed here: n + 1 reads).
- ``greedy``: Song et al. 2024 (SLEB): from nothing removed, each step reads removing every remaining
  candidate from the current set and keeps the best; ``n + (n - 1) + ... + (n - k + 1)`` reads.
- ``beam``: greedy keeping the ``width`` best sets of each size (``width = 1`` is greedy).
- ``evolutionary``: Sieberling et al. 2024 (EvoPress) for a fixed k: a parent set, offspring by swapping one
  removed player for a kept one, the best of parent and offspring survives; on a game of one data size
  (a table, or one calibration slice) its multi-step selection on growing data reduces to this selection.

Under a budget smaller than its procedure needs, greedy and beam keep only the candidates that ranked best
at the previous step, so that they still reach k.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import numpy as np

from shapley_svc.errors import ConfigError, at_least
from shapley_svc.planning.problem import Removal, RemovalGame, RemovalProblem


def greedy_evaluations(n_candidates: int, k: int) -> int:
    """How many removal sets greedy (SLEB) reads to remove ``k`` of ``n_candidates``."""
    return sum(n_candidates - step for step in range(k))


class PlanSearcher(abc.ABC):
    """Reads removal sets from a budgeted game until its procedure ends or the budget is spent."""

    name: str = "searcher"

    @abc.abstractmethod
    def search(self, game: RemovalGame, rng: np.random.Generator) -> None:
        """Read removal sets through ``game``; the plan is then ``game.best()``."""


class RankingSearch(PlanSearcher):
    """Remove the k lowest of ``scores`` (higher = more important), or of leave-one-out computed here."""

    name = "ranking"

    def __init__(self, scores: Sequence[float] | None = None) -> None:
        self.scores = None if scores is None else np.asarray(scores, dtype=np.float64)

    def search(self, game: RemovalGame, rng: np.random.Generator) -> None:
        problem = game.problem
        if self.scores is None:  # leave-one-out: minus the value of removing each candidate alone
            scores = dict(zip(problem.candidates, -game.values([[p] for p in problem.candidates]), strict=True))
        elif len(self.scores) == problem.n_players:
            scores = {player: float(self.scores[player]) for player in problem.candidates}
        else:
            raise ConfigError(f"{len(self.scores)} scores for a game of {problem.n_players} players")
        game.values([lowest(problem, scores)])


class BeamSearch(PlanSearcher):
    """Greedy removal keeping the ``width`` best sets of each size; ``width = 1`` is SLEB's greedy."""

    name = "beam"

    def __init__(self, width: int = 4) -> None:
        self.width = at_least(width, 1, "the beam width")

    def search(self, game: RemovalGame, rng: np.random.Generator) -> None:
        k, candidates = game.problem.k, game.problem.candidates
        beam: list[Removal] = [frozenset()]
        preference = list(candidates)  # the order the last step ranked the candidates in
        for size in range(1, k + 1):
            grown = (parent | {player} for parent in beam for player in preference if player not in parent)
            children = list(dict.fromkeys(child for child in grown if game.problem.allows(child)))
            room = game.remaining - (k - size)  # leave one read for each later step
            children = self._affordable(game, children, preference, room)
            values = game.values(children)
            ranked = [children[index] for index in np.argsort(-values, kind="stable")]
            beam = ranked[: self.width]
            preference = _player_order(ranked, preference)

    @staticmethod
    def _affordable(game: RemovalGame, children: list[Removal], preference: list[int], room: int) -> list[Removal]:
        """Every child already read (free), and the unread ones the budget allows, best-ranked players first."""
        rank = {player: position for position, player in enumerate(preference)}
        ordered = sorted(children, key=lambda child: sorted(rank[player] for player in child))
        unread = [child for child in ordered if game.known(child) is None]
        if unread and room < 1:
            raise ConfigError("the budget is too small to reach k removals one step at a time")
        allowed = set(unread[: max(room, 0)])
        return [child for child in ordered if game.known(child) is not None or child in allowed]


class GreedySearch(BeamSearch):
    """SLEB's greedy: each step removes the candidate whose removal leaves the best value."""

    name = "greedy"

    def __init__(self) -> None:
        super().__init__(width=1)


class EvolutionarySearch(PlanSearcher):
    """(1 + offspring) evolution of one set of k: swap mutations, the best of parent and offspring survives;
    from a local optimum (every swap read, none better) it starts again from a random set."""

    name = "evolutionary"

    def __init__(self, offspring: int = 8, initial: int = 8) -> None:
        self.offspring = at_least(offspring, 1, "offspring")
        self.initial = at_least(initial, 1, "initial")

    def search(self, game: RemovalGame, rng: np.random.Generator) -> None:
        parent = self._start(game, rng, self.initial)
        while parent is not None and game.remaining > 0:
            unread = [child for child in swaps(parent, game.problem) if game.known(child) is None]
            if not unread:
                parent = self._start(game, rng, 1)
                continue
            picked = rng.choice(len(unread), min(self.offspring, len(unread), game.remaining), replace=False)
            children = [unread[index] for index in sorted(picked)]
            values = game.values(children)
            parent_value = game.known(parent)
            if parent_value is None or float(np.max(values)) > parent_value:
                parent = children[int(np.argmax(values))]

    @staticmethod
    def _start(game: RemovalGame, rng: np.random.Generator, count: int) -> Removal | None:
        """The best of up to ``count`` random unread sets filling the quotas; None when no unread one turns up."""
        starts: dict[Removal, None] = {}
        for _ in range(100 * count):
            start = frozenset(
                int(player)
                for quota in game.problem.quotas
                for player in rng.choice(quota.candidates, quota.count, replace=False)
            )
            if game.known(start) is None:
                starts[start] = None
            if len(starts) == min(count, game.remaining):
                break
        if not starts:
            return None
        chosen = list(starts)
        return chosen[int(np.argmax(game.values(chosen)))]


def swaps(removal: Removal, problem: RemovalProblem) -> list[Removal]:
    """Every set with one removed player put back and one kept candidate of its quota removed instead."""
    return [
        removal - {back} | {out}
        for quota in problem.quotas
        for back in sorted(removal & set(quota.candidates))
        for out in quota.candidates
        if out not in removal
    ]


def lowest(problem: RemovalProblem, scores: Mapping[int, float]) -> Removal:
    """The lowest-scored candidates filling each quota (ties: the earlier layer, as ``scores`` order them)."""
    chosen: set[int] = set()
    for quota in problem.quotas:
        free = [player for player in quota.candidates if player not in chosen]
        chosen |= set(sorted(free, key=lambda player: scores[player])[: quota.count])
    return frozenset(chosen)


def _player_order(ranked: list[Removal], previous: list[int]) -> list[int]:
    """Candidates in the order the best sets containing them ranked (a player in a better set comes first)."""
    first_seen: dict[int, int] = {}
    for position, removal in enumerate(ranked):
        for player in removal:
            first_seen.setdefault(player, position)
    return sorted(previous, key=lambda player: first_seen.get(player, len(ranked)))
