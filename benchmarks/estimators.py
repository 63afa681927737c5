"""Benchmark: our Shapley estimators against the approximators of shapiq 1.4.1, error against budget.

Games: the exact tables in ``--games-dir`` (default ``../shared/games`` from the repo root) and analytic
games of 32 to 60 players whose exact values are known by construction (see ``analytic_games``).
Budget = distinct coalitions evaluated, counted by the same wrapper for both sides. Metrics over seeds:
RMSE against the exact values, Kendall tau, precision of the bottom-3 set. Prints a JSON summary on the
last line and saves a plot of RMSE against budget.

    python benchmarks/estimators.py            # full run: budgets n x {2, 5, 10, 20, 50}, 20 seeds
    python benchmarks/estimators.py --quick    # 3 seeds, fewer budgets, two analytic games
"""

from __future__ import annotations

import os

# One BLAS thread per process: the GP solves are small and thread contention slows them badly (RESULTS.md).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import logging
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shapley_svc.estimators import estimate, make_estimator
from shapley_svc.estimators.exact import all_coalitions, shapley_from_table
from shapley_svc.estimators.table import TableGame

logger = logging.getLogger("benchmarks.estimators")
REPO_ROOT = Path(__file__).resolve().parents[1]
OURS = ("default", "kernelshap", "permutation", "stratified", "player_stratified")
SHAPIQ = (
    ("PermutationSamplingSV", "PermutationSamplingSV", {}),
    ("KernelSHAP", "KernelSHAP", {"pairing_trick": False}),
    ("KernelSHAP-paired", "KernelSHAP", {"pairing_trick": True}),
    ("SVARM", "SVARM", {"pairing_trick": False}),
    ("SVARM-paired", "SVARM", {"pairing_trick": True}),
    ("StratifiedSamplingSV", "StratifiedSamplingSV", {}),
    ("OwenSamplingSV", "OwenSamplingSV", {}),
    ("UnbiasedKernelSHAP", "UnbiasedKernelSHAP", {}),
    ("kADDSHAP", "kADDSHAP", {}),
)
BUDGET_FACTORS = (2, 5, 10, 20, 50)


@dataclass
class BenchGame:
    """A game as a vectorised function bool[k, n] -> float[k] with its exact Shapley values."""

    name: str
    n_players: int
    function: Callable[[np.ndarray], np.ndarray]
    shapley: np.ndarray


class CountingWrapper:
    """Counts distinct coalitions; serves both our ``Game`` protocol and shapiq's callable."""

    def __init__(self, game: BenchGame) -> None:
        self.game = game
        self.seen: set[bytes] = set()
        self.player_names = tuple(f"p{i}" for i in range(game.n_players))
        self.task_names = ("value",)
        self.n_players = game.n_players

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        matrix = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        self.seen.update(np.packbits(row).tobytes() for row in matrix)
        return self.game.function(matrix)


def table_game(path: Path) -> BenchGame:
    """A stored exact table (shared/games format)."""
    table = TableGame.from_npz(path)
    values = table(all_coalitions(table.n_players))[:, 0]
    powers = 1 << np.arange(table.n_players, dtype=np.int64)
    return BenchGame(
        path.stem, table.n_players, lambda c: values[c.astype(np.int64) @ powers], np.asarray(table.exact_shapley)[0]
    )


def interaction_game(n_players: int, seed: int) -> BenchGame:
    """Additive + sparse pairwise + sparse triple interactions + a few strong +/- players.

    v(S) = sum_{i in S} b_i + sum_{(i,j) in S} g_ij + sum_{(i,j,k) in S} t_ijk; phi_i = b_i + sum g / 2 + sum t / 3.
    """
    rng = np.random.default_rng(seed)
    additive = rng.gamma(2.0, 0.1, n_players)
    strong = rng.choice(n_players, 6, replace=False)
    additive[strong[:3]] = rng.uniform(1.0, 2.0, 3)
    additive[strong[3:]] = -rng.uniform(0.3, 0.8, 3)
    pairs = [tuple(p) for p in rng.choice(n_players, (3 * n_players, 2)) if p[0] != p[1]]
    pair_weights = rng.normal(0, 0.15, len(pairs))
    triples = [tuple(t) for t in rng.choice(n_players, (2 * n_players, 3)) if len(set(t)) == 3]
    triple_weights = rng.normal(0, 0.3, len(triples))
    shapley = additive.copy()
    for (i, j), weight in zip(pairs, pair_weights, strict=True):
        shapley[[i, j]] += weight / 2
    for triple, weight in zip(triples, triple_weights, strict=True):
        shapley[list(triple)] += weight / 3
    pair_index = np.array(pairs)
    triple_index = np.array(triples)

    def function(coalitions: np.ndarray) -> np.ndarray:
        present = coalitions.astype(float)
        value = present @ additive
        value += (present[:, pair_index[:, 0]] * present[:, pair_index[:, 1]]) @ pair_weights
        value += (present[:, triple_index].prod(axis=2)) @ triple_weights
        return value

    return BenchGame(f"interactions_{n_players}", n_players, function, shapley)


def layer_like_game(n_players: int, block: int, seed: int) -> BenchGame:
    """Depth-pruning-like: blocks of consecutive 'layers' with threshold/saturating behaviour.

    v(S) = sum_b A_b sigmoid(s_b (w_b . x_{B_b} - theta_b)) + c sqrt(|S| / n) + sum_{harmful} h_i x_i: each
    block collapses once too many of its important layers are missing, the whole network saturates with
    depth, and a few layers hurt. Exact Shapley values by construction: block terms are games on disjoint
    players (enumerated, 2^block coalitions each), the |S| term gives each player c / n, the last is additive.
    """
    rng = np.random.default_rng(seed)
    n_blocks = n_players // block
    harmful = rng.choice(n_players, 3, replace=False)
    harm = -rng.uniform(0.05, 0.3, 3)
    shapley = np.zeros(n_players)
    local = all_coalitions(block).astype(float)
    terms = []
    for b in range(n_blocks):
        weights = rng.gamma(1.5, 1.0, block)
        amplitude, steepness = rng.uniform(0.5, 2.0), rng.uniform(3.0, 8.0)
        threshold = rng.uniform(0.3, 0.7) * weights.sum()
        values = amplitude / (1 + np.exp(-steepness * (local @ weights - threshold) / weights.sum()))
        shapley[b * block : (b + 1) * block] += shapley_from_table(values[:, None])[0]
        terms.append((weights, amplitude, steepness, threshold))
    depth_scale = 2.0
    shapley += depth_scale / n_players
    shapley[harmful] += harm

    def function(coalitions: np.ndarray) -> np.ndarray:
        present = coalitions.astype(float)
        value = depth_scale * np.sqrt(present.sum(axis=1) / n_players)
        for b, (weights, amplitude, steepness, threshold) in enumerate(terms):
            part = present[:, b * block : (b + 1) * block] @ weights
            value += amplitude / (1 + np.exp(-steepness * (part - threshold) / weights.sum()))
        value += present[:, harmful] @ harm
        return value

    return BenchGame(f"layer_like_{n_players}", n_players, function, shapley)


def shuffled_game(game: BenchGame, seed: int) -> BenchGame:
    """The same game with its players in a random order: interacting layers no longer sit side by side.

    Checks that an estimator does not depend on interactions being local in the player order.
    """
    order = np.random.default_rng(seed).permutation(game.n_players)  # new player p is old player order[p]
    inverse = np.argsort(order)

    def function(coalitions: np.ndarray) -> np.ndarray:
        return game.function(coalitions[:, inverse])

    return BenchGame(f"{game.name}_shuffled", game.n_players, function, game.shapley[order])


def run_ours(game: BenchGame, name: str, budget: int, seed: int) -> tuple[np.ndarray, int, np.ndarray]:
    wrapper = CountingWrapper(game)
    result = estimate(make_estimator(name, game.n_players, budget, seed), wrapper)
    return result.values[0], len(wrapper.seen), result.stderr[0]


def run_shapiq(game: BenchGame, label: str, budget: int, seed: int) -> tuple[np.ndarray, int, np.ndarray]:
    import shapiq

    _, class_name, options = next(entry for entry in SHAPIQ if entry[0] == label)
    wrapper = CountingWrapper(game)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        approximator = getattr(shapiq, class_name)(n=game.n_players, random_state=seed, **options)
        values = approximator.approximate(budget, wrapper).get_n_order_values(1)
    return np.asarray(values, dtype=float), len(wrapper.seen), np.full(game.n_players, np.nan)


def kendall_tau(first: np.ndarray, second: np.ndarray) -> float:
    """Kendall's tau-a between two score vectors."""
    i, j = np.triu_indices(len(first), 1)
    return float(np.mean(np.sign(first[i] - first[j]) * np.sign(second[i] - second[j])))


WORKER_GAMES: dict[str, BenchGame] = {}


def build_games(games_dir: Path, quick: bool) -> dict[str, BenchGame]:
    """The stored tables plus the analytic games, by name."""
    games = [table_game(path) for path in sorted(games_dir.glob("*.npz"))]
    games += [layer_like_game(32, 4, seed=1), interaction_game(48, seed=2)]
    if not quick:
        games += [layer_like_game(60, 6, seed=3), shuffled_game(layer_like_game(32, 4, seed=1), seed=4)]
    return {game.name: game for game in games}


def load_worker_games(games_dir: Path, quick: bool) -> None:
    """Process-pool initializer: build the games once per worker (closures do not pickle)."""
    WORKER_GAMES.update(build_games(games_dir, quick))


def one_cell(job: tuple[str, str, str, int, int]) -> dict[str, float | int | str]:
    """Run one (game, method, budget, seed) and score it."""
    game_name, side, method, budget, seed = job
    game = WORKER_GAMES[game_name]
    runner = run_ours if side == "ours" else run_shapiq
    try:
        values, used, stderr = runner(game, method, budget, seed)
    except Exception as error:
        logger.warning("%s %s budget %d failed: %r", game.name, method, budget, error)
        return {"game": game.name, "method": method, "budget": budget, "seed": seed, "failed": 1}
    error = values - game.shapley
    bottom_true = set(np.argsort(game.shapley)[:3].tolist())
    bottom_est = set(np.argsort(values)[:3].tolist())
    return {
        "game": game.name,
        "method": method,
        "side": side,
        "budget": budget,
        "seed": seed,
        "failed": 0,
        "squared": float(np.mean(error**2)),
        "tau": kendall_tau(values, game.shapley),
        "bottom3": len(bottom_true & bottom_est) / 3,
        "used": used,
        "covered": float(np.mean(np.abs(error) < stderr)) if np.all(np.isfinite(stderr)) else float("nan"),
    }


def summarise(rows: list[dict]) -> dict:
    """Aggregate per game, method and budget: RMSE over seeds, mean tau, bottom-3 precision, max used."""
    summary: dict = {}
    for row in rows:
        if row["failed"]:
            continue
        cell = (
            summary.setdefault(row["game"], {})
            .setdefault(row["method"], {})
            .setdefault(str(row["budget"]), {"squared": [], "tau": [], "bottom3": [], "used": [], "covered": []})
        )
        for key in ("squared", "tau", "bottom3", "used", "covered"):
            cell[key].append(row[key])
    for methods in summary.values():
        for budgets in methods.values():
            for key, cell in list(budgets.items()):
                budgets[key] = {
                    "rmse": float(np.sqrt(np.mean(cell["squared"]))),
                    "kendall_tau": float(np.mean(cell["tau"])),
                    "bottom3_precision": float(np.mean(cell["bottom3"])),
                    "max_evaluations_used": int(np.max(cell["used"])),
                    "stderr_coverage": float(np.nanmean(cell["covered"]))
                    if not np.all(np.isnan(cell["covered"]))
                    else None,
                }
    return summary


def verdict(summary: dict) -> dict:
    """Default vs the best shapiq approximator per game and budget (goal: RMSE ratio <= 0.5 from 5n up)."""
    table: dict = {}
    shapiq_labels = [label for label, _, _ in SHAPIQ]
    for game, methods in summary.items():
        for budget, ours in methods.get("default", {}).items():
            peers = {label: methods[label][budget] for label in shapiq_labels if budget in methods.get(label, {})}
            if not peers:
                continue
            best = min(peers, key=lambda label: peers[label]["rmse"])
            table.setdefault(game, {})[budget] = {
                "default_rmse": ours["rmse"],
                "best_shapiq": best,
                "best_shapiq_rmse": peers[best]["rmse"],
                "ratio": ours["rmse"] / peers[best]["rmse"] if peers[best]["rmse"] > 0 else None,
                "default_bottom3": ours["bottom3_precision"],
                "best_shapiq_bottom3": max(peer["bottom3_precision"] for peer in peers.values()),
            }
    return table


def plot(summary: dict, path: Path) -> None:
    """RMSE against budget, one panel per game, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = list(summary)
    figure, axes = plt.subplots(1, len(games), figsize=(5 * len(games), 4), squeeze=False)
    for axis, game in zip(axes[0], games, strict=True):
        for method, budgets in summary[game].items():
            xs = sorted(int(b) for b in budgets)
            ys = [budgets[str(b)]["rmse"] for b in xs]
            style = {"linewidth": 3, "color": "black"} if method == "default" else {"alpha": 0.7}
            axis.loglog(xs, np.maximum(ys, 1e-6), marker="o", label=method, **style)
        axis.set_title(game)
        axis.set_xlabel("budget (distinct coalitions)")
        axis.set_ylabel("RMSE vs exact")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--games-dir",
        type=Path,
        default=REPO_ROOT / ".." / "shared" / "games",
        help="folder of exact tables (relative paths resolve from the repo root)",
    )
    parser.add_argument("--plot", type=Path, default=REPO_ROOT / "benchmarks" / "estimators.png")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 seeds, budgets 5n and 20n, fewer games")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--games", default=None, help="comma-separated game names to run (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    games_dir = args.games_dir if args.games_dir.is_absolute() else REPO_ROOT / args.games_dir
    games = list(build_games(games_dir, args.quick).values())
    if args.games:
        wanted = args.games.split(",")
        unknown = sorted(set(wanted) - {game.name for game in games})
        if unknown:
            parser.error(f"unknown games {unknown}; choose from {[game.name for game in games]}")
        games = [game for game in games if game.name in wanted]
    factors, seeds = ((5, 20), 3) if args.quick else (BUDGET_FACTORS, args.seeds)
    jobs = [
        (game.name, side, method, factor * game.n_players, seed)
        for game in games
        for factor in factors
        for side, methods in (("ours", OURS), ("shapiq", [label for label, _, _ in SHAPIQ]))
        for method in methods
        for seed in range(seeds)
    ]
    started = time.monotonic()
    with ProcessPoolExecutor(args.workers, initializer=load_worker_games, initargs=(games_dir, args.quick)) as pool:
        rows = list(pool.map(one_cell, jobs, chunksize=4))
    summary = summarise(rows)
    comparison = verdict(summary)
    for game, budgets in comparison.items():
        for budget, cell in budgets.items():
            logger.info(
                "%-36s %5s default %.4f  best shapiq %-20s %.4f  ratio %s  bottom3 %.2f vs %.2f",
                game,
                budget,
                cell["default_rmse"],
                cell["best_shapiq"],
                cell["best_shapiq_rmse"],
                None if cell["ratio"] is None else round(cell["ratio"], 3),
                cell["default_bottom3"],
                cell["best_shapiq_bottom3"],
            )
    plot_path = args.plot if args.plot.is_absolute() else Path.cwd() / args.plot
    plot(summary, plot_path)
    logger.info("%d runs in %.0f s; plot %s", len(rows), time.monotonic() - started, plot_path)
    print(
        json.dumps(
            {
                "seeds": seeds,
                "budget_factors": list(factors),
                "comparison": comparison,
                "summary": summary,
                "failed_runs": sum(row["failed"] for row in rows),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
