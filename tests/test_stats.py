"""Rank statistics: average ranks with ties, Spearman and Kendall tau-b against scipy and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from shapley_svc.errors import ConfigError
from shapley_svc.stats import kendall_tau_b, ranks, spearman


@pytest.mark.parametrize("seed", range(5))
def test_rank_correlations_match_scipy_with_ties(seed: int) -> None:
    generator = np.random.default_rng(seed)
    a = generator.integers(0, 5, size=12).astype(float)  # many ties
    b = a + generator.normal(0, 1.5, size=12)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert kendall_tau_b(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_ranks_average_ties_and_spearman_matches_known_values() -> None:
    np.testing.assert_array_equal(ranks(np.array([3.0, 1.0, 3.0, 2.0])), [2.5, 0.0, 2.5, 1.0])
    values = np.array([0.1, 0.5, 0.2, 0.9, 0.3])
    assert spearman(values, values * 10 + 1) == pytest.approx(1.0)
    assert spearman(values, -values) == pytest.approx(-1.0)
    # ranks (0, 3, 1, 4, 2) and (0, 1, 3, 4, 2): d^2 sums to 8, rho = 1 - 6 * 8 / (5 * 24) = 0.6
    assert spearman(values, np.array([0.1, 0.3, 0.5, 0.9, 0.4])) == pytest.approx(0.6)
    np.testing.assert_allclose(spearman(np.stack([values, -values]), values), [1.0, -1.0])
    with pytest.raises(ConfigError, match="constant"):
        spearman(values, np.ones(5))
    with pytest.raises(ConfigError, match="constant"):
        kendall_tau_b(np.ones(5), values)
