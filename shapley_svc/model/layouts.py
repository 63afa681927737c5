"""Architecture knowledge as data: where a causal LM keeps its decoder layers, attention, MLP and norms.

Every supported architecture is a pre-norm residual decoder: ``h = h + attn(attn_norm(h))`` then
``h = h + mlp(mlp_norm(h))``. A layout names those modules by dotted path, keyed by ``config.model_type``,
so one generic wrapper (:mod:`shapley_svc.model.masked`) serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from shapley_svc.errors import ModelLoadError
from shapley_svc.registry import Entry, Registry


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


PRE_NORM = Layout()
"""The Llama layout, shared by every architecture that names its modules as Llama does."""

LAYOUTS: Registry[Layout] = Registry(
    "architecture",
    Layout,
    {
        "llama": Entry("shapley_svc.model.layouts:PRE_NORM", "Llama 2 / 3"),
        "mistral": Entry("shapley_svc.model.layouts:PRE_NORM", "Mistral"),
        "qwen2": Entry("shapley_svc.model.layouts:PRE_NORM", "Qwen2 / 2.5"),
        "qwen3": Entry("shapley_svc.model.layouts:PRE_NORM", "Qwen3"),
    },
    error=ModelLoadError,
    unknown="unsupported",
    advice="Add a Layout to shapley_svc/model/layouts.py if it is a pre-norm residual decoder.",
)
"""The layout of each supported ``config.model_type``."""


def layout_for(model_type: str) -> Layout:
    """The layout of ``config.model_type``; an unsupported type is an error naming the supported ones."""
    layout: Layout = LAYOUTS.load(model_type)
    return layout


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
