"""Apply a :class:`~shapley_svc.pruning.select.PruningPlan` to a model and save the result in two forms.

**Plain form** (``save_pruned``): a ``save_pretrained`` folder with its tokenizer that loads with plain
``AutoModelForCausalLM.from_pretrained`` and no custom code.

- Removed blocks are physically deleted: the decoder-layer list shrinks, every remaining
  ``self_attn.layer_idx`` is renumbered (the KV cache indexes its slots by it), ``config.num_hidden_layers``
  is updated and every per-layer config list (any list of length ``num_hidden_layers``, e.g. the
  ``layer_types`` of Qwen2 and Gemma 2 / 3 that say which layers use a sliding window) keeps only the
  entries of the layers that stay; Qwen2's ``max_window_layers`` is recounted. Parameters, compute and KV
  cache all shrink.
- A removed attention or MLP sublayer of a kept layer has its output projection (the layout's
  ``attention_output`` / ``mlp_output``, and its bias if any) set to zero, so its residual update is exactly
  zero (a norm after it, as in Gemma and OLMo-2, maps zero to zero) and outputs are bit-identical to
  skipping it. Plain transformers still *runs* that sublayer, stores its parameters and,
  for attention, fills its KV-cache slot: the plain form saves nothing for sublayers, only blocks.

**Skip form**: the same folder plus ``shapley-svc-pruning.json``, a manifest listing the removed sublayers
in the pruned model's layer numbering. :func:`load_skipping` loads the folder and re-applies the skip with
:class:`~shapley_svc.model.masked.MaskedModel`, so skipped attention computes nothing and writes no KV
cache. The trade-off: real compute and KV savings for sublayers, at the price of needing ``shapley_svc``
installed to load it (a plain loader silently gets the slower, bit-identical plain form).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from shapley_svc.errors import ConfigError, ModelLoadError
from shapley_svc.model.layouts import Layout, resolve
from shapley_svc.model.loading import LoadedModel, load_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.players import Player, parse_player
from shapley_svc.pruning.select import PruningPlan
from shapley_svc.versioned import parse_document, read_text, write_text

MANIFEST_NAME = "shapley-svc-pruning.json"
MANIFEST_VERSION = 1
# Config lists that may happen to have num_hidden_layers entries without being per layer.
_NOT_PER_LAYER_KEYS = frozenset(
    {"architectures", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "eos_token_id"}
)


def prune_model(model: PreTrainedModel, layout: Layout, plan: PruningPlan) -> PreTrainedModel:
    """A pruned deep copy of ``model`` (the original is untouched): blocks deleted, sublayers zeroed."""
    layers = resolve(model, layout.layers)
    if len(layers) != plan.num_layers:
        raise ConfigError(
            f"the plan is for {plan.num_layers} layers but the model has {len(layers)}: "
            "build the plan from this model's ranking"
        )
    if not plan.kept_layers:
        raise ConfigError("the plan removes every decoder block; keep at least one")
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned_layers = resolve(pruned, layout.layers)
        for player in plan.removed_sublayers:
            zero_output_projection(pruned_layers[player.layer], layout, player.kind)
        kept = nn.ModuleList([pruned_layers[i] for i in plan.kept_layers])
    parent_path, _, attribute = layout.layers.rpartition(".")
    setattr(resolve(pruned, parent_path), attribute, kept)
    for new_index, layer in enumerate(kept):
        attention = resolve(layer, layout.attention)
        if hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_index
    shrink_config(pruned.config, plan.kept_layers)
    return pruned


def zero_output_projection(layer: nn.Module, layout: Layout, kind: str) -> None:
    """Zero the output projection of ``layer``'s ``kind`` sublayer (``attn``/``mlp``): its update is exactly 0."""
    branch = layout.branch(kind)
    sublayer = resolve(layer, branch.module)
    projection = getattr(sublayer, branch.output, None)
    if not isinstance(projection, nn.Linear):
        raise ModelLoadError(
            f"{type(sublayer).__name__} has no linear {branch.output!r}; name this architecture's output "
            "projection in its Layout in shapley_svc/model/layouts.py"
        )
    projection.weight.zero_()
    if projection.bias is not None:
        projection.bias.zero_()


def shrink_config(config: PretrainedConfig, kept_layers: tuple[int, ...]) -> None:
    """Update ``config`` in place for a model that keeps only ``kept_layers`` (original indices)."""
    total = config.num_hidden_layers
    for key, value in list(vars(config).items()):
        if key.startswith("_") or key in _NOT_PER_LAYER_KEYS:
            continue
        if isinstance(value, list | tuple) and len(value) == total:
            setattr(config, key, type(value)(value[i] for i in kept_layers))
    window_layers = getattr(config, "max_window_layers", None)
    if isinstance(window_layers, int):
        config.max_window_layers = sum(1 for i in kept_layers if i < window_layers)
    config.num_hidden_layers = len(kept_layers)


def skipped_in_pruned(plan: PruningPlan) -> tuple[Player, ...]:
    """The plan's removed sublayers renumbered to the pruned model's layers (what the skip form skips)."""
    new_index = {old: new for new, old in enumerate(plan.kept_layers)}
    return tuple(Player(new_index[p.layer], p.kind) for p in plan.removed_sublayers)


def save_pruned(
    loaded: LoadedModel,
    plan: PruningPlan,
    out_dir: str | Path,
    *,
    pruned: PreTrainedModel | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``loaded`` pruned by ``plan`` (checkpoint, tokenizer, skip-form manifest) to ``out_dir``.

    ``pruned`` is ``prune_model(loaded.model, loaded.layout, plan)`` if already built; ``provenance``
    (ranking method, task, splits...) is stored in the manifest as given.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} exists and is not empty: choose a new --out folder")
    if pruned is None:
        pruned = prune_model(loaded.model, loaded.layout, plan)
    try:
        out.mkdir(parents=True, exist_ok=True)
        pruned.save_pretrained(out)
        loaded.tokenizer.save_pretrained(out)
    except OSError as error:
        raise ConfigError(f"could not write the pruned checkpoint to {out}: {error}") from error
    manifest = {
        "version": MANIFEST_VERSION,
        "source_model": loaded.name,
        "source_fingerprint": loaded.fingerprint,
        "source_num_layers": plan.num_layers,
        "removed": list(plan.names),
        "kept_layers": list(plan.kept_layers),
        "skip": [p.name for p in skipped_in_pruned(plan)],
        "provenance": dict(provenance or {}),
    }
    write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=2), "prune manifest")
    return out


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The skip-form manifest of a folder written by :func:`save_pruned`."""
    path = Path(folder) / MANIFEST_NAME
    text = read_text(path, "prune manifest (write one with `shapley-svc prune`)")
    return parse_document(text, f"prune manifest {path}", version=MANIFEST_VERSION, version_key="version")


@dataclass
class SkippingModel:
    """A pruned checkpoint whose removed sublayers are really skipped (skip form); use :meth:`skipping`."""

    loaded: LoadedModel
    masked: MaskedModel
    skip: tuple[Player, ...]

    @property
    def mask(self) -> npt.NDArray[np.bool_]:
        """bool[2L] sublayer mask of the pruned model: False for each skipped sublayer."""
        skipped = set(self.skip)
        return np.array([player not in skipped for player in self.masked.players], dtype=bool)

    @contextmanager
    def skipping(self) -> Iterator[PreTrainedModel]:
        """The model with the skipped sublayers switched off (forward and ``generate``), restored on exit."""
        with self.masked.active(self.mask):
            yield self.loaded.model


def load_skipping(folder: str | Path, *, dtype: str = "float32", device: str = "cpu") -> SkippingModel:
    """Load a pruned folder in its skip form: sublayers listed in the manifest are skipped, not zero-run."""
    manifest = read_manifest(folder)
    loaded = load_model(str(folder), dtype=dtype, device=device)
    masked = MaskedModel(loaded.model, loaded.layout, "sublayer")
    skip = tuple(parse_player(name) for name in manifest["skip"])
    return SkippingModel(loaded, masked, skip)
