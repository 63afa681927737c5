"""How far the default estimator is from what a Gaussian process could reach on an exact table.

The oracle knows the table's own Walsh power spectrum: every coefficient f_A of v(z) = sum_A f_A prod_{j in A} z_j
gets its own prior variance f_A^2, which no estimator can learn from a few hundred coalitions. Its posterior mean
of phi is measured three ways at budgets n x {5, 10, 20, 50}: on the default's own coalitions (so only the prior
differs), and on coalitions the oracle picks itself, greedily shrinking the posterior variance of phi from the
(empty, full) pair, once in complementary pairs and once one coalition at a time (so neither the prior nor the
design holds it back). Beside them: the default's RMSE and the best shapiq approximator's at the same budget (the
goal of ``benchmarks/estimators.py`` is half of it). Where even the oracle misses that goal, no better prior or
design closes the gap. 2^n x 2^n matrices, so n <= 12. Prints one JSON object on its last line.

    python benchmarks/oracle_limits.py --table ../shared/games/smollm2_blocks18-29_wikitext.npz --seeds 10
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small solves: one BLAS thread each, as in estimators.py
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from estimators import SHAPIQ, BenchGame, CountingWrapper, run_shapiq, table_game
from tqdm import tqdm

from shapley_svc.estimators import estimate, make_estimator
from shapley_svc.estimators.exact import all_coalitions
from shapley_svc.estimators.gp import JITTER

logger = logging.getLogger("benchmarks.oracle_limits")
MAX_PLAYERS = 12
BUDGET_FACTORS = (5, 10, 20, 50)


def walsh_coefficients(values: np.ndarray) -> np.ndarray:
    """f float[2^n] with values[m] = sum_A f_A chi_A(m), chi_A(m) = (-1)^|A minus m| (fast Walsh-Hadamard)."""
    coefficients = values.astype(np.float64).copy()
    half = 1
    while half < len(coefficients):
        blocks = coefficients.reshape(-1, 2, half)
        absent, present = blocks[:, 0].copy(), blocks[:, 1].copy()
        blocks[:, 0], blocks[:, 1] = absent + present, present - absent
        half *= 2
    return coefficients / len(coefficients)


def characters(codes: np.ndarray, n_players: int) -> np.ndarray:
    """chi float[len(codes), 2^n]: the Walsh characters of every subset A at the coalitions ``codes``."""
    subsets = np.arange(1 << n_players)
    absent = (~codes[:, None]) & subsets[None, :] & ((1 << n_players) - 1)
    parity = np.zeros(absent.shape, dtype=np.int64)
    for bit in range(n_players):
        parity ^= (absent >> bit) & 1
    return 1.0 - 2.0 * parity


def shapley_weights(n_players: int) -> np.ndarray:
    """W float[2^n, n] with phi = f @ W: chi_A gives 2 / |A| to each player of A when |A| is odd, else 0."""
    members = all_coalitions(n_players).astype(np.float64)
    sizes = members.sum(axis=1)
    share = np.where(sizes % 2 == 1, 2.0 / np.maximum(sizes, 1), 0.0)
    return members * share[:, None]


class Oracle:
    """The Gaussian process whose prior variance of each Walsh coefficient is its true square."""

    def __init__(self, values: np.ndarray, shapley: np.ndarray) -> None:
        self.n_players = shapley.size
        self.values = values
        coefficients = walsh_coefficients(values)
        self.chi = characters(np.arange(len(values)), self.n_players)  # [coalition, A]
        if not np.allclose(self.chi @ coefficients, values, atol=1e-8):
            raise AssertionError("the Walsh transform does not reproduce the table")
        self.weights = shapley_weights(self.n_players)  # [A, n]
        if not np.allclose(coefficients @ self.weights, shapley, atol=1e-6):
            raise AssertionError("the table's Shapley values do not match its Walsh coefficients")
        self.spectrum = coefficients**2
        self.kernel = (self.chi * self.spectrum) @ self.chi.T  # cov(v(m), v(m'))
        self.cross = (self.chi * self.spectrum) @ self.weights  # cov(v(m), phi) [coalition, n]

    def posterior_mean(self, codes: np.ndarray) -> np.ndarray:
        """E[phi | v at the coalitions ``codes``] float[n]."""
        codes = np.unique(codes)
        gram = self.kernel[np.ix_(codes, codes)]
        gram += JITTER * np.trace(gram) / len(gram) * np.eye(len(gram))
        return self.cross[codes].T @ np.linalg.solve(gram, self.values[codes])

    def greedy_design(self, budget: int, paired: bool) -> np.ndarray:
        """Coalition codes (at most ``budget``) picked one unit at a time to shrink the posterior variance of phi.

        A unit is a coalition, or with ``paired`` a complementary pair, seen through its odd part (the only
        part phi depends on). Starts from the (empty, full) pair; rank-one updates of the joint posterior.
        """
        full = (1 << self.n_players) - 1
        if paired:
            units = np.arange(1 << (self.n_players - 1))  # pair (m, ~m) with the top player absent from m
            odd = (self.chi[units] - self.chi[full ^ units]) / 2  # chi_A(m) for odd |A|, 0 for even
            covariance = (odd * self.spectrum) @ odd.T
            with_phi = (odd * self.spectrum) @ self.weights
        else:
            units = np.arange(1 << self.n_players)
            covariance, with_phi = self.kernel.copy(), self.cross.copy()
        picked: list[int] = []

        def observe(unit: int) -> None:
            nonlocal covariance, with_phi
            picked.append(unit)
            column = covariance[:, unit].copy()
            pivot = max(column[unit], 1e-14)
            covariance = covariance - np.outer(column, column) / pivot
            with_phi = with_phi - np.outer(column, with_phi[unit]) / pivot

        for unit in (0,) if paired else (0, full):
            observe(unit)
        per_unit = 2 if paired else 1
        while per_unit * (len(picked) + 1) <= budget:
            gain = (with_phi**2).sum(axis=1) / np.maximum(np.diag(covariance), 1e-14)
            gain[picked] = -np.inf
            observe(int(np.argmax(gain)))
        chosen = np.array(picked)
        return np.concatenate([chosen, full ^ chosen]) if paired else chosen


def default_coalitions(game: BenchGame, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The default estimator's estimate float[n] and the codes of the coalitions it evaluated."""
    estimator = make_estimator("default", game.n_players, budget, seed)
    result = estimate(estimator, CountingWrapper(game))
    coalitions, _ = estimator.observed()
    return result.values[0], coalitions.astype(np.int64) @ (1 << np.arange(game.n_players))


def rmse(errors: list[np.ndarray]) -> float:
    return float(np.sqrt(np.mean(np.square(errors))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, required=True, help="an exact table in the shared/games format")
    parser.add_argument("--seeds", type=int, default=10, help="seeds for the default and for shapiq")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    game = table_game(args.table)
    if game.n_players > MAX_PLAYERS:
        parser.error(f"the oracle holds 2^n x 2^n matrices; {game.n_players} players is over {MAX_PLAYERS}")
    started = time.monotonic()
    oracle = Oracle(game.function(all_coalitions(game.n_players)), game.shapley)
    rows = {}
    for factor in tqdm(BUDGET_FACTORS, desc="budgets"):
        budget = factor * game.n_players
        default_errors, oracle_errors = [], []
        for seed in range(args.seeds):
            values, codes = default_coalitions(game, budget, seed)
            default_errors.append(values - game.shapley)
            oracle_errors.append(oracle.posterior_mean(codes) - game.shapley)
        shapiq_rmse = {
            label: rmse([run_shapiq(game, label, budget, seed)[0] - game.shapley for seed in range(args.seeds)])
            for label, _, _ in SHAPIQ
        }
        best = min(shapiq_rmse, key=shapiq_rmse.__getitem__)
        rows[budget] = {
            "default": rmse(default_errors),
            "oracle_on_default_coalitions": rmse(oracle_errors),
            "oracle_greedy_pairs": rmse([oracle.posterior_mean(oracle.greedy_design(budget, True)) - game.shapley]),
            "oracle_greedy_single": rmse([oracle.posterior_mean(oracle.greedy_design(budget, False)) - game.shapley]),
            "best_shapiq": best,
            "best_shapiq_rmse": shapiq_rmse[best],
            "goal": 0.5 * shapiq_rmse[best],
        }
        logger.info("%s %5d %s", game.name, budget, rows[budget])
    logger.info("%.0f s", time.monotonic() - started)
    print(json.dumps({"table": game.name, "seeds": args.seeds, "budgets": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
