"""Packed batches through the engine equal each sequence run alone, for every layout, sliding windows included.

transformers takes a ready 4-D mask as it is for every layer, so sliding-window layers (Gemma 2 / 3 here with
an 8-token window; Mistral, Phi-3 and Qwen2 configs given a 6-token one) and eager attention (Gemma 2) only
read what their unpacked sequence reads if the engine finishes the packed mask per layer type.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from shapley_svc.engine import BatchedEngine
from shapley_svc.engine.packing import pack_sequences
from shapley_svc.model.layouts import LAYOUTS, layout_for
from shapley_svc.model.loading import tiny_config
from shapley_svc.model.masked import MaskedModel

WINDOWED = {
    "mistral": {"sliding_window": 6},
    "phi3": {"sliding_window": 6},
    "qwen2": {
        "use_sliding_window": True,
        "sliding_window": 6,
        "layer_types": ["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
    },
}
CASES = [(architecture, {}) for architecture in LAYOUTS.names()] + list(WINDOWED.items())
PREFIX = list(range(40, 52))  # 12 shared tokens, so every member is longer than the windows
GROUPS = [(PREFIX, [[60, 61, 62], [70, 71, 72, 73, 74, 75], [80]]), (PREFIX[:5], [[90, 91, 92, 93, 94, 95, 96]])]


@pytest.mark.parametrize(("architecture", "overrides"), CASES, ids=[f"{a}{'-window' * bool(o)}" for a, o in CASES])
def test_packed_members_through_the_engine_equal_each_sequence_alone(architecture: str, overrides: dict) -> None:
    config = tiny_config(architecture, num_layers=4)
    for key, value in overrides.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    masked = MaskedModel(model, layout_for(architecture), "sublayer")
    packed = pack_sequences(GROUPS, reuse_prefix=True, max_row_tokens=40, max_batch_tokens=80, pad_id=2)
    members = [(prefix, suffix) for prefix, suffixes in GROUPS for suffix in suffixes]
    mask = masked.full_mask()
    mask[2] = False  # the attention of layer 1
    engine = BatchedEngine(masked)
    logits = [engine.evaluate(mask[None], batch, readout=masked.head)[0] for batch in packed.batches]
    with torch.inference_mode(), masked.active(mask):
        for member, (prefix, suffix) in enumerate(members):
            alone = model(torch.tensor([prefix + suffix])).logits[0]
            columns = torch.from_numpy(packed.columns(member, np.arange(len(prefix) + len(suffix))))
            row = logits[packed.batch[member]][packed.row[member]]
            torch.testing.assert_close(row[columns], alone, rtol=0, atol=1e-5)
    assert len(set(zip(packed.batch, packed.row, strict=True))) < len(members)  # rows share the prefix
