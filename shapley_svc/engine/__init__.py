"""Batched evaluation of many masks on one model, sharing hidden states between masks with a common prefix."""

from shapley_svc.engine.batched import BatchedEngine, PreparedBatch, TokenBatch

__all__ = ["BatchedEngine", "PreparedBatch", "TokenBatch"]
