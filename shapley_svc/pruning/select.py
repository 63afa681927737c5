"""Choose which players to remove: from a ranking, an explicit list, or greedily with re-scoring.

A :class:`PruningPlan` is the one description of "what goes" that every other pruning module reads: the
removed players of an ``L``-layer model, normalised so that a layer whose attention and MLP both go is a
removed *block*. Selection rules:

- ``target``: ``block`` (needs a block ranking), ``attn`` or ``mlp`` (only that sublayer kind), or
  ``sublayer`` (both kinds compete); the last three need a sublayer ranking.
- ``count`` or ``fraction``: a fraction is of the model's players of that target, rounded *down*
  (``floor(f * n)``), so the pruned model never loses more than the fraction asked for.
- ``protect_first`` / ``protect_last``: that many first / last decoder layers are never touched.
- Lowest score goes first (scores are "higher = more important"); ties go to the later layer, because
  late-middle layers are the usual safe cut and the choice must be deterministic.
- Iterative mode (:func:`select_iteratively`) removes one player at a time and calls a ``rescore``
  callable on the current plan before each choice, e.g. :func:`conditional_leave_one_out`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shapley_svc.errors import ConfigError
from shapley_svc.players import Player, parse_player
from shapley_svc.types import Game

TARGETS = ("block", "attn", "mlp", "sublayer")


@dataclass(frozen=True)
class PruningPlan:
    """The players removed from an ``num_layers``-layer model (original layer indices).

    Build with :meth:`from_players`, which normalises a layer losing both sublayers into a removed block.
    """

    num_layers: int
    removed: tuple[Player, ...]

    @classmethod
    def from_players(cls, players: Iterable[Player], num_layers: int) -> PruningPlan:
        """A plan removing ``players`` (blocks or sublayers, any order, duplicates allowed)."""
        present = np.ones((num_layers, 2), dtype=bool)
        for player in players:
            if not 0 <= player.layer < num_layers:
                raise ConfigError(f"player {player.name} does not exist: the model has layers 0 to {num_layers - 1}")
            if player.kind not in ("block", "attn", "mlp"):
                raise ConfigError(f"player kind {player.kind!r} is unknown: use block, attn or mlp")
            columns = {"block": [0, 1], "attn": [0], "mlp": [1]}[player.kind]
            present[player.layer, columns] = False
        return cls.from_present(present)

    @classmethod
    def from_present(cls, present: npt.NDArray[np.bool_]) -> PruningPlan:
        """A plan from bool[L, 2]: which attention (column 0) and MLP (column 1) stay."""
        removed: list[Player] = []
        for layer, (attention, mlp) in enumerate(np.asarray(present, dtype=bool)):
            if not attention and not mlp:
                removed.append(Player(layer, "block"))
            elif not attention:
                removed.append(Player(layer, "attn"))
            elif not mlp:
                removed.append(Player(layer, "mlp"))
        return cls(len(present), tuple(removed))

    @property
    def present(self) -> npt.NDArray[np.bool_]:
        """bool[L, 2]: whether each layer's attention and MLP stay."""
        present = np.ones((self.num_layers, 2), dtype=bool)
        for player in self.removed:
            present[player.layer, {"block": [0, 1], "attn": [0], "mlp": [1]}[player.kind]] = False
        return present

    @property
    def removed_blocks(self) -> tuple[int, ...]:
        """Original indices of the layers removed whole."""
        return tuple(p.layer for p in self.removed if p.kind == "block")

    @property
    def kept_layers(self) -> tuple[int, ...]:
        """Original indices of the layers that stay (possibly with one sublayer removed)."""
        gone = set(self.removed_blocks)
        return tuple(layer for layer in range(self.num_layers) if layer not in gone)

    @property
    def removed_sublayers(self) -> tuple[Player, ...]:
        """Removed attention / MLP sublayers of kept layers, in original indexing."""
        return tuple(p for p in self.removed if p.kind != "block")

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the removed players (``layer3.block``...), in layer order."""
        return tuple(p.name for p in self.removed)

    def without(self, players: Iterable[Player]) -> PruningPlan:
        """This plan with ``players`` removed as well."""
        return PruningPlan.from_players((*self.removed, *players), self.num_layers)

    def mask(self, player_names: Sequence[str]) -> npt.NDArray[np.bool_]:
        """bool[n]: presence of each named player (block or sublayer granularity) under this plan."""
        present = self.present
        mask = np.empty(len(player_names), dtype=bool)
        for index, name in enumerate(player_names):
            player = parse_player(name)
            if player.kind == "block":
                mask[index] = present[player.layer].all()
                if present[player.layer].any() and not mask[index]:
                    raise ConfigError(
                        f"the plan removes one sublayer of layer {player.layer}, which a block-granularity "
                        "game cannot express: use a sublayer game"
                    )
            else:
                mask[index] = present[player.layer, 0 if player.kind == "attn" else 1]
        return mask


class RankingLike(Protocol):
    """What selection reads from a :class:`shapley_svc.ranking.Ranking`: names, scores, granularity."""

    @property
    def players(self) -> Sequence[str]: ...

    @property
    def scores(self) -> Sequence[float] | npt.NDArray[np.float64]: ...

    @property
    def granularity(self) -> str: ...


def ranking_scores(ranking: RankingLike) -> dict[str, float]:
    """``{player name: score}`` of a ranking (higher = more important)."""
    names = [p if isinstance(p, str) else p.name for p in ranking.players]
    scores = np.asarray(ranking.scores, dtype=np.float64)
    if len(names) != len(scores):
        raise ConfigError(f"the ranking has {len(names)} players but {len(scores)} scores: it is corrupt")
    return dict(zip(names, scores.tolist(), strict=True))


def removal_count(total: int, count: int | None, fraction: float | None) -> int:
    """How many players to remove: ``count``, or ``floor(fraction * total)``; exactly one must be given."""
    if (count is None) == (fraction is None):
        raise ConfigError("give exactly one of count (e.g. --count 4) or fraction (e.g. --fraction 0.2)")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"count must be a non-negative integer, got {count!r}")
        return count
    if not isinstance(fraction, int | float) or not 0.0 <= fraction < 1.0:
        raise ConfigError(f"fraction must be in [0, 1), got {fraction!r}")
    return math.floor(fraction * total + 1e-9)


def candidates(
    player_names: Iterable[str], target: str, num_layers: int, protect_first: int = 0, protect_last: int = 0
) -> list[Player]:
    """The players of ``player_names`` that ``target`` allows and no protected layer holds, in layer order."""
    if target not in TARGETS:
        raise ConfigError(f"unknown pruning target {target!r}: use one of {', '.join(TARGETS)}")
    for label, value in (("protect_first", protect_first), ("protect_last", protect_last)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{label} must be a non-negative integer, got {value!r}")
    players = [parse_player(name) for name in player_names]
    kinds = {p.kind for p in players}
    if target == "block" and kinds != {"block"}:
        raise ConfigError("target 'block' needs a block-granularity ranking; this one scores sublayers")
    if target != "block" and "block" in kinds:
        raise ConfigError(f"target {target!r} needs a sublayer-granularity ranking; this one scores blocks")
    allowed = {"block": {"block"}, "attn": {"attn"}, "mlp": {"mlp"}, "sublayer": {"attn", "mlp"}}[target]
    last_free = num_layers - protect_last
    chosen = [p for p in players if p.kind in allowed and protect_first <= p.layer < last_free]
    return sorted(chosen, key=lambda p: (p.layer, p.kind))


def least_important(scores: Mapping[str, float], allowed: Sequence[Player], k: int) -> list[Player]:
    """The ``k`` players of ``allowed`` with the lowest score (ties: later layer first)."""
    missing = [p.name for p in allowed if p.name not in scores]
    if missing:
        raise ConfigError(f"the scores lack players {', '.join(missing[:5])}: score every candidate player")
    if any(not math.isfinite(scores[p.name]) for p in allowed):
        raise ConfigError("a candidate player has a non-finite score: re-estimate the ranking")
    ordered = sorted(allowed, key=lambda p: (scores[p.name], -p.layer, p.kind))
    return ordered[:k]


def select(
    ranking: RankingLike | Mapping[str, float],
    num_layers: int,
    *,
    target: str = "block",
    count: int | None = None,
    fraction: float | None = None,
    protect_first: int = 0,
    protect_last: int = 0,
) -> PruningPlan:
    """Remove the ``count`` (or ``fraction``) least important ``target`` players of a ranking in one go.

    Example: ``select(ranking, 30, target="attn", count=8, protect_first=1)``.
    """
    scores = dict(ranking) if isinstance(ranking, Mapping) else ranking_scores(ranking)
    allowed = candidates(scores, target, num_layers, protect_first, protect_last)
    k = removal_count(_target_total(target, num_layers), count, fraction)
    _check_enough(k, allowed, target)
    return PruningPlan.from_players(least_important(scores, allowed, k), num_layers)


Rescorer = Callable[[PruningPlan], Mapping[str, float]]
"""Scores (higher = more important) of the players still present, given what the plan already removed."""


def select_iteratively(
    rescore: Rescorer,
    num_layers: int,
    *,
    target: str = "block",
    count: int | None = None,
    fraction: float | None = None,
    protect_first: int = 0,
    protect_last: int = 0,
) -> PruningPlan:
    """Remove players one at a time, calling ``rescore(plan)`` before each choice (greedy, re-estimated)."""
    order = iterative_order(
        rescore,
        num_layers,
        target=target,
        count=count,
        fraction=fraction,
        protect_first=protect_first,
        protect_last=protect_last,
    )
    return PruningPlan.from_players(order, num_layers)


def iterative_order(
    rescore: Rescorer,
    num_layers: int,
    *,
    target: str = "block",
    count: int | None = None,
    fraction: float | None = None,
    protect_first: int = 0,
    protect_last: int = 0,
) -> list[Player]:
    """The players :func:`select_iteratively` removes, in the order it removes them (for pruning curves)."""
    plan = PruningPlan(num_layers, ())
    order: list[Player] = []
    k = removal_count(_target_total(target, num_layers), count, fraction)
    for step in range(k):
        scores = rescore(plan)
        present = plan.present
        allowed = [
            p
            for p in candidates(scores, target, num_layers, protect_first, protect_last)
            if (present[p.layer].all() if p.kind == "block" else present[p.layer, 0 if p.kind == "attn" else 1])
        ]
        if not allowed:
            raise ConfigError(
                f"after {step} removals no {target} player is left to remove (asked for {k}): "
                "lower the count or the protected layers"
            )
        chosen = least_important(scores, allowed, 1)
        order += chosen
        plan = plan.without(chosen)
    return order


def conditional_leave_one_out(game: Game, task: int = 0) -> Rescorer:
    """A rescorer: ``v(S) - v(S without p)`` for every present player p, with S what the plan leaves.

    ``game`` is any batched game (e.g. a :class:`~shapley_svc.values.base.ModelGame` on held-in data);
    ``task`` picks its value column. One call evaluates ``1 + |S|`` coalitions.
    """
    names = tuple(game.player_names)

    def rescore(plan: PruningPlan) -> dict[str, float]:
        base = plan.mask(names)
        present = np.flatnonzero(base)
        coalitions = np.repeat(base[None], len(present) + 1, axis=0)
        coalitions[np.arange(1, len(present) + 1), present] = False
        values = np.asarray(game(coalitions))[:, task]
        return {names[i]: float(values[0] - values[row + 1]) for row, i in enumerate(present)}

    return rescore


def _target_total(target: str, num_layers: int) -> int:
    return 2 * num_layers if target == "sublayer" else num_layers


def _check_enough(k: int, allowed: Sequence[Player], target: str) -> None:
    if k > len(allowed):
        raise ConfigError(
            f"asked to remove {k} {target} players but only {len(allowed)} may go (after protected layers): "
            "lower --count/--fraction or --protect-first/--protect-last"
        )
