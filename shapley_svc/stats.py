"""Rank statistics shared by the service, the analysis module and the benchmarks (NumPy only, no torch)."""

from __future__ import annotations

import numpy as np

from shapley_svc.errors import ConfigError


def ranks(values: np.ndarray) -> np.ndarray:
    """float[..., n]: ranks (0-based, ascending, ties averaged) of ``values`` along the last axis."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, axis=-1, kind="stable")
    ranked = np.empty_like(values)
    np.put_along_axis(ranked, order, np.broadcast_to(np.arange(values.shape[-1], dtype=float), values.shape), -1)
    flat_values, flat_ranks = values.reshape(-1, values.shape[-1]), ranked.reshape(-1, values.shape[-1])
    for row_values, row_ranks in zip(flat_values, flat_ranks, strict=True):
        unique, inverse, counts = np.unique(row_values, return_inverse=True, return_counts=True)
        if len(unique) < len(row_values):
            means = np.bincount(inverse, weights=row_ranks) / counts
            row_ranks[:] = means[inverse]
    return ranked.reshape(values.shape)


def spearman(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman's rho of two value arrays along the last axis (broadcasting over leading axes).

    Undefined for a constant array: a ConfigError, so that no NaN passes for a correlation.
    """
    a, b = ranks(first), ranks(second)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    if np.any(denominator == 0):
        raise ConfigError("Spearman's rho is undefined for constant values")
    return (a * b).sum(axis=-1) / denominator


def kendall_tau_b(first: np.ndarray, second: np.ndarray) -> float:
    """Kendall's tau-b of float[n] arrays: (concordant - discordant) / sqrt of the untied pairs of each.

    Undefined for a constant array: a ConfigError.
    """
    sign_a = np.sign(first[:, None] - first[None, :])  # [n, n]
    sign_b = np.sign(second[:, None] - second[None, :])
    upper = np.triu_indices(len(first), k=1)
    untied = float(np.sqrt(np.abs(sign_a[upper]).sum() * np.abs(sign_b[upper]).sum()))
    if untied == 0:
        raise ConfigError("Kendall's tau is undefined for constant values")
    return float((sign_a * sign_b)[upper].sum()) / untied
