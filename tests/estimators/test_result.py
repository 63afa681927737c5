"""ShapleyResult: exact moment pooling in merge, versioned JSON."""

from __future__ import annotations

import numpy as np
import pytest

from shapley_svc.errors import ConfigError, DataError
from shapley_svc.estimators.result import ShapleyResult


def result_from_samples(samples: np.ndarray, seed: int, estimator: str = "permutation") -> ShapleyResult:
    """A result whose values/stderr are the mean/sem of samples float[k, n] (one task)."""
    count = len(samples)
    return ShapleyResult(
        values=samples.mean(axis=0)[None, :],
        stderr=(samples.std(axis=0, ddof=1) / np.sqrt(count))[None, :],
        counts=np.full(samples.shape[1], count),
        evaluations_used=10 * count,
        v_full=np.array([1.0]),
        v_empty=np.array([0.0]),
        player_names=("a", "b", "c"),
        task_names=("value",),
        estimator=estimator,
        params={"budget": 10},
        seed=seed,
    )


def test_merge_pools_moments_exactly() -> None:
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(7, 3)), rng.normal(2.0, 3.0, size=(12, 3))
    merged = result_from_samples(first, 1).merge(result_from_samples(second, 2))
    pooled = result_from_samples(np.vstack([first, second]), 0)
    np.testing.assert_allclose(merged.values, pooled.values, atol=1e-12)
    np.testing.assert_allclose(merged.stderr, pooled.stderr, atol=1e-12)
    assert merged.counts.tolist() == [19, 19, 19]
    assert merged.evaluations_used == 190
    assert merged.params["merged_seeds"] == [1, 2]


def test_merge_refuses_different_estimators() -> None:
    samples = np.ones((3, 3))
    with pytest.raises(ConfigError, match="same estimator"):
        result_from_samples(samples, 0).merge(result_from_samples(samples, 0, estimator="kernelshap"))


def test_json_round_trip_and_version_check() -> None:
    result = result_from_samples(np.random.default_rng(1).normal(size=(4, 3)), 3)
    again = ShapleyResult.from_json(result.to_json())
    np.testing.assert_array_equal(again.values, result.values)
    assert again.to_dict() == result.to_dict()
    assert again.ranking() == result.ranking()
    newer = result.to_dict() | {"version": 99}
    import json

    with pytest.raises(DataError, match="version 99"):
        ShapleyResult.from_json(json.dumps(newer))
    with pytest.raises(DataError, match="not a ShapleyResult"):
        ShapleyResult.from_json("{}")


def test_merge_is_refused_where_values_are_not_sample_means() -> None:
    samples = np.ones((3, 3))
    for estimator in ("structured_gp", "kernelshap", "stratified", "exact"):
        with pytest.raises(ConfigError, match="cannot be merged"):
            result_from_samples(samples, 0, estimator=estimator).merge(result_from_samples(samples, 1, estimator))
