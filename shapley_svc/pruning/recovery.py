"""Recovery: emulate each removed block or sublayer by a cheap map of the residual stream, fitted in closed form.

A removed player ``p`` added an update ``u = f_p(x)`` to the residual stream ``x`` entering it. The pruned
model adds instead ``s_p * a_p(x)``, at the same place in the stream, with

- ``bias``: ``a_p(x) = mean(u)`` over the calibration tokens;
- ``lowrank``: ``a_p(x) = b + x A``, ``rank(A) <= r``, by reduced-rank ridge regression (Mukherjee & Zhu,
  2011): ``A_ridge = (Xc'Xc + lam I)^-1 Xc'Uc`` on centred data, then ``A = A_ridge V_r V_r'`` with ``V_r`` the
  top-``r`` eigenvectors of ``A_ridge' (Xc'Xc + lam I) A_ridge`` (the fitted values of the ridge-augmented
  problem), ``b = mean(u) - mean(x) A``, ``lam = ridge * trace(Xc'Xc) / d``.

``x`` and ``u`` are collected in the unpruned model (one pass, streamed sufficient statistics), so the fit
costs one calibration forward. The scales ``s_p`` are then chosen by coordinate search over a small grid,
one emulator at a time in stream order, on the calibration loss of the pruned model; ``s_p = 0`` (no
emulator) is always a candidate and a scale is kept only if it lowers the loss, so recovery never makes
the calibration loss worse. Emulators left at scale 0 are dropped.

Emulators are saved beside the checkpoint as ``recovery.safetensors`` (never pickle) and attached to a
loaded pruned model with forward hooks (:func:`attach`): the hook of a removed block or attention sits on
the output of the kept layer that runs just before it (or on the input of the first layer, after any
embedding scaling the backbone applies, as Granite's), the hook of a removed MLP on the output of its own
layer, whose zeroed MLP adds nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from shapley_svc.engine import TokenBatch
from shapley_svc.engine.backbone import run_backbone, temporary_hooks
from shapley_svc.errors import ConfigError, ModelLoadError
from shapley_svc.model.layouts import Layout, resolve
from shapley_svc.model.masked import BranchModules, logits_head
from shapley_svc.players import Player, parse_player
from shapley_svc.pruning.select import PruningPlan
from shapley_svc.values.base import ValueFunction

RECOVERY_FILE = "recovery.safetensors"
RECOVERY_FORMAT = "shapley-svc-recovery"
RECOVERY_VERSION = "1"
KINDS = ("bias", "lowrank")
SCALE_GRID: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)


class Emulator(nn.Module):
    """``x -> scale * (bias + (x @ down) @ up)``: the stand-in update of one removed player."""

    def __init__(self, bias: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.register_buffer("bias", bias.float())  # [d]
        self.register_buffer("down", down.float())  # [d, r]
        self.register_buffer("up", up.float())  # [r, d]
        self.scale = scale

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        update = self.bias.to(hidden.device)
        if self.rank:
            update = update + (hidden.float() @ self.down.to(hidden.device)) @ self.up.to(hidden.device)
        return (self.scale * update).to(hidden.dtype)


@dataclass
class RecoveryAdapters:
    """Emulators for the removed players of ``plan``, keyed by original player name."""

    plan: PruningPlan
    kind: str
    rank: int
    emulators: dict[str, Emulator] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write every emulator to one safetensors file (the plan and settings go in its metadata)."""
        tensors: dict[str, torch.Tensor] = {}
        for name, emulator in self.emulators.items():
            tensors[f"{name}.bias"] = emulator.bias.contiguous()
            tensors[f"{name}.down"] = emulator.down.contiguous()
            tensors[f"{name}.up"] = emulator.up.contiguous()
            tensors[f"{name}.scale"] = torch.tensor([emulator.scale], dtype=torch.float32)
        metadata = {
            "format": RECOVERY_FORMAT,
            "version": RECOVERY_VERSION,
            "kind": self.kind,
            "rank": str(self.rank),
            "num_layers": str(self.plan.num_layers),
            "removed": json.dumps(list(self.plan.names)),
        }
        save_file(tensors, str(path), metadata=metadata)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RecoveryAdapters:
        """Read a file written by :meth:`save`."""
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (OSError, SafetensorError) as error:
            raise ConfigError(f"could not read recovery file {path}: {error}; re-run `shapley-svc prune`") from error
        if metadata.get("format") != RECOVERY_FORMAT or metadata.get("version") != RECOVERY_VERSION:
            raise ConfigError(
                f"{path} is not a version-{RECOVERY_VERSION} {RECOVERY_FORMAT} file (metadata {metadata}); "
                "re-run `shapley-svc prune --recovery ...` with this version"
            )
        plan = PruningPlan.from_players(
            (parse_player(name) for name in json.loads(metadata["removed"])), int(metadata["num_layers"])
        )
        names = sorted({key.rsplit(".", 1)[0] for key in tensors})
        emulators = {
            name: Emulator(
                tensors[f"{name}.bias"],
                tensors[f"{name}.down"],
                tensors[f"{name}.up"],
                float(tensors[f"{name}.scale"][0]),
            )
            for name in names
        }
        return cls(plan, metadata["kind"], int(metadata["rank"]), emulators)


def anchor(plan: PruningPlan, player: Player) -> int | None:
    """Pruned-model index of the layer whose output the emulator of ``player`` adds to (None: the first
    layer's input)."""
    kept = plan.kept_layers
    if player.kind == "mlp":
        return kept.index(player.layer)
    earlier = [new for new, old in enumerate(kept) if old < player.layer]
    return earlier[-1] if earlier else None


def attach(model: PreTrainedModel, layout: Layout, adapters: RecoveryAdapters) -> list[RemovableHandle]:
    """Hook every emulator into the pruned (plain-form or skip-form) ``model``; returns the hook handles."""
    layers = resolve(model, layout.layers)
    if len(layers) != len(adapters.plan.kept_layers):
        raise ConfigError(
            f"the recovery file is for a model with {len(adapters.plan.kept_layers)} layers after pruning, "
            f"this one has {len(layers)}: attach it to the checkpoint it was saved with"
        )
    handles: list[RemovableHandle] = []
    for player in adapters.plan.removed:
        emulator = adapters.emulators.get(player.name)
        if emulator is None:
            continue
        index = anchor(adapters.plan, player)
        if index is None:
            handles.append(layers[0].register_forward_pre_hook(_adding_input_hook(emulator), with_kwargs=True))
        else:
            handles.append(layers[index].register_forward_hook(_adding_hook(emulator)))
    return handles


@contextmanager
def attached(model: PreTrainedModel, layout: Layout, adapters: RecoveryAdapters) -> Iterator[PreTrainedModel]:
    """``model`` with the emulators hooked in; hooks removed on exit, also after an exception."""
    handles = attach(model, layout, adapters)
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _adding_hook(emulator: Emulator) -> Callable[[nn.Module, Any, Any], torch.Tensor]:
    def hook(_module: nn.Module, _args: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise ModelLoadError(
                f"a decoder layer returned {type(output).__name__}, not the hidden-state tensor recovery expects; "
                "use transformers >= 4.57"
            )
        return output + emulator(output)

    return hook


def _adding_input_hook(emulator: Emulator) -> Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]:
    def hook(
        _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (args[0] + emulator(args[0]), *args[1:]), kwargs
        hidden = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": hidden + emulator(hidden)}

    return hook


@dataclass
class _Moments:
    """Streamed sums over tokens of x, u, x x' and x u' (float64)."""

    count: int = 0
    sum_x: torch.Tensor | None = None
    sum_u: torch.Tensor | None = None
    sum_xx: torch.Tensor | None = None
    sum_xu: torch.Tensor | None = None

    def add(self, x: torch.Tensor, u: torch.Tensor, second_order: bool) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        u = u.reshape(-1, u.shape[-1]).double()
        parts = {"sum_x": x.sum(0), "sum_u": u.sum(0)}
        if second_order:
            parts |= {"sum_xx": x.T @ x, "sum_xu": x.T @ u}
        for key, value in parts.items():
            current = getattr(self, key)
            setattr(self, key, value if current is None else current + value)
        self.count += len(x)


def fit(
    model: PreTrainedModel,
    layout: Layout,
    plan: PruningPlan,
    batches: Sequence[TokenBatch],
    *,
    kind: str = "bias",
    rank: int = 8,
    ridge: float = 1e-2,
) -> RecoveryAdapters:
    """Fit one emulator per removed player of ``plan`` on the calibration ``batches`` of unpruned ``model``.

    Scales start at 1; call :func:`calibrate_scales` on the pruned model to pick them.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown recovery kind {kind!r}: use one of {', '.join(KINDS)} (or none)")
    if kind == "lowrank" and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"rank must be a positive integer for lowrank recovery, got {rank!r}")
    if ridge <= 0:
        raise ConfigError(f"ridge must be > 0, got {ridge}")
    moments = {player.name: _Moments() for player in plan.removed}
    backbone = resolve(model, layout.layers.rsplit(".", 1)[0])
    with temporary_hooks() as handles:
        _add_collecting_hooks(handles, model, layout, plan, moments, second_order=kind == "lowrank")
        with torch.inference_mode():
            for batch in batches:
                run_backbone(backbone, batch)
    emulators = {name: _solve(m, kind, rank, ridge) for name, m in moments.items()}
    return RecoveryAdapters(plan, kind, rank if kind == "lowrank" else 0, emulators)


def _add_collecting_hooks(
    handles: list[RemovableHandle],
    model: PreTrainedModel,
    layout: Layout,
    plan: PruningPlan,
    moments: dict[str, _Moments],
    *,
    second_order: bool,
) -> None:
    """Hooks adding each removed player's input ``x`` and update ``u`` to its moments; appended to ``handles``.

    A block's ``x`` is its layer's input and ``u`` the layer's output minus ``x``; a sublayer's ``x`` is the
    input of its residual branch's first module and ``u`` the output of its last one (norm after it
    included) times the layer's residual multiplier: the update the branch adds to the stream.
    """
    layers = resolve(model, layout.layers)
    inputs: dict[str, torch.Tensor] = {}

    def remember(player: Player) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs[player.name] = args[0] if args else kwargs["hidden_states"]

        return hook

    def collect(player: Player, multiplier: float | None) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            update = output[0] if isinstance(output, tuple) else output
            x = inputs[player.name]
            if player.kind == "block":
                update = update - x
            elif multiplier is not None:
                update = update * multiplier
            moments[player.name].add(x, update, second_order)

        return hook

    for player in plan.removed:
        layer = layers[player.layer]
        first: nn.Module = layer
        last: nn.Module = layer
        multiplier = None
        if player.kind != "block":
            branch = BranchModules.of(layer, layout, player.kind)
            first, last, multiplier = branch.first, branch.last, branch.multiplier
        handles.append(first.register_forward_pre_hook(remember(player), with_kwargs=True))
        handles.append(last.register_forward_hook(collect(player, multiplier)))


def _solve(moments: _Moments, kind: str, rank: int, ridge: float) -> Emulator:
    """Closed-form emulator from streamed moments (see the module docstring)."""
    if moments.count == 0 or moments.sum_u is None or moments.sum_x is None:
        raise ConfigError("no calibration tokens reached a removed player: give calibration batches")
    mean_u = moments.sum_u / moments.count
    width = mean_u.shape[0]
    if kind == "bias":
        return Emulator(mean_u, torch.zeros(width, 0), torch.zeros(0, width))
    mean_x = moments.sum_x / moments.count
    gram = moments.sum_xx - moments.count * torch.outer(mean_x, mean_x)  # Xc'Xc [d, d]
    cross = moments.sum_xu - moments.count * torch.outer(mean_x, mean_u)  # Xc'Uc [d, d]
    lam = ridge * float(torch.trace(gram)) / width
    regularised = gram + lam * torch.eye(width, dtype=gram.dtype)
    coefficients = torch.linalg.solve(regularised, cross)  # A_ridge [d, d]
    fitted_gram = coefficients.T @ regularised @ coefficients
    _eigenvalues, eigenvectors = torch.linalg.eigh((fitted_gram + fitted_gram.T) / 2)
    top = eigenvectors[:, -min(rank, width) :]  # V_r [d, r]
    down = coefficients @ top  # [d, r]
    bias = mean_u - mean_x @ down @ top.T
    return Emulator(bias, down, top.T.contiguous())


@torch.inference_mode()
def evaluate_value(
    model: PreTrainedModel, layout: Layout, value_fn: ValueFunction, batches: Sequence[TokenBatch]
) -> np.ndarray:
    """float[t]: ``value_fn`` on a model run as is (plain forward, so hooks and masks apply)."""
    backbone = resolve(model, layout.layers.rsplit(".", 1)[0])
    head = logits_head(model, layout)
    statistics = []
    for index, batch in enumerate(batches):
        final_hidden = run_backbone(backbone, batch).last_hidden_state
        statistics.append(value_fn.score(index, final_hidden, head))
    return np.asarray(value_fn.finalize(statistics), dtype=np.float64)


@dataclass(frozen=True)
class Calibration:
    """Calibration loss of the pruned model without and with the chosen emulator scales."""

    loss_without: float
    loss_with: float
    scales: dict[str, float]


def calibrate_scales(
    pruned: PreTrainedModel,
    layout: Layout,
    adapters: RecoveryAdapters,
    loss: Callable[[PreTrainedModel], float],
    grid: Sequence[float] = SCALE_GRID,
) -> Calibration:
    """Pick each emulator's scale from ``{0} | grid`` by coordinate search on ``loss`` (lower is better).

    Mutates ``adapters``: scales are set and emulators left at 0 are removed. The result's ``loss_with``
    is at most ``loss_without`` by construction.
    """
    for emulator in adapters.emulators.values():
        emulator.scale = 0.0
    with attached(pruned, layout, adapters):
        baseline = best = float(loss(pruned))
        if not math.isfinite(baseline):
            raise ConfigError(f"the pruned model's calibration loss is {baseline}; recovery cannot start from it")
        for emulator in adapters.emulators.values():
            chosen = 0.0
            for scale in grid:
                emulator.scale = float(scale)
                trial = float(loss(pruned))
                if trial < best:
                    best, chosen = trial, float(scale)
            emulator.scale = chosen
    adapters.emulators = {name: e for name, e in adapters.emulators.items() if e.scale != 0.0}
    return Calibration(baseline, best, {name: e.scale for name, e in adapters.emulators.items()})


def load_adapters(folder: str | Path) -> RecoveryAdapters:
    """The emulators saved beside a pruned checkpoint (``recovery.safetensors``)."""
    path = Path(folder) / RECOVERY_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found: this checkpoint was pruned without --recovery bias|lowrank")
    return RecoveryAdapters.load(path)
