"""Architecture knowledge as data: where a causal LM keeps its decoder layers, attention, MLP and norms.

Every supported architecture is a pre-norm residual decoder: ``h = h + attn(attn_norm(h))`` then
``h = h + mlp(mlp_norm(h))``. A layout names those modules by dotted path, keyed by ``config.model_type``,
so one generic wrapper (:mod:`shapley_svc.model.masked`) serves them all.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from torch import nn

from shapley_svc.errors import ModelLoadError


@dataclass(frozen=True)
class Layout:
    """Dotted attribute paths, from the causal-LM root (``layers``, ``final_norm``, ``head``) or from one layer."""

    layers: str = "model.layers"
    embedding: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    head: str = "lm_head"
    attention: str = "self_attn"
    attention_norm: str = "input_layernorm"
    mlp: str = "mlp"
    mlp_norm: str = "post_attention_layernorm"


LAYOUTS: dict[str, Layout] = {
    "llama": Layout(),
    "mistral": Layout(),
    "qwen2": Layout(),
    "qwen3": Layout(),
}


def layout_for(model_type: str) -> Layout:
    """The layout of ``config.model_type``; an unsupported type is an error naming the supported ones."""
    try:
        return LAYOUTS[model_type]
    except KeyError:
        close = difflib.get_close_matches(model_type, LAYOUTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelLoadError(
            f"unsupported architecture {model_type!r}: supported are {', '.join(sorted(LAYOUTS))}.{hint} "
            "Add a Layout to shapley_svc/model/layouts.py if it is a pre-norm residual decoder."
        ) from None


def resolve(root: nn.Module, dotted_path: str) -> nn.Module:
    """The submodule of ``root`` at ``dotted_path`` (e.g. ``model.layers``)."""
    module = root
    for part in dotted_path.split("."):
        if not hasattr(module, part):
            raise ModelLoadError(
                f"{type(root).__name__} has no submodule {dotted_path!r} (missing {part!r}); "
                "its layout in shapley_svc/model/layouts.py does not match this model"
            )
        module = getattr(module, part)
    return module
