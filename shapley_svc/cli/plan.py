"""`shapley-svc plan`: choose which k players to remove, on a stored game table or on a model.

    shapley-svc plan --table T.npz --remove 3 --budget 17 --seed 0 [--method NAME]
    shapley-svc plan --model demo --corpus wikitext2 --windows 4 --window 128 --remove 8 --budget 106 --seed 0
    shapley-svc plan --table T.npz --most --max-loss task=0.3 --budget 60    # as many as the limit allows

On a model the search reads coalitions through the same evaluator, store and executor as ``run`` (values
cached, a local Ray pool by default). The windows after the calibration ones are selection windows
(``--selection-windows``, twice ``--windows`` by default), on which the default searcher decides among its
finalists, seeded with the static metrics' sets; the plan is then checked on the held-out windows after those,
against the full model, paired window by window. The last line of stdout is the plan as JSON: ``removed``,
``evaluations_used`` (distinct coalitions the search read, on either slice, never above the budget),
``evaluations_computed``, ``value`` (of the remaining set on the calibration data), ``selection`` and, for a
model, ``held_out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from shapley_svc.cli import game_options
from shapley_svc.errors import ConfigError

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``plan`` subcommand."""
    from shapley_svc.planning import SEARCHERS

    parser = subparsers.add_parser(
        "plan",
        help="choose which k blocks or sublayers to remove (on a game table or a model)",
        description=f"{__doc__}\nSearchers: default (= {SEARCHERS.key('default')}, recommended); "
        f"{SEARCHERS.describe()}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--table", default=None, help="game table .npz (format of shared/games/README.md)")
    game_options.add_game_options(parser, model_default=None)
    parser.add_argument("--remove", type=int, default=None, metavar="K", help="how many players to remove")
    parser.add_argument(
        "--most", action="store_true", help="remove as many players as possible while every --max-loss holds"
    )
    parser.add_argument(
        "--max-loss",
        default=None,
        metavar="TASK=D[,TASK=D]",
        help="the most each task may lose against the full model, e.g. wikitext2.neg_loss=0.3 (a constraint)",
    )
    parser.add_argument("--budget", type=int, required=True, help="distinct coalitions the search may read")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same plan)")
    parser.add_argument("--method", default="default", metavar="NAME", help=f"one of: {', '.join(SEARCHERS.names())}")
    targets = "blocks, attn or mlp sublayers only, any player (default: block, or any at --granularity sublayer)"
    parser.add_argument("--target", choices=("block", "attn", "mlp", "any"), help=f"which players may go: {targets}")
    parser.add_argument("--objective", default=None, help="task, or task=weight,task=weight (default: the task)")
    parser.add_argument(
        "--params", type=json.loads, default=None, help="the searcher's options as JSON, e.g. '{\"batch\": 4}'"
    )
    parser.add_argument(
        "--selection-windows",
        type=int,
        default=None,
        help="windows after the calibration ones on which the default searcher decides among its finalists "
        "(default: twice --windows; 0: decide on the calibration windows)",
    )
    parser.add_argument("--out", default=None, help="also write the plan JSON to this file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Search the plan on the table or the model; print it, and its JSON on the last line."""
    if (args.table is None) == (args.model is None):
        raise ConfigError("give exactly one of --table FILE.npz or --model NAME")
    plan = plan_on_table(args) if args.table is not None else plan_on_model(args)
    for name, value in (("removed", ", ".join(plan.removed)), ("value", f"{plan.value:.4f}")):
        logger.info("%s: %s", name, value)
    text = plan.to_json()
    if args.out is not None:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def plan_on_table(args: argparse.Namespace) -> Any:
    """The plan of ``--method`` on a stored table, the budget also enforced by the table game itself."""
    from shapley_svc.estimators.table import TableGame
    from shapley_svc.planning.requests import plan_requested
    from shapley_svc.runner.evaluator import Evaluator

    game = TableGame.from_npz(args.table, budget=args.budget)
    plan = plan_requested(
        plan_spec(args, game.task_names, target=args.target or "any"), Evaluator.of(game), progress=not args.no_progress
    )
    if plan.evaluations_used != game.evaluations_used:
        raise ConfigError(f"the search read {game.evaluations_used} coalitions but reported {plan.evaluations_used}")
    return plan


def plan_on_model(args: argparse.Namespace) -> Any:
    """The plan on the model's game through the executor and store the options name, checked on held-out data."""
    from shapley_svc.model.loading import demo_checkpoint_folder
    from shapley_svc.planning import SEARCHERS
    from shapley_svc.planning.requests import plan_requested
    from shapley_svc.runner.evaluator import Evaluator
    from shapley_svc.runner.executors import HELD_OUT, SELECTION, start_executor
    from shapley_svc.spec import ExecutorSpec
    from shapley_svc.store.sqlite import SQLiteStore

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    game_options.resolve_defaults(args)
    args.selection_windows = 2 * args.windows if args.selection_windows is None else args.selection_windows
    if args.selection_windows < 0:
        raise ConfigError(f"--selection-windows must be at least 0, got {args.selection_windows}")
    if args.model == "demo" and args.executor == "ray":
        demo_checkpoint_folder()  # the one-time conversion happens here, not in every worker
    if SEARCHERS.key(args.method) == "model_based" and "rankings" not in (args.params or {}):
        args.params = (args.params or {}) | {"rankings": static_scores(args)}
    executor = start_executor(_worker_setup(args), ExecutorSpec.model_validate(game_options.executor_options(args)))
    try:
        with SQLiteStore(game_options.store_path(args)) as store:
            games = executor.games()

            def evaluator_of(key: str) -> Evaluator:
                return Evaluator(executor, store, games[key], reuse_across_setups=args.reuse_across_setups)

            evaluator, held_out = evaluator_of(args.granularity), evaluator_of(args.granularity + HELD_OUT)
            selection = evaluator_of(args.granularity + SELECTION) if args.selection_windows else None
            request = plan_spec(args, evaluator.game.task_names, target=args.target)
            return plan_requested(
                request, evaluator, held_out=held_out, selection=selection, progress=not args.no_progress
            )
    finally:
        executor.close()


def static_scores(args: argparse.Namespace) -> list[list[float]]:
    """Block Influence, angular distance and relative update norm of every player on the calibration windows
    (one forward pass here): the default searcher's seed rankings."""
    from shapley_svc.cli.run import static_rankings

    rankings, _, _ = static_rankings(args)
    return [list(ranking.scores) for ranking in rankings]


def _worker_setup(args: argparse.Namespace) -> Any:
    """The model, the calibration task, the selection task (the windows after it) and the held-out task (the
    windows after those, one per batch)."""
    from shapley_svc.runner.executors import WorkerSetup
    from shapley_svc.spec import ModelSpec, TaskSpec

    count = args.selection_windows
    selection = game_options.lm_task(args, windows=count, first_window=args.windows) if count else None
    return WorkerSetup(
        model=ModelSpec(name=args.model, dtype=args.dtype, device=args.device),
        granularities=(args.granularity,),
        tasks=(TaskSpec.model_validate(game_options.lm_task(args)),),
        held_out=(TaskSpec.model_validate(game_options.held_out_task(args, after=count)),),
        selection=(TaskSpec.model_validate(selection),) if selection else (),
    )


def plan_spec(args: argparse.Namespace, task_names: tuple[str, ...], *, target: str | None) -> Any:
    """The plan the options ask for, as a job spec's ``plans:`` entry (so the CLI and a job search alike)."""
    from pydantic import ValidationError

    from shapley_svc.planning import Objective
    from shapley_svc.spec import PlanSpec

    if (args.remove is None) == (not args.most):
        raise ConfigError("give --remove K, or --most with --max-loss TASK=D")
    if args.most and not args.max_loss:
        raise ConfigError("--most needs --max-loss TASK=D (the most a task may lose)")
    weights = dict(Objective.parse(args.objective, task_names).weights)
    limits = dict(Objective.parse(args.max_loss, task_names).weights) if args.max_loss else {}
    try:
        return PlanSpec(
            granularity=getattr(args, "granularity", None) or "block",
            target=target,
            remove=args.remove,
            most=args.most,
            method=args.method,
            params=args.params or {},
            budget=args.budget,
            seed=args.seed,
            objective=weights,
            limits=limits,
        )
    except ValidationError as error:
        raise ConfigError("; ".join(issue["msg"] for issue in error.errors())) from error
