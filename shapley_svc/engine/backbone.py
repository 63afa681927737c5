"""Running a decoder backbone on one token batch, and forward hooks that never outlive the run.

transformers uses a ready 4-D attention mask as it is, for every layer: a packed batch's boolean mask
(:mod:`shapley_svc.engine.packing`) is therefore finished here as the backbone would finish a padding mask:
narrowed to the last ``sliding_window`` positions (by position id) for sliding-window layers (Gemma 2 / 3,
Mistral, Qwen2 / 3 and Phi-3 configs that set one), one mask per layer type where the config lists layer
types, and made additive (0 or the dtype's minimum) for eager attention (Gemma 2).

Capturing layer inputs (the engine's :meth:`~shapley_svc.engine.batched.BatchedEngine.prepare`) and
collecting the statistics recovery fits on (:func:`shapley_svc.pruning.recovery.fit`) both register hooks,
run the backbone and remove the hooks again, also after an exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from shapley_svc.errors import ConfigError

if TYPE_CHECKING:  # only for annotations, so that engine.batched can import this module
    from shapley_svc.engine.batched import TokenBatch


def run_backbone(backbone: nn.Module, batch: TokenBatch) -> Any:
    """The backbone's output on ``batch`` (its ids, attention mask and position ids), without a KV cache."""
    return backbone(
        input_ids=batch.input_ids,
        attention_mask=backbone_attention_mask(backbone, batch),
        position_ids=batch.position_ids,
        use_cache=False,
    )


def backbone_attention_mask(backbone: nn.Module, batch: TokenBatch) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """The attention mask to give ``backbone`` for ``batch``: a padding mask [b, s] as it is, a packed boolean
    mask [b, 1, s, s] finished per layer type (see the module docstring)."""
    mask = batch.attention_mask
    if mask is None or mask.ndim != 4:
        return mask
    config = backbone.config
    window = getattr(config, "sliding_window", None)
    positions = batch.position_ids
    if positions is None:
        positions = torch.arange(mask.shape[-1], device=mask.device).expand(mask.shape[0], -1)
    dtype = next(backbone.parameters()).dtype
    additive = getattr(config, "_attn_implementation", None) == "eager"
    layer_types = getattr(config, "layer_types", None)
    if not layer_types:  # one mask for every layer, windowed when the config sets a window (Mistral, Phi-3)
        return _finished(mask if window is None else _windowed(mask, positions, window), dtype, additive)
    masks = {}
    for layer_type in set(layer_types):
        if layer_type not in ("full_attention", "sliding_attention"):
            raise ConfigError(f"packed batches support full and sliding-window attention layers, not {layer_type!r}")
        windowed = layer_type == "sliding_attention" and window is not None
        masks[layer_type] = _finished(_windowed(mask, positions, window) if windowed else mask, dtype, additive)
    return masks


def _windowed(mask: torch.Tensor, positions: torch.Tensor, window: int) -> torch.Tensor:
    """``mask`` [b, 1, s, s] keeping only keys less than ``window`` positions before each query."""
    distance = positions[:, None, :, None] - positions[:, None, None, :]  # [b, 1, s, s]: query minus key position
    return mask & (distance < window)


def _finished(mask: torch.Tensor, dtype: torch.dtype, additive: bool) -> torch.Tensor:
    """The boolean ``mask`` as attention takes it: as it is (SDPA), or 0 / dtype minimum (eager)."""
    if not additive:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


@contextmanager
def temporary_hooks() -> Iterator[list[RemovableHandle]]:
    """A list to append hook handles to; every hook in it is removed on exit, also after an exception."""
    handles: list[RemovableHandle] = []
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
