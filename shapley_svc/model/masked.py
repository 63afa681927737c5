"""`MaskedModel`: run a causal LM with only some decoder blocks or sublayers present, on one resident copy.

A decoder layer is two residual branches (:mod:`shapley_svc.model.layouts`):
``h = h + m * post_norm(attn(norm(h)))`` then the same for the MLP, with the norms and the multiplier ``m``
that the architecture's layout names. Skipping a sublayer drops its whole branch (its norms, matmuls,
multiplier and add are not run at all); skipping a block returns the layer's input unchanged. A mask is
switched on only inside :meth:`MaskedModel.active`, which overrides the ``forward`` of the affected layer
instances and restores them in ``finally``: no weights are copied or reloaded, and the model is whole again
after an exception. :attr:`MaskedModel.head` applies the architecture's logit scaling (Granite, Gemma 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from shapley_svc.errors import ConfigError, ModelLoadError
from shapley_svc.model.layouts import Layout, resolve
from shapley_svc.players import Granularity, Player, model_players

LayerPlan = npt.NDArray[np.bool_]
"""bool[L, 2]: for each decoder layer, whether its attention (column 0) and its MLP (column 1) run."""


@dataclass(frozen=True)
class BranchModules:
    """The modules of one residual branch of one layer (see :class:`~shapley_svc.model.layouts.Branch`)."""

    module: nn.Module
    norm: nn.Module | None
    post_norm: nn.Module | None
    multiplier: float | None

    @classmethod
    def of(cls, layer: nn.Module, layout: Layout, kind: str) -> BranchModules:
        """The ``kind`` (``attn`` or ``mlp``) branch of ``layer``, as ``layout`` describes it."""
        branch, multiplier, scale = layout.branch(kind), layout.residual_multiplier, None
        if multiplier is not None:
            if not isinstance(getattr(layer, multiplier, None), int | float):
                raise ModelLoadError(
                    f"{type(layer).__name__} has no numeric attribute {multiplier!r}; its layout in "
                    "shapley_svc/model/layouts.py does not match this model"
                )
            scale = float(getattr(layer, multiplier))
        return cls(
            module=resolve(layer, branch.module),
            norm=None if branch.norm is None else resolve(layer, branch.norm),
            post_norm=None if branch.post_norm is None else resolve(layer, branch.post_norm),
            multiplier=scale,
        )

    @property
    def first(self) -> nn.Module:
        """The module that reads the residual stream (the norm before the sublayer, else the sublayer)."""
        return self.module if self.norm is None else self.norm

    @property
    def last(self) -> nn.Module:
        """The module whose output is the update (the norm after the sublayer, else the sublayer)."""
        return self.module if self.post_norm is None else self.post_norm

    def input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the branch's module reads from the residual stream ``hidden`` [b, s, d]."""
        return hidden if self.norm is None else self.norm(hidden)

    def add(self, hidden: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``hidden`` plus the branch's update made from its module's ``output`` [b, s, d]."""
        update = output if self.post_norm is None else self.post_norm(output)
        return hidden + (update if self.multiplier is None else update * self.multiplier)


class LogitsHead(nn.Module):
    """The LM head with its architecture's logit scaling: ``linear(x) / divisor``, then ``cap * tanh(. / cap)``."""

    def __init__(self, linear: nn.Module, divisor: float | None, softcap: float | None):
        super().__init__()
        self.linear = linear
        self.divisor = divisor
        self.softcap = softcap

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.linear(hidden)  # [..., V]
        if self.divisor is not None:
            logits = logits / self.divisor
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def logits_head(model: nn.Module, layout: Layout) -> nn.Module:
    """The head mapping final hidden states to the logits ``model`` returns (its linear head when unscaled)."""
    linear = resolve(model, layout.head)
    config = getattr(model, "config", None)
    divisor = None if layout.logits_divisor is None else getattr(config, layout.logits_divisor, None)
    softcap = None if layout.logits_softcap is None else getattr(config, layout.logits_softcap, None)
    if divisor is None and softcap is None:
        return linear
    return LogitsHead(linear, None if divisor is None else float(divisor), None if softcap is None else float(softcap))


class MaskedModel:
    """A causal LM whose players (blocks or sublayers) can be switched off at run time.

    ``players`` lists them in layer order; a mask is a bool sequence over ``players``.
    """

    def __init__(self, model: nn.Module, layout: Layout, granularity: Granularity | str = Granularity.BLOCK):
        self.model = model
        self.layout = layout
        self.granularity = Granularity.parse(granularity)
        self.layers: list[nn.Module] = list(resolve(model, layout.layers))
        self.backbone = resolve(model, layout.layers.rsplit(".", 1)[0])
        self.final_norm = resolve(model, layout.final_norm)
        self.head = logits_head(model, layout)
        self._attentions = [BranchModules.of(layer, layout, "attn") for layer in self.layers]
        self._mlps = [BranchModules.of(layer, layout, "mlp") for layer in self.layers]
        self.players: tuple[Player, ...] = model_players(self.num_layers, self.granularity)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def n_players(self) -> int:
        return len(self.players)

    @property
    def player_names(self) -> tuple[str, ...]:
        return tuple(player.name for player in self.players)

    def full_mask(self) -> npt.NDArray[np.bool_]:
        """The all-present mask."""
        return np.ones(self.n_players, dtype=bool)

    def layer_plan(self, mask: Sequence[bool] | npt.NDArray[np.bool_]) -> LayerPlan:
        """Which sublayers run under ``mask``, as bool[L, 2] (attention, MLP) per decoder layer."""
        mask_array = self.validate_mask(mask)
        if self.granularity is Granularity.BLOCK:
            return np.repeat(mask_array[:, None], 2, axis=1)
        return mask_array.reshape(self.num_layers, 2)

    def validate_mask(self, mask: Sequence[bool] | npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """``mask`` as a bool[n_players] array; a wrong length or non-boolean entries are a ConfigError."""
        array = np.asarray(mask)
        if array.ndim != 1 or array.shape[0] != self.n_players:
            raise ConfigError(
                f"mask has shape {array.shape} but the model has {self.n_players} {self.granularity.value} "
                f"players ({self.num_layers} layers): give one boolean per player, in layer order"
            )
        if array.dtype != np.bool_:
            if not np.isin(array, (0, 1)).all():
                raise ConfigError(f"mask entries must be booleans or 0/1, got {array.tolist()}")
            array = array.astype(bool)
        return array

    def run_layer(
        self, index: int, hidden: torch.Tensor, attention: bool, mlp: bool, layer_kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """Decoder layer ``index`` applied to ``hidden`` [b, s, d] with only the chosen sublayers.

        Pure: it changes no model state. ``layer_kwargs`` are what the backbone passes to the layer
        (attention mask, position embeddings, cache...).
        """
        if attention and mlp:
            return self.layers[index](hidden, **layer_kwargs)
        if attention:
            return self._attention_update(index, hidden, layer_kwargs)
        if mlp:
            return self._mlp_update(index, hidden)
        return hidden

    def _attention_update(self, index: int, hidden: torch.Tensor, layer_kwargs: dict[str, Any]) -> torch.Tensor:
        branch = self._attentions[index]
        output, _ = branch.module(hidden_states=branch.input(hidden), **layer_kwargs)
        return branch.add(hidden, output)

    def _mlp_update(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        branch = self._mlps[index]
        return branch.add(hidden, branch.module(branch.input(hidden)))

    def _partial_forward(self, index: int, attention: bool, mlp: bool) -> Callable[..., torch.Tensor]:
        """A replacement ``forward`` for layer ``index`` that runs only the chosen sublayers."""

        def forward(hidden_states: torch.Tensor, *args: Any, **layer_kwargs: Any) -> torch.Tensor:
            if args:
                raise TypeError("MaskedModel expects decoder layers to be called with keyword arguments only")
            return self.run_layer(index, hidden_states, attention, mlp, layer_kwargs)

        return forward

    def _cache_slots(self, plan: npt.NDArray[np.bool_]) -> dict[int, int]:
        """KV-cache slot of each running attention: the lowest free slot of the same layer type (full or sliding).

        Slots are packed as if the skipped attentions were removed, so that the cache's length (read from slot
        0) is that of a layer which really sees the tokens; matching types keeps a full-attention layer out of
        a sliding-window cache slot when the config mixes the two (Qwen2 with ``use_sliding_window``).
        """
        layer_types = getattr(self.model.config, "layer_types", None) or ["full_attention"] * self.num_layers
        free = list(range(self.num_layers))
        slots: dict[int, int] = {}
        for index in (index for index in range(self.num_layers) if plan[index, 0]):
            slot = next(slot for slot in free if layer_types[slot] == layer_types[index])
            free.remove(slot)
            slots[index] = slot
        return slots

    @contextmanager
    def active(self, mask: Sequence[bool] | npt.NDArray[np.bool_]) -> Iterator[MaskedModel]:
        """Run the model with only the players in ``mask`` present; the full model is restored on exit.

        Example::

            with masked.active(mask):
                logits = masked.model(input_ids).logits
        """
        plan = self.layer_plan(mask)
        overridden: list[int] = []
        attentions = [branch.module for branch in self._attentions]
        original_indices = [getattr(attention, "layer_idx", None) for attention in attentions]
        try:
            for index, (attention, mlp) in enumerate(plan):
                if attention and mlp:
                    continue
                self.layers[index].forward = self._partial_forward(index, bool(attention), bool(mlp))
                overridden.append(index)
            for index, slot in self._cache_slots(plan).items():
                if original_indices[index] is not None:
                    attentions[index].layer_idx = slot
            yield self
        finally:
            for index in overridden:
                del self.layers[index].forward
            for attention, layer_idx in zip(attentions, original_indices, strict=True):
                if layer_idx is not None:
                    attention.layer_idx = layer_idx
