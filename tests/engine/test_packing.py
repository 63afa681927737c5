"""Packed sequences: every member reads exactly what its unpacked sequence reads, and readouts find its targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shapley_svc.engine.packing import ScoredSequence, common_prefix_length, pack_scored, pack_sequences
from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import tiny_model

GROUPS = [([5, 6, 7, 8], [[9, 10], [11], [12, 13, 14]]), ([20, 21], [[22, 23, 24], [25]]), ([30], [[31, 32]])]


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_packed_logits_equal_each_sequence_run_alone(reuse_prefix: bool) -> None:
    model = tiny_model("llama", num_layers=2, seed=0).model
    packed = pack_sequences(GROUPS, reuse_prefix=reuse_prefix, max_row_tokens=9, max_batch_tokens=20, pad_id=0)
    members = [(prefix, suffix) for prefix, suffixes in GROUPS for suffix in suffixes]
    with torch.inference_mode():
        logits = [
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids).logits
            for b in packed.batches
        ]
        for member, (prefix, suffix) in enumerate(members):
            alone = model(torch.tensor([prefix + suffix])).logits[0]
            columns = packed.columns(member, np.arange(len(prefix) + len(suffix)))
            row = logits[packed.batch[member]][packed.row[member]]
            torch.testing.assert_close(row[torch.from_numpy(columns)], alone, rtol=1e-4, atol=1e-4)
    if reuse_prefix:
        assert len({(b, r) for b, r in zip(packed.batch, packed.row, strict=True)}) < len(members)


def test_readouts_name_each_scored_token_and_its_owner() -> None:
    groups = [
        [ScoredSequence([1, 2, 3, 4], np.array([2, 3]), [40, 41]), ScoredSequence([1, 2, 5], np.array([2]), [50])],
        [ScoredSequence([7, 8], np.array([1]), [80])],
    ]
    batches, readouts = pack_scored(groups, reuse_prefix=True, max_row_tokens=64, max_batch_tokens=64, pad_id=0)
    (batch,) = batches
    (readout,) = readouts
    assert readout.owners.tolist() == [0, 0, 1, 2] and readout.targets.tolist() == [40, 41, 50, 80]
    # the token at each scored column is the one at that position of the unpacked sequence
    read = batch.input_ids[readout.rows, readout.columns].tolist()
    assert read == [3, 4, 5, 8]


def test_common_prefix_and_bad_limits() -> None:
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    with pytest.raises(ConfigError, match="must be >= 1"):
        pack_sequences(GROUPS, reuse_prefix=True, max_row_tokens=0, max_batch_tokens=8, pad_id=0)
