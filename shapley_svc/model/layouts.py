"""Architecture knowledge as data: where a causal LM keeps its decoder layers, sublayers, norms and scales.

Every supported architecture is a residual decoder whose layer is two residual branches::

    h = h + m * attention_post_norm(attention(attention_norm(h)))    # [b, s, d]
    h = h + m * mlp_post_norm(mlp(mlp_norm(h)))

where a norm a layout does not name is the identity and ``m`` is the layer's residual multiplier (1 unless
named). Llama-style models norm before each sublayer only; Gemma 2 / 3 norm before and after ("sandwich");
OLMo-2 only after; Granite scales both updates and divides its logits. A layout names those modules by
dotted path, keyed by ``config.model_type``, so one generic wrapper (:mod:`shapley_svc.model.masked`) serves
them all: skipping a sublayer drops its whole branch, norms and multiplier included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from shapley_svc.errors import ConfigError, ModelLoadError
from shapley_svc.registry import Entry, Registry

SublayerKind = Literal["attn", "mlp"]


@dataclass(frozen=True)
class Branch:
    """One residual branch of a decoder layer: ``norm -> module -> post_norm``, paths from the layer.

    ``output`` is the linear inside ``module`` whose output is the branch's update before ``post_norm``:
    zeroing it makes the whole update exactly zero (an RMS norm of zero is zero).
    """

    module: str
    output: str
    norm: str | None = None
    post_norm: str | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        """Every module of the branch, in the order it runs."""
        return tuple(path for path in (self.norm, self.module, self.post_norm) if path is not None)


@dataclass(frozen=True)
class Layout:
    """Dotted attribute paths, from the causal-LM root (``layers``, ``final_norm``, ``head``) or from one layer.

    ``residual_multiplier`` names a float attribute of each layer scaling both updates; ``logits_divisor``
    and ``logits_softcap`` name config fields the head's logits are divided by, or capped with
    (``cap * tanh(logits / cap)``); a field that is None in the config means no scaling.
    """

    layers: str = "model.layers"
    embedding: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    head: str = "lm_head"
    attention: str = "self_attn"
    attention_norm: str | None = "input_layernorm"
    attention_post_norm: str | None = None
    attention_output: str = "o_proj"
    mlp: str = "mlp"
    mlp_norm: str | None = "post_attention_layernorm"
    mlp_post_norm: str | None = None
    mlp_output: str = "down_proj"
    residual_multiplier: str | None = None
    logits_divisor: str | None = None
    logits_softcap: str | None = None

    def branch(self, kind: SublayerKind | str) -> Branch:
        """The residual branch of sublayer ``kind`` (``attn`` or ``mlp``)."""
        if kind == "attn":
            return Branch(self.attention, self.attention_output, self.attention_norm, self.attention_post_norm)
        if kind == "mlp":
            return Branch(self.mlp, self.mlp_output, self.mlp_norm, self.mlp_post_norm)
        raise ConfigError(f"unknown sublayer kind {kind!r}: use attn or mlp")


PRE_NORM = Layout()
"""The Llama layout: a norm before each sublayer. Phi-3 fuses its input projections (``qkv_proj``,
``gate_up_proj``) but keeps ``o_proj`` and ``down_proj`` separate, so it is this layout too."""

SANDWICH_NORM = Layout(
    attention_post_norm="post_attention_layernorm",
    mlp_norm="pre_feedforward_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
    logits_softcap="final_logit_softcapping",
)
"""Gemma 2 / 3: a norm before and after each sublayer, inside its branch; logits soft-capped (Gemma 2)."""

POST_NORM = Layout(
    attention_norm=None,
    attention_post_norm="post_attention_layernorm",
    mlp_norm=None,
    mlp_post_norm="post_feedforward_layernorm",
)
"""OLMo-2: each sublayer reads the raw residual stream and its output is normed inside the branch."""

SCALED_RESIDUAL = Layout(residual_multiplier="residual_multiplier", logits_divisor="logits_scaling")
"""Granite: Llama's layout with both updates scaled by ``residual_multiplier``, logits divided by
``logits_scaling`` (its embedding and attention multipliers live inside modules that always run)."""

LAYOUTS: Registry[Layout] = Registry(
    "architecture",
    Layout,
    {
        "llama": Entry("shapley_svc.model.layouts:PRE_NORM", "Llama 2 / 3"),
        "mistral": Entry("shapley_svc.model.layouts:PRE_NORM", "Mistral"),
        "qwen2": Entry("shapley_svc.model.layouts:PRE_NORM", "Qwen2 / 2.5"),
        "qwen3": Entry("shapley_svc.model.layouts:PRE_NORM", "Qwen3"),
        "phi3": Entry("shapley_svc.model.layouts:PRE_NORM", "Phi-3 (fused qkv and gate-up projections)"),
        "gemma2": Entry("shapley_svc.model.layouts:SANDWICH_NORM", "Gemma 2"),
        "gemma3_text": Entry("shapley_svc.model.layouts:SANDWICH_NORM", "Gemma 3 (text only)"),
        "olmo2": Entry("shapley_svc.model.layouts:POST_NORM", "OLMo 2"),
        "granite": Entry("shapley_svc.model.layouts:SCALED_RESIDUAL", "Granite 3"),
    },
    error=ModelLoadError,
    unknown="unsupported",
    advice="Add a Layout to shapley_svc/model/layouts.py if it is a residual decoder of two branches a layer.",
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
