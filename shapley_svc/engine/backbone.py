"""Running a decoder backbone on one token batch, and forward hooks that never outlive the run.

Capturing layer inputs (the engine's :meth:`~shapley_svc.engine.batched.BatchedEngine.prepare`) and
collecting the statistics recovery fits on (:func:`shapley_svc.pruning.recovery.fit`) both register hooks,
run the backbone and remove the hooks again, also after an exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:  # only for annotations, so that engine.batched can import this module
    from shapley_svc.engine.batched import TokenBatch


def run_backbone(backbone: nn.Module, batch: TokenBatch) -> Any:
    """The backbone's output on ``batch`` (its ids, attention mask and position ids), without a KV cache."""
    return backbone(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )


@contextmanager
def temporary_hooks() -> Iterator[list[RemovableHandle]]:
    """A list to append hook handles to; every hook in it is removed on exit, also after an exception."""
    handles: list[RemovableHandle] = []
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
