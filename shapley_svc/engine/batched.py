"""Batched evaluation of many masks on one token batch, sharing hidden states across masks.

Two masks that agree on every player of layers ``0..d-1`` have the same hidden state before layer ``d``.
The engine sorts the masks in layer order (layer 0 most significant) and walks them depth first, as a
trie: each mask starts from the deepest state it shares with the previous one. It keeps one state per
depth (``L + 1`` references, no copies), so memory is bounded whatever the number of masks. A full
forward per mask, as the seed paper's code does, runs every present layer of every mask again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from shapley_svc.engine.backbone import run_backbone, temporary_hooks
from shapley_svc.errors import ConfigError
from shapley_svc.model.masked import MaskedModel
from shapley_svc.types import Coalitions

ReadoutResult = TypeVar("ReadoutResult")


@dataclass(frozen=True)
class TokenBatch:
    """Token ids [b, s] with an optional attention mask ([b, s] padding, or a ready [b, 1, s, s] mask for
    packed sequences) and optional position ids [b, s]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> TokenBatch:
        """The same batch on ``device``."""
        return TokenBatch(
            self.input_ids.to(device),
            None if self.attention_mask is None else self.attention_mask.to(device),
            None if self.position_ids is None else self.position_ids.to(device),
        )


@dataclass
class PreparedBatch:
    """What every decoder layer receives for one token batch: the embedded input and per-layer kwargs."""

    embedded: torch.Tensor
    layer_kwargs: list[dict[str, Any]]


@dataclass
class EngineStats:
    """Work done by the engine: decoder-layer forwards (full or partial) and masks evaluated."""

    layer_forwards: int = 0
    masks: int = 0


LayerInputs = list[tuple[torch.Tensor, dict[str, Any]] | None]
"""Per decoder layer, its input hidden state and the other kwargs the backbone called it with (None: not yet)."""


def layer_input_capture(captured: LayerInputs) -> Callable[[int], Callable[..., None]]:
    """Forward pre-hooks (with kwargs) by layer index that record each layer's input into ``captured``."""

    def capture(index: int) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[index] = (hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"})

        return hook

    return capture


class BatchedEngine:
    """Evaluates many masks of a :class:`MaskedModel` on one token batch with prefix sharing."""

    def __init__(self, masked: MaskedModel):
        self.masked = masked
        self.stats = EngineStats()

    @torch.inference_mode()
    def prepare(self, batch: TokenBatch) -> PreparedBatch:
        """Embed ``batch`` and capture the kwargs the backbone passes to each decoder layer.

        The backbone runs once with every block skipped (embedding, rotary tables and attention masks only),
        so attention-mask and position handling stay those of the installed transformers.
        """
        masked = self.masked
        captured: LayerInputs = [None] * masked.num_layers
        capture = layer_input_capture(captured)

        with temporary_hooks() as handles, masked.active(np.zeros(masked.n_players, dtype=bool)):
            for index, layer in enumerate(masked.layers):
                handles.append(layer.register_forward_pre_hook(capture(index), with_kwargs=True))
            run_backbone(masked.backbone, batch)
        if any(entry is None for entry in captured):
            raise ConfigError("the backbone did not call every decoder layer; its layout does not match the model")
        return PreparedBatch(
            embedded=captured[0][0],  # type: ignore[index]
            layer_kwargs=[entry[1] for entry in captured],  # type: ignore[index]
        )

    @torch.inference_mode()
    def evaluate(
        self,
        coalitions: Coalitions,
        batch: TokenBatch | PreparedBatch,
        readout: Callable[[torch.Tensor], ReadoutResult],
        progress: Callable[[], object] | None = None,
    ) -> list[ReadoutResult]:
        """``readout(final_hidden)`` for each coalition (row of bool[k, n]), in the order given.

        ``final_hidden`` [b, s, d] is the output of the final norm; the readout applies whatever head it needs.
        Values equal running each mask alone (same kernels, same order of operations per mask).
        ``progress`` is called once per coalition done (e.g. a progress bar's ``update``).
        """
        prepared = batch if isinstance(batch, PreparedBatch) else self.prepare(batch)
        masked = self.masked
        plans = np.stack([masked.layer_plan(mask) for mask in np.atleast_2d(coalitions)])  # [k, L, 2]
        order = lexicographic_order(plans.reshape(len(plans), -1))
        states: list[torch.Tensor] = [prepared.embedded] * (masked.num_layers + 1)
        results: list[ReadoutResult | None] = [None] * len(plans)
        previous: np.ndarray | None = None
        for mask_index in order:
            plan = plans[mask_index]
            start = 0 if previous is None else shared_layer_prefix(previous, plan)
            hidden = states[start]
            for layer in range(start, masked.num_layers):
                attention, mlp = plan[layer]
                if attention or mlp:
                    hidden = masked.run_layer(layer, hidden, bool(attention), bool(mlp), prepared.layer_kwargs[layer])
                    self.stats.layer_forwards += 1
                states[layer + 1] = hidden
            results[mask_index] = readout(masked.final_norm(hidden))
            self.stats.masks += 1
            previous = plan
            if progress is not None:
                progress()
        return results  # type: ignore[return-value]


def lexicographic_order(codes: np.ndarray) -> np.ndarray:
    """Row indices of bool[k, m] sorted lexicographically, column 0 most significant (stable)."""
    return np.lexsort(codes.T[::-1].astype(np.int8)) if len(codes) else np.zeros(0, dtype=int)


def shared_layer_prefix(plan_a: np.ndarray, plan_b: np.ndarray) -> int:
    """How many leading layers two bool[L, 2] plans agree on completely."""
    differs = np.flatnonzero((plan_a != plan_b).any(axis=1))
    return int(differs[0]) if len(differs) else len(plan_a)


def count_present(coalitions: Sequence[np.ndarray] | np.ndarray, masked: MaskedModel) -> int:
    """Decoder-layer forwards that evaluating each coalition alone would run (layers with any sublayer)."""
    return int(sum(masked.layer_plan(mask).any(axis=1).sum() for mask in np.atleast_2d(coalitions)))
