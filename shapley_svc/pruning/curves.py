"""Pruning curves (a metric against the number of players removed) and the honest-evaluation summary.

A curve follows one ranking's removal order (least important first, after the selection rules): point
``k`` is the value of the coalition without its first ``k`` players, for every task of every judging game,
with the parameters and KV-cache bytes per token of that pruned model. All points of one game come from a
single batched call, so the engine shares hidden-state prefixes between them.

Honest evaluation: a ranking is estimated on one split and the pruned model judged on another.
:class:`Split` describes each (e.g. "wikitext2 windows 8-15 of 128 tokens"); the summary states both and
flags an overlap when it can tell (same LM-loss corpus and window size with intersecting window ranges).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shapley_svc.errors import ConfigError
from shapley_svc.players import Player
from shapley_svc.pruning.savings import Footprint
from shapley_svc.pruning.select import PruningPlan, candidates, least_important
from shapley_svc.types import Game
from shapley_svc.versioned import parse_document, read_text, write_text

CURVES_FORMAT = "shapley-svc-pruning-curves"
CURVES_VERSION = 1


@dataclass(frozen=True)
class Split:
    """Which data a ranking was estimated on or a model is judged on; ``windows`` for LM-loss slices."""

    description: str
    corpus: str | None = None
    window: int | None = None
    windows: tuple[int, int] | None = None  # first and last window index, inclusive

    def overlaps(self, other: Split) -> bool | None:
        """Whether two splits share data: True/False when both are LM-loss slices, else None (unknown)."""
        if self.windows is None or other.windows is None:
            return None
        if (self.corpus, self.window) != (other.corpus, other.window):
            return False
        return self.windows[0] <= other.windows[1] and other.windows[0] <= self.windows[1]


def describe_split(value_fn: object) -> Split:
    """A :class:`Split` for a value function (LM-loss windows exactly; others by their task names)."""
    window = getattr(value_fn, "window", None)
    first = getattr(value_fn, "first_window", None)
    count = getattr(value_fn, "windows", None)
    corpus = getattr(value_fn, "corpus", None)
    if isinstance(window, int) and isinstance(first, int) and isinstance(count, int) and isinstance(corpus, str):
        last = first + count - 1
        return Split(f"{corpus} windows {first}-{last} of {window} tokens", corpus, window, (first, last))
    split = getattr(value_fn, "split", None)
    names = ", ".join(getattr(value_fn, "task_names", ()) or (type(value_fn).__name__,))
    return Split(f"{names} ({split} split)" if split else names)


def removal_order(
    scores: Mapping[str, float],
    num_layers: int,
    *,
    target: str = "block",
    protect_first: int = 0,
    protect_last: int = 0,
) -> list[Player]:
    """Every eligible player of ``target`` from least to most important."""
    allowed = candidates(scores, target, num_layers, protect_first, protect_last)
    return least_important(scores, allowed, len(allowed))


@dataclass
class CurveSet:
    """Curves of several rankings on several judging games; JSON-serialisable via :meth:`to_dict`."""

    num_layers: int
    series: list[dict[str, Any]] = field(default_factory=list)
    splits: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The curves as a versioned JSON-ready dict."""
        return {
            "format": CURVES_FORMAT,
            "version": CURVES_VERSION,
            "num_layers": self.num_layers,
            "splits": self.splits,
            "series": self.series,
        }

    def save(self, path: str | Path) -> Path:
        """Write the curves as JSON."""
        write_text(Path(path), json.dumps(self.to_dict(), indent=2), "pruning curves")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> CurveSet:
        """Read curves written by :meth:`save`."""
        text = read_text(Path(path), "pruning curves")
        data = parse_document(
            text, f"pruning curves {path}", version=CURVES_VERSION, version_key="version", format_name=CURVES_FORMAT
        )
        return cls(int(data["num_layers"]), list(data["series"]), dict(data["splits"]))


def pruning_curves(
    orders: Mapping[str, Sequence[Player]],
    games: Mapping[str, Game],
    num_layers: int,
    *,
    max_removed: int,
    cost: Callable[[PruningPlan], Footprint] | None = None,
    splits: Mapping[str, str] | None = None,
) -> CurveSet:
    """Values of every judging game for 0..``max_removed`` players removed along each ranking's order.

    ``orders`` maps a ranking name to its removal order (see :func:`removal_order`); ``cost`` gives the
    footprint of each pruned model (e.g. ``lambda plan: footprint(model, layout, plan)``).
    """
    curves = CurveSet(num_layers, splits=dict(splits or {}))
    for ranking_name, order in orders.items():
        if max_removed > len(order):
            raise ConfigError(
                f"ranking {ranking_name!r} can remove at most {len(order)} players, asked for {max_removed}"
            )
        plans = [PruningPlan.from_players(order[:k], num_layers) for k in range(max_removed + 1)]
        costs = [cost(plan).to_dict() for plan in plans] if cost is not None else None
        for game_name, game in games.items():
            coalitions = np.stack([plan.mask(game.player_names) for plan in plans])
            values = np.asarray(game(coalitions), dtype=np.float64)
            for task_index, task in enumerate(game.task_names):
                curves.series.append(
                    {
                        "ranking": ranking_name,
                        "game": game_name,
                        "task": task,
                        "removed": [p.name for p in order[:max_removed]],
                        "values": values[:, task_index].tolist(),
                        "footprints": costs,
                    }
                )
    return curves


def display_metric(task: str, values: Sequence[float]) -> tuple[str, list[float]]:
    """A readable form of a task's values: perplexity for ``*.neg_loss``, the raw value otherwise."""
    if task.endswith(".neg_loss"):
        return "perplexity", [math.exp(-v) for v in values]
    return task, list(values)


def plot_curves(curves: CurveSet, path: str | Path) -> Path:
    """One panel per (game, task), one line per ranking, metric against players removed; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(s["game"], s["task"]) for s in curves.series})
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (game, task) in zip(axes[0], panels, strict=True):
        for series in (s for s in curves.series if (s["game"], s["task"]) == (game, task)):
            label, ys = display_metric(task, series["values"])
            axis.plot(range(len(ys)), ys, marker="o", label=series["ranking"])
            axis.set_ylabel(label)
            if label == "perplexity":
                axis.set_yscale("log")
        axis.set_xlabel("players removed")
        axis.set_title(f"{game}: {task}")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


@dataclass
class PruningSummary:
    """What went, what it cost and how the pruned model scores, with the splits used to rank and to judge."""

    model: str
    removed: list[str]
    ranking_source: str
    ranking_split: Split
    judge_split: Split
    before: Footprint
    after: Footprint
    judge_task: str
    judge_before: float
    judge_after: float
    judge_recovered: float | None = None
    recovery: str = "none"
    recovery_scales: dict[str, float] | None = None
    calibration_split: Split | None = None
    calibration_before: float | None = None
    calibration_after: float | None = None

    @property
    def held_out(self) -> bool | None:
        """Whether judging data is disjoint from ranking (and calibration) data; None when unknown."""
        checks = [self.judge_split.overlaps(self.ranking_split)]
        if self.calibration_split is not None:
            checks.append(self.judge_split.overlaps(self.calibration_split))
        if any(check is True for check in checks):
            return False
        return None if any(check is None for check in checks) else True

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict, with ``held_out``."""
        data = asdict(self)
        data["held_out"] = self.held_out
        return data

    def format(self) -> str:
        """A readable multi-line table of the summary."""
        held = {True: "yes", False: "NO - the judging data overlaps", None: "unknown"}[self.held_out]
        lines = [
            f"pruned {self.model}: removed {len(self.removed)} player(s): {', '.join(self.removed) or '(none)'}",
            f"  ranking: {self.ranking_source} (estimated on: {self.ranking_split.description})",
            f"  judged on: {self.judge_split.description} (held out: {held})",
            _row("", "before", "after"),
            *self._footprint_rows(),
            _row(f"held-out {self.judge_task}", f"{self.judge_before:.4f}", f"{self.judge_after:.4f}"),
        ]
        if self.judge_recovered is not None:
            lines.append(_row(f"  + recovery ({self.recovery})", "", f"{self.judge_recovered:.4f}"))
            lines.append(f"  recovery scales: {self.recovery_scales}")
        if self.calibration_split is not None and self.calibration_before is not None:
            lines.append(
                f"  recovery calibration loss on {self.calibration_split.description}: "
                f"{self.calibration_before:.4f} -> {self.calibration_after:.4f}"
            )
        return "\n".join(lines)

    def _footprint_rows(self) -> list[str]:
        """Parameters, KV bytes per token and (when timed) latency, before and after, with the change."""
        rows = []
        for label, name in FOOTPRINT_ROWS:
            before, after = getattr(self.before, name), getattr(self.after, name)
            rows.append(_row(label, f"{before:,}", f"{after:,}", relative_change(before, after)))
        before_s, after_s = self.before.latency_s, self.after.latency_s
        if before_s is not None and after_s is not None:
            change = relative_change(before_s, after_s)
            rows.append(_row("forward latency (ms)", f"{before_s * 1e3:.1f}", f"{after_s * 1e3:.1f}", change))
        return rows


FOOTPRINT_ROWS = (
    ("parameters", "parameters"),
    ("active parameters", "active_parameters"),
    ("KV bytes/token (skip)", "kv_bytes_per_token"),
    ("KV bytes/token (plain)", "kv_bytes_per_token_plain"),
)
"""(label, :class:`Footprint` field) of the summary's integer rows, in table order."""


def _row(label: str, before: object, after: object, change: str = "") -> str:
    return f"  {label:<26}{before!s:>16}{after!s:>16}  {change}"


def relative_change(before: float | None, after: float | None) -> str:
    """The relative change from ``before`` to ``after`` as a signed percentage; empty when undefined."""
    return f"{(after / before - 1) * 100:+.1f}%" if before and after is not None else ""
