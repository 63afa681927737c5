"""`shapley-svc estimate`: run an estimator on a stored game table and print the result as JSON.

The last line of stdout is one JSON object: ``values`` (per-player list, or one list per task column),
``stderr`` (same shape), ``evaluations_used`` (distinct coalitions the table served), counts, v(full),
v(empty), players, estimator and parameters, seed, and the RMSE against the table's exact values when it
has them. Imports numpy only (never torch).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from shapley_svc.errors import ConfigError

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``estimate`` subcommand."""
    from shapley_svc.estimators import DEFAULT_ESTIMATOR, REGISTRY, estimator_names

    listing = REGISTRY.describe()
    parser = subparsers.add_parser(
        "estimate",
        help="estimate Shapley values from a stored game table (.npz)",
        description=f"Estimators: default (= {DEFAULT_ESTIMATOR}, recommended); {listing}.",
    )
    parser.add_argument("--table", required=True, help="game table .npz (format of shared/games/README.md)")
    parser.add_argument(
        "--estimator", default="default", metavar="NAME", help=f"one of: {', '.join(estimator_names())}"
    )
    parser.add_argument("--budget", type=int, required=True, help="distinct coalition evaluations allowed")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")
    parser.set_defaults(handler=run_estimate)


def run_estimate(args: argparse.Namespace) -> int:
    """Load the table, run the estimator within the budget, print the JSON result on the last line."""
    import numpy as np

    from shapley_svc.estimators import estimate, make_estimator
    from shapley_svc.estimators.table import TableGame

    if args.budget < 2:
        raise ConfigError(f"--budget must be at least 2 (the empty and full coalitions), got {args.budget}")
    game = TableGame.from_npz(args.table, budget=args.budget)
    estimator = make_estimator(
        args.estimator,
        n_players=game.n_players,
        budget=args.budget,
        seed=args.seed,
        player_names=game.player_names,
    )
    result = estimate(estimator, game, budget=args.budget)
    single = result.values.shape[0] == 1
    payload: dict[str, Any] = result.to_dict()
    payload["values"] = result.values[0].tolist() if single else result.values.tolist()
    payload["stderr"] = result.stderr[0].tolist() if single else result.stderr.tolist()
    payload["evaluations_used"] = game.evaluations_used
    if game.exact_shapley is not None and game.exact_shapley.shape == result.values.shape:
        payload["rmse_vs_exact"] = float(np.sqrt(np.mean((result.values - game.exact_shapley) ** 2)))
    logger.info("%s used %d evaluations", estimator.name, game.evaluations_used)
    print(json.dumps(payload))
    return 0
