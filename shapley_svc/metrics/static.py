"""Static importance of blocks and sublayers from one forward pass with hooks.

For a player with residual-stream input ``x`` and output ``y`` at one token (a block: the decoder layer's
input and output; the attention sublayer: ``x -> x + attn_update``; the MLP sublayer: the stream after the
attention update -> the block output), with unit vectors ``u = x/|x|``, ``w = y/|y|``:

- Block Influence (ShortGPT, Men et al. 2024): ``BI = 1 - cos(x, y) = |u - w|^2 / 2``;
- angular distance (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"):
  ``arccos(cos(x, y)) / pi = 2 atan2(|u - w|, |u + w|) / pi``;
- relative update norm: ``|y - x| / |x|``.

The right-hand forms are the same numbers, but stay accurate when ``cos`` is close to 1 (deep layers),
where ``1 - cos`` and ``arccos`` of a float32 cosine lose most of their digits. Each metric is averaged
over every non-padding token of every batch, in float32 whatever the model's dtype. Gromov et al. measure
the angle at the last token only, because their prompts are scored at the last token; here the value
functions score every position (next-token loss on corpus windows), so all tokens are averaged, the same
token set for all three metrics. Higher means more important for all three: a player that barely changes
the residual stream is a candidate for removal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from shapley_svc.engine import TokenBatch
from shapley_svc.errors import ConfigError
from shapley_svc.model.masked import BranchModules, MaskedModel
from shapley_svc.players import Granularity
from shapley_svc.ranking import Ranking
from shapley_svc.values.base import digest

METHODS = ("block_influence", "angular_distance", "relative_update_norm")
"""The static metrics, in the order of :meth:`StaticMetrics.scores`; each is also its ranking method name."""

_KINDS = ("block", "attn", "mlp")
_VERSION = 1


@dataclass(frozen=True)
class StaticMetrics:
    """Per-player static metrics (float[n_players] each, in the masked model's player order); higher = more
    important. ``tokens`` is the number of tokens averaged, ``data_fingerprint`` a digest of those tokens."""

    players: tuple[str, ...]
    granularity: Granularity
    block_influence: npt.NDArray[np.float64]
    angular_distance: npt.NDArray[np.float64]
    relative_update_norm: npt.NDArray[np.float64]
    tokens: int
    data_fingerprint: str

    def scores(self, method: str) -> npt.NDArray[np.float64]:
        """float[n_players]: the metric named ``method`` (one of :data:`METHODS`)."""
        if method not in METHODS:
            raise ConfigError(f"unknown static metric {method!r}: use one of {', '.join(METHODS)}")
        scores: npt.NDArray[np.float64] = getattr(self, method)
        return scores

    def rankings(self, model_fingerprint: str) -> list[Ranking]:
        """One :class:`Ranking` per metric, in the order of :data:`METHODS`."""
        return [
            Ranking(
                players=self.players,
                granularity=self.granularity.value,
                scores=self.scores(method).tolist(),
                method=method,
                model_fingerprint=model_fingerprint,
                metadata={"tokens": self.tokens, "data_fingerprint": self.data_fingerprint},
            )
            for method in METHODS
        ]


def token_metrics(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """float32[..., 3]: block influence, angular distance and relative update norm of each token.

    ``inputs`` and ``outputs`` are residual-stream states [..., d] before and after one player.
    """
    inputs, outputs = inputs.float(), outputs.float()
    unit_in, unit_out = F.normalize(inputs, dim=-1), F.normalize(outputs, dim=-1)  # [..., d]
    apart = (unit_in - unit_out).norm(dim=-1)  # [...]
    together = (unit_in + unit_out).norm(dim=-1)  # [...]
    block_influence = apart.square() / 2
    angular_distance = 2 * torch.atan2(apart, together) / math.pi
    relative_update_norm = (outputs - inputs).norm(dim=-1) / inputs.norm(dim=-1).clamp_min(1e-12)
    return torch.stack([block_influence, angular_distance, relative_update_norm], dim=-1)


@torch.inference_mode()
def static_metrics(masked: MaskedModel, batches: TokenBatch | Sequence[TokenBatch]) -> StaticMetrics:
    """Block influence, angular distance and relative update norm of each of ``masked``'s players.

    One forward pass of the full model per batch; padding (a [b, s] attention mask) is left out.
    """
    batches = [batches] if isinstance(batches, TokenBatch) else list(batches)
    if not batches:
        raise ConfigError("static_metrics needs at least one token batch: pass e.g. value_fn.prepare(tokenizer)")
    device = next(masked.model.parameters()).device
    sums = torch.zeros(masked.num_layers, len(_KINDS), len(METHODS), dtype=torch.float64, device=device)
    tokens = 0
    for batch in batches:
        on_device = batch.to(device)
        keep = _token_mask(on_device)  # bool[b, s]
        with _Recorder(masked, keep, sums):
            masked.backbone(
                input_ids=on_device.input_ids,
                attention_mask=on_device.attention_mask,
                position_ids=on_device.position_ids,
                use_cache=False,
            )
        tokens += int(keep.sum())
    if tokens == 0:
        raise ConfigError("every token of the batches is padding: give batches with real tokens")
    means = (sums / tokens).cpu().numpy()  # [L, kinds, methods]
    kind_index = {kind: index for index, kind in enumerate(_KINDS)}
    per_player = np.stack([means[player.layer, kind_index[player.kind]] for player in masked.players])  # [n, 3]
    fingerprint = digest(
        {"kind": "static_metrics", "version": _VERSION},
        *(tensor for batch in batches for tensor in _batch_tensors(batch)),
    )
    return StaticMetrics(
        players=masked.player_names,
        granularity=masked.granularity,
        block_influence=per_player[:, 0].copy(),
        angular_distance=per_player[:, 1].copy(),
        relative_update_norm=per_player[:, 2].copy(),
        tokens=tokens,
        data_fingerprint=fingerprint,
    )


def _token_mask(batch: TokenBatch) -> torch.Tensor:
    """bool[b, s]: the real tokens; a 4-d (packed) attention mask has no padding."""
    if batch.attention_mask is None or batch.attention_mask.ndim != 2:
        return torch.ones(batch.input_ids.shape, dtype=torch.bool, device=batch.input_ids.device)
    if batch.attention_mask.shape != batch.input_ids.shape:
        raise ConfigError(
            f"attention mask shape {tuple(batch.attention_mask.shape)} differs from the token ids' "
            f"{tuple(batch.input_ids.shape)}: give one 0/1 entry per token"
        )
    return batch.attention_mask.bool()


def _batch_tensors(batch: TokenBatch) -> list[torch.Tensor]:
    return [tensor for tensor in (batch.input_ids, batch.attention_mask, batch.position_ids) if tensor is not None]


class _Recorder:
    """Hooks that add each layer's per-token metrics (block, attention, MLP), summed over ``keep``, to ``sums``.

    Per layer: the layer's pre-hook keeps its input ``x``, a hook on the last module of the attention branch
    (its norm after the attention where the layout has one) its update ``a`` (times the layer's residual
    multiplier), and the layer's hook, given the output ``y``, scores the block ``x -> y``, the attention
    ``x -> x + a`` and the MLP ``x + a -> y``. Only one layer's tensors are held at a time.
    """

    def __init__(self, masked: MaskedModel, keep: torch.Tensor, sums: torch.Tensor):
        self.masked = masked
        self.keep = keep  # bool[b, s]
        self.sums = sums  # float64[L, kinds, methods]
        self.layer_input: torch.Tensor | None = None
        self.attention_update: torch.Tensor | None = None
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> _Recorder:
        try:
            for index, layer in enumerate(self.masked.layers):
                branch = BranchModules.of(layer, self.masked.layout, "attn")
                self.handles.append(layer.register_forward_pre_hook(self._keep_input, with_kwargs=True))
                self.handles.append(branch.last.register_forward_hook(self._keep_attention_update(branch.multiplier)))
                self.handles.append(layer.register_forward_hook(self._score(index)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc_info: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.layer_input = self.attention_update = None

    def _keep_input(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.layer_input = args[0] if args else kwargs["hidden_states"]
        self.attention_update = None

    def _keep_attention_update(self, multiplier: float | None) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            update = output[0] if isinstance(output, tuple) else output
            self.attention_update = update if multiplier is None else update * multiplier

        return hook

    def _score(self, index: int) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            layer_output = output[0] if isinstance(output, tuple) else output  # [b, s, d]
            if self.layer_input is None or self.attention_update is None:
                raise ConfigError(
                    f"decoder layer {index} ran without its attention {self.masked.layout.attention!r}: "
                    "its layout does not match the model, or a mask is active; compute static metrics on the full model"
                )
            after_attention = self.layer_input + self.attention_update  # [b, s, d], as the layer adds it
            pairs = (
                (self.layer_input, layer_output),
                (self.layer_input, after_attention),
                (after_attention, layer_output),
            )
            for kind, (inputs, outputs) in enumerate(pairs):
                self.sums[index, kind] += token_metrics(inputs, outputs)[self.keep].sum(dim=0, dtype=torch.float64)
            self.layer_input = self.attention_update = None

        return hook
