"""What pruning saves: parameters, KV-cache bytes per token and measured forward latency, before and after.

- ``parameters``: stored parameters, each shared tensor once (tied embeddings count once).
- ``active_parameters``: those that take part in a forward under the plan: a removed sublayer's weights
  (its whole residual branch, norms included) are stored by the plain form (zeroed) but neither run nor
  needed by the skip form.
- ``kv_bytes_per_token``: ``2 (K and V) * kv_heads * head_dim * bytes(dtype)`` summed over the attentions
  that run (skip form); ``kv_bytes_per_token_plain`` over every attention the plain form runs, zeroed ones
  included. Sliding-window layers are counted like full ones (the per-token growth below the window).
- Latency: the median of interleaved repeats (A, B, A, B, ...) after warm-up, so slow drift of a shared
  machine hits every variant alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from shapley_svc.errors import ConfigError
from shapley_svc.model.layouts import Layout, resolve
from shapley_svc.pruning.select import PruningPlan


@dataclass(frozen=True)
class Footprint:
    """Size and cost of one model variant; latency in seconds (None when not measured)."""

    parameters: int
    active_parameters: int
    kv_bytes_per_token: int
    kv_bytes_per_token_plain: int
    latency_s: float | None = None

    def to_dict(self) -> dict[str, int | float | None]:
        """The footprint as a JSON-ready dict."""
        return asdict(self)


def parameter_count(module: nn.Module) -> int:
    """Number of stored parameters of ``module``, shared tensors counted once."""
    return sum(p.numel() for p in module.parameters())


def kv_bytes_per_attention(model: PreTrainedModel) -> int:
    """KV-cache bytes one attention layer stores per token: 2 * kv_heads * head_dim * bytes(dtype)."""
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.empty((), dtype=next(model.parameters()).dtype).element_size()
    return 2 * int(heads) * int(head_dim) * element


def footprint(
    model: PreTrainedModel, layout: Layout, plan: PruningPlan | None = None, latency_s: float | None = None
) -> Footprint:
    """The footprint of unpruned ``model`` with ``plan`` applied (``None``: the model as it is).

    Counting from the plan, not from a pruned copy, gives the same numbers without building one.
    """
    layers = resolve(model, layout.layers)
    plan = plan if plan is not None else PruningPlan(len(layers), ())
    if plan.num_layers != len(layers):
        raise ConfigError(f"the plan is for {plan.num_layers} layers but the model has {len(layers)}")
    total = parameter_count(model)
    present = plan.present
    removed_blocks = sum(parameter_count(layers[i]) for i in plan.removed_blocks)
    removed_sublayers = sum(
        parameter_count(resolve(layers[p.layer], path))
        for p in plan.removed_sublayers
        for path in layout.branch(p.kind).paths
    )
    per_attention = kv_bytes_per_attention(model)
    return Footprint(
        parameters=total - removed_blocks,
        active_parameters=total - removed_blocks - removed_sublayers,
        kv_bytes_per_token=per_attention * int(present[:, 0].sum()),
        kv_bytes_per_token_plain=per_attention * len(plan.kept_layers),
        latency_s=latency_s,
    )


def interleaved_median(
    variants: Mapping[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median wall time in seconds of each callable, timed in interleaved rounds after ``warmup`` rounds."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(warmup + repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            elapsed = time.perf_counter() - started
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def forward_call(model: PreTrainedModel, input_ids: torch.Tensor) -> Callable[[], object]:
    """A no-argument callable running one inference-mode forward of ``input_ids`` without KV cache."""

    def run() -> object:
        with torch.inference_mode():
            return model(input_ids=input_ids, use_cache=False, logits_to_keep=1)

    return run
