"""The HTTP service: a FastAPI server (``app``) running jobs in the background, and its Python client.

``from shapley_svc.service import Client`` imports the client only (httpx); the server side (FastAPI,
uvicorn) is imported by ``shapley-svc serve``.
"""

from shapley_svc.service.client import (
    AuthenticationError,
    Client,
    ConflictError,
    InvalidRequestError,
    JobFailedError,
    JobHandle,
    NotFoundError,
    ServerUnavailableError,
    ServiceError,
    TooManyJobsError,
    WaitTimeoutError,
)

__all__ = [
    "AuthenticationError",
    "Client",
    "ConflictError",
    "InvalidRequestError",
    "JobFailedError",
    "JobHandle",
    "NotFoundError",
    "ServerUnavailableError",
    "ServiceError",
    "TooManyJobsError",
    "WaitTimeoutError",
]
