"""Players and their names, in one place: ``layer3.block``, ``layer3.attn``, ``layer3.mlp``.

A player is a decoder block, or one sublayer (attention or MLP) of a block. Every module that builds,
parses or checks a player name goes through :class:`Player`; no torch is needed here, so estimators,
plans and the HTTP layer use it too.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from shapley_svc.errors import ConfigError


class Granularity(enum.StrEnum):
    """What one player is: a whole decoder block, or one sublayer (attention or MLP) of a block."""

    BLOCK = "block"
    SUBLAYER = "sublayer"

    @classmethod
    def parse(cls, value: str | Granularity) -> Granularity:
        """The granularity named ``value``; anything else is a ConfigError listing the valid names."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown granularity {value!r}: use one of {', '.join(g.value for g in cls)}") from None

    @property
    def kinds(self) -> tuple[str, ...]:
        """The player kinds of this granularity, in layer order: ``block``, or ``attn`` then ``mlp``."""
        return ("block",) if self is Granularity.BLOCK else ("attn", "mlp")


PLAYER_KINDS = ("block", "attn", "mlp")
_PLAYER_NAME = re.compile(r"layer(\d+)\.(block|attn|mlp)")


@dataclass(frozen=True)
class Player:
    """One switchable part of the model: ``kind`` is ``block``, ``attn`` or ``mlp`` of decoder layer ``layer``."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"layer{self.layer}.{self.kind}"

    @property
    def granularity(self) -> Granularity:
        """``block`` for a block, ``sublayer`` for an attention or MLP sublayer."""
        return Granularity.BLOCK if self.kind == "block" else Granularity.SUBLAYER

    @classmethod
    def parse(cls, name: str) -> Player:
        """The player named ``name`` (``layer3.block``, ``layer3.attn``, ``layer3.mlp``)."""
        match = _PLAYER_NAME.fullmatch(name.strip())
        if match is None:
            raise ConfigError(f"player name {name!r} is not of the form layerN.block, layerN.attn or layerN.mlp")
        return cls(int(match.group(1)), match.group(2))


def parse_player(name: str) -> Player:
    """The :class:`Player` named ``name`` (``layer3.block``, ``layer3.attn``, ``layer3.mlp``)."""
    return Player.parse(name)


def model_players(num_layers: int, granularity: Granularity | str) -> tuple[Player, ...]:
    """Every player of a ``num_layers``-layer model at ``granularity``, in layer order."""
    kinds = Granularity.parse(granularity).kinds
    return tuple(Player(layer, kind) for layer in range(num_layers) for kind in kinds)


def block_names(layers: range | list[int] | tuple[int, ...]) -> tuple[str, ...]:
    """``layerN.block`` for each layer index in ``layers``."""
    return tuple(Player(layer, "block").name for layer in layers)
