"""Coalition samplers shared by the regression estimators: paired (complementary) sampling by size.

Sizes are weighted by the Shapley kernel's mass per size, q(s) proportional to 1 / (s (n - s)). A pair
of strata (s, n - s) is enumerated exhaustively when its expected share of the budget covers it (the
smallest and largest coalitions carry the most weight and are few: with n = 12, sizes 1 and 11 are 24
coalitions); the remaining strata are sampled uniformly within a size, without replacement, each
coalition together with its complement (Covert & Lee 2021, "Improving KernelSHAP").
"""

from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np

from shapley_svc.coalitions import coalition_key


def kernel_size_weights(n_players: int) -> np.ndarray:
    """float[n + 1]: Shapley-kernel mass of each coalition size (0 for sizes 0 and n)."""
    sizes = np.arange(n_players + 1, dtype=np.float64)
    weights = np.zeros(n_players + 1)
    inner = (sizes > 0) & (sizes < n_players)
    weights[inner] = 1.0 / (sizes[inner] * (n_players - sizes[inner]))
    return weights


def enumerated_sizes(n_players: int, budget: int, size_weights: np.ndarray) -> list[int]:
    """Sizes (besides 0 and n) to enumerate exhaustively, from the outside in, within ``budget - 2``."""
    remaining = budget - 2
    chosen: list[int] = []
    live = list(range(1, n_players))
    for low in range(1, n_players // 2 + 1):
        pair = sorted({low, n_players - low})
        cost = sum(comb(n_players, size) for size in pair)
        share = sum(size_weights[size] for size in pair) / sum(size_weights[size] for size in live)
        if cost > remaining or cost > remaining * share + 1e-9:
            break
        chosen.extend(pair)
        remaining -= cost
        live = [size for size in live if size not in pair]
    return chosen


def enumerate_sizes(n_players: int, sizes: list[int]) -> list[np.ndarray]:
    """Every coalition of the given sizes, as bool[n] rows."""
    rows: list[np.ndarray] = []
    for size in sizes:
        for members in combinations(range(n_players), size):
            row = np.zeros(n_players, dtype=bool)
            row[list(members)] = True
            rows.append(row)
    return rows


def sample_paired(
    n_players: int,
    sizes: list[int],
    size_weights: np.ndarray,
    count: int,
    rng: np.random.Generator,
    taken: set[bytes],
) -> list[np.ndarray]:
    """Up to ``count`` new coalitions of the given sizes, each followed by its complement when it fits.

    ``taken`` holds the keys of coalitions already used and is updated; sampling is without replacement.
    """
    if not sizes or count <= 0:
        return []
    capacity = {size: comb(n_players, size) for size in sizes}
    used = dict.fromkeys(sizes, 0)
    rows: list[np.ndarray] = []
    attempts = 0
    while len(rows) < count and attempts < 50 * count + 1000:
        live = [size for size in sizes if used[size] < capacity[size]]
        if not live:
            break
        probabilities = np.array([size_weights[size] for size in live])
        size = live[rng.choice(len(live), p=probabilities / probabilities.sum())]
        attempts += 1
        row = np.zeros(n_players, dtype=bool)
        row[rng.choice(n_players, size, replace=False)] = True
        key = coalition_key(row)
        if key in taken:
            continue
        taken.add(key)
        used[size] += 1
        rows.append(row)
        complement = ~row
        complement_key = coalition_key(complement)
        if len(rows) < count and complement_key not in taken:
            taken.add(complement_key)
            used[n_players - size] = used.get(n_players - size, 0) + 1
            rows.append(complement)
    return rows
