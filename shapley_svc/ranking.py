"""The one versioned ranking format: importance scores of a model's players, whatever produced them.

A :class:`Ranking` holds one score per player (decoder block, or attention / MLP sublayer), higher meaning
more important, with its stderr where known, the method that produced it (``block_influence``,
``angular_distance``, ``relative_update_norm``, ``leave_one_out``, ``shapley:<estimator>``...), the task it
scores (``None`` for static metrics) and the fingerprints of the model and the value function. Static
metrics, leave-one-out, Shapley estimates and pruning all read and write this format; a
:class:`RankingSet` keeps several rankings in one file. Both are JSON with a ``format_version``; a file
written by a newer version is refused rather than misread.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, model_validator

from shapley_svc.errors import ConfigError
from shapley_svc.players import Granularity, Player
from shapley_svc.versioned import (
    check_header,
    parse_document,
    read_document,
    read_text,
    validate_document,
    write_text,
)

FORMAT_VERSION = 1
"""Version of the JSON written by :class:`Ranking` and :class:`RankingSet`; bump it on any breaking change."""


_METHOD = re.compile(r"[a-z][a-z0-9_]*(:[A-Za-z0-9_.\-]+)?")


def _now() -> datetime:
    return datetime.now(UTC)


class Ranking(BaseModel):
    """Scores of a model's players for one method and task; higher = more important.

    Example: ``Ranking(players=["layer0.block", "layer1.block"], granularity="block", scores=[0.3, 0.1],
    method="block_influence", model_fingerprint=fp).least_important(1) == ["layer1.block"]``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    players: tuple[str, ...]
    granularity: Granularity
    scores: tuple[float, ...]
    stderr: tuple[float | None, ...] | None = None
    method: str
    task: str | None = None
    model_fingerprint: str
    value_fingerprint: str | None = None
    created_at: AwareDatetime = Field(default_factory=_now)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Self:
        n_players = len(self.players)
        if n_players == 0:
            raise ValueError("a ranking needs at least one player")
        if len(self.scores) != n_players:
            raise ValueError(f"{len(self.scores)} scores for {n_players} players: give one score per player")
        if len(set(self.players)) != n_players:
            raise ValueError(f"player names repeat in {list(self.players)}: each player must appear once")
        kinds = self.granularity.kinds
        for name in self.players:
            try:
                kind = Player.parse(name).kind
            except ConfigError:
                kind = None
            if kind not in kinds:
                raise ValueError(
                    f"player {name!r} is not a {self.granularity} player: use names like "
                    f"{' or '.join(f'layer3.{kind}' for kind in kinds)}"
                )
        bad_scores = [name for name, score in zip(self.players, self.scores, strict=True) if not math.isfinite(score)]
        if bad_scores:
            raise ValueError(f"non-finite scores for {bad_scores}: every score must be a finite number")
        if self.stderr is not None:
            if len(self.stderr) != n_players:
                raise ValueError(f"{len(self.stderr)} stderr entries for {n_players} players: give one per player")
            if any(s is not None and not (math.isfinite(s) and s >= 0) for s in self.stderr):
                raise ValueError(f"stderr {list(self.stderr)} must be finite and >= 0; use null where unknown")
        if not _METHOD.fullmatch(self.method):
            raise ValueError(
                f"method {self.method!r} is not a method name: use e.g. 'leave_one_out' or 'shapley:permutation'"
            )
        return self

    @property
    def n_players(self) -> int:
        return len(self.players)

    def order(self, ascending: bool = True) -> list[int]:
        """Player indices by score, least important first (``ascending=False``: most important first).

        Ties put the later player first when ascending, as pruning removes the deeper of two equal players.
        """
        least_first = sorted(range(self.n_players), key=lambda index: (self.scores[index], -index))
        return least_first if ascending else least_first[::-1]

    def least_important(self, k: int) -> list[str]:
        """Names of the ``k`` least important players, least important first."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= self.n_players:
            raise ConfigError(f"k must be an integer in [0, {self.n_players}], got {k!r}")
        return [self.players[index] for index in self.order()[:k]]

    def to_json(self) -> str:
        """The ranking as versioned JSON."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Ranking:
        """A ranking from its JSON; a malformed or newer-version document is a DataError."""
        return read_document(cls, text, "ranking", version=FORMAT_VERSION)

    def save(self, path: str | Path) -> None:
        """Write the ranking's JSON to ``path``."""
        write_text(Path(path), self.to_json(), "ranking")

    @classmethod
    def load(cls, path: str | Path) -> Ranking:
        """Read a ranking written by :meth:`save`."""
        return cls.from_json(read_text(Path(path), "ranking"))


class RankingSet(BaseModel):
    """Several rankings in one file: ``{"format_version": 1, "rankings": [...]}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    rankings: tuple[Ranking, ...]

    def find(self, method: str, task: str | None = None) -> Ranking:
        """The one ranking of ``method`` (and ``task`` when given); none or several is a ConfigError."""
        found = [r for r in self.rankings if r.method == method and (task is None or r.task == task)]
        if len(found) != 1:
            available = ", ".join(f"{r.method} (task {r.task})" for r in self.rankings) or "none"
            what = "no ranking" if not found else f"{len(found)} rankings"
            raise ConfigError(
                f"{what} with method {method!r}{'' if task is None else f' and task {task!r}'}; "
                f"available: {available}. Name the method and task of exactly one"
            )
        return found[0]

    def to_json(self) -> str:
        """The set as versioned JSON."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> RankingSet:
        """A set from its JSON, or a one-element set from a single ranking's JSON."""
        document = parse_document(text, "ranking set", version=FORMAT_VERSION)
        if "rankings" not in document:
            return cls(rankings=(validate_document(Ranking, document, "ranking"),))
        entries = document["rankings"]
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict):
                check_header(entry, "ranking", version=FORMAT_VERSION)
        return validate_document(cls, document, "ranking set")

    def save(self, path: str | Path) -> None:
        """Write the set's JSON to ``path``."""
        write_text(Path(path), self.to_json(), "ranking")

    @classmethod
    def load(cls, path: str | Path) -> RankingSet:
        """Read a set (or a single ranking) written by ``save``."""
        return cls.from_json(read_text(Path(path), "ranking"))
