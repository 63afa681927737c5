"""Rank statistics shared by the service, the analysis module and the benchmarks (NumPy only, no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (Cornish-Fisher expansion
    around the normal quantile; within 2% of the exact value from 3 degrees of freedom up)."""
    if df < 1 or not 0.5 <= probability < 1:
        raise ConfigError(f"t_quantile needs df >= 1 and 0.5 <= probability < 1, got {df}, {probability}")
    z = float(np.sqrt(2) * _inverse_erf(2 * probability - 1))
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def _inverse_erf(value: float) -> float:
    """erf^-1 by Newton's method from Winitzki's approximation (numpy has no inverse error function)."""
    a = 0.147
    log_term = math.log(1 - value * value)
    first = 2 / (math.pi * a) + log_term / 2
    guess = math.copysign(math.sqrt(math.sqrt(first * first - log_term / a) - first), value)
    for _ in range(3):
        guess -= (math.erf(guess) - value) / (2 / math.sqrt(math.pi) * math.exp(-guess * guess))
    return guess


def paired_difference(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """(mean of ``first - second``, its standard error) over items scored under both (float[items] each)."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if first.shape != second.shape or first.ndim != 1 or len(first) < 2:
        raise ConfigError(f"need two equal-length item arrays of at least 2 items, got {first.shape}, {second.shape}")
    difference = first - second
    return float(difference.mean()), float(difference.std(ddof=1) / np.sqrt(len(difference)))


@dataclass(frozen=True)
class PairedInterval:
    """Mean of a per-item difference over ``items`` items, with its Student-t interval at ``level``."""

    mean: float
    low: float
    high: float
    items: int
    level: float

    @property
    def resolved(self) -> bool:
        """Whether the interval excludes zero."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_interval(first: np.ndarray, second: np.ndarray, level: float = 0.95) -> PairedInterval:
    """``first - second`` averaged over the items both were scored on, with its paired ``level`` t interval."""
    mean, stderr = paired_difference(first, second)
    margin = t_quantile(0.5 + level / 2, len(first) - 1) * stderr
    return PairedInterval(mean, mean - margin, mean + margin, len(first), level)


def bootstrap_stderr(
    values: np.ndarray, weights: np.ndarray | None = None, *, resamples: int = 2000, seed: int = 0
) -> np.ndarray:
    """float[t]: bootstrap standard error of the weighted mean of ``values`` (float[items, t]) per column.

    Items are resampled with replacement ``resamples`` times (seeded); each resample's weighted mean
    ``sum(c w v) / sum(c w)`` (c: how often each item was drawn) is recomputed, and the standard deviation
    of those means is the standard error. Fewer than 2 items is a ConfigError (no spread to resample).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    items = len(values)
    weights = np.ones(items) if weights is None else np.asarray(weights, dtype=np.float64)
    if values.ndim != 2 or weights.shape != (items,):
        raise ConfigError(f"need values float[items, t] and weights float[items], got {values.shape}, {weights.shape}")
    if items < 2:
        raise ConfigError(f"a bootstrap standard error needs at least 2 items, got {items}: score more items")
    if resamples < 2 or not (weights > 0).all() or not np.isfinite(values).all():
        raise ConfigError(
            f"need resamples >= 2 (got {resamples}), positive weights and finite values to bootstrap a mean"
        )
    counts = np.random.default_rng(seed).multinomial(items, np.full(items, 1 / items), size=resamples)  # [B, items]
    weighted = counts * weights  # [B, items]
    means = (weighted @ values) / weighted.sum(axis=1, keepdims=True)  # [B, t]
    return means.std(axis=0, ddof=1)
