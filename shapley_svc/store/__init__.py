"""Results stores: jobs, results and the coalition-value cache behind the :class:`ResultStore` protocol."""

from shapley_svc.store.base import (
    CacheLookup,
    JobNotFoundError,
    JobRecord,
    JobStateError,
    JobStatus,
    ResultRecord,
    ResultStore,
    StoreError,
    ValueCache,
)
from shapley_svc.store.memory import MemoryValueCache
from shapley_svc.store.sqlite import SQLiteStore


def open_store(path: str) -> ResultStore:
    """The store at ``path``: a SQLite file (created with its schema when missing)."""
    return SQLiteStore(path)


__all__ = [
    "CacheLookup",
    "JobNotFoundError",
    "JobRecord",
    "JobStateError",
    "JobStatus",
    "MemoryValueCache",
    "ResultRecord",
    "ResultStore",
    "SQLiteStore",
    "StoreError",
    "ValueCache",
    "open_store",
]
