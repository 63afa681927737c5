"""Batched evaluation of many masks on one model, sharing hidden states between masks with a common prefix
(:mod:`.batched`); packing of scored sequences over a shared prefix (:mod:`.packing`); running the backbone
with hooks that never outlive the run (:mod:`.backbone`)."""

from shapley_svc.engine.batched import BatchedEngine, PreparedBatch, TokenBatch

__all__ = ["BatchedEngine", "PreparedBatch", "TokenBatch"]
