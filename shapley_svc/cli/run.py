"""`shapley-svc run`: the main job. Shapley values, leave-one-out and static metrics of one model's players,
and the recommended plan for removing a few k of them.

It builds a job spec from the options (one language-modelling task, the default estimator and leave-one-out,
then a plan per k of ``--plans`` checked on held-out windows), runs it through the distributed runner (a local
Ray pool by default, every value cached in the store), computes the static metrics in this process, then
prints one ranking table and the plans, and writes every ranking as a versioned RankingSet JSON file. Run
twice, the second run is served from the value cache.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from shapley_svc.cli.game_options import (
    DEFAULT_OUT_DIR,
    add_game_options,
    executor_options,
    held_out_task,
    lm_task,
    resolve_defaults,
    store_path,
)
from shapley_svc.cli.job import add_noise_option, print_cost
from shapley_svc.errors import ConfigError

DEFAULT_BUDGET_PER_PLAYER = 5
SHAPLEY_LABEL = "shapley"
DEFAULT_PLANS = "2,4"


class _DefaultsWhereKnown(argparse.ArgumentDefaultsHelpFormatter):
    """Appends the default to an option's help unless it is None or False (their help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def register(subparsers: Any) -> None:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="value every block (or sublayer) of a model on a corpus and print the rankings",
        description=__doc__,
        formatter_class=_DefaultsWhereKnown,
    )
    add_game_options(parser)
    parser.add_argument("--estimator", default="default", help="Shapley estimator (see `shapley-svc estimate -h`)")
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help=f"coalition evaluations (default {DEFAULT_BUDGET_PER_PLAYER} x players)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the estimator's sampling")
    parser.add_argument(
        "--out", default=None, help="RankingSet JSON to write (default runs/<model>-<granularity>-rankings.json)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build the job spec run would, then time one worker and print its expected cost and, per task, "
        "the items --noise needs; nothing is evaluated into the store",
    )
    add_noise_option(parser)
    parser.add_argument(
        "--plans",
        type=plan_sizes,
        default=DEFAULT_PLANS,
        metavar="K,K",
        help="how many players the recommended plans remove ('none': no plans); each searched by the default "
        "searcher on half of greedy search's reads (at least players + 2), reusing the job's cached values",
    )
    parser.add_argument(
        "--suite",
        default=None,
        metavar="FILE",
        help="a task suite (YAML/JSON, e.g. suites/tradeoffs.yaml): its tasks replace the language-modelling task, "
        "its held-out counterparts judge the plans and its weights are the plans' objective",
    )
    parser.set_defaults(handler=run)


def plan_sizes(text: str) -> tuple[int, ...]:
    """``2,4`` as (2, 4); ``none`` as ()."""
    if text.strip().lower() == "none":
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give counts like 2,4 or 'none', not {text!r}") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"each count must be at least 1, got {text!r}")
    return sizes


def plan_requests(sizes: tuple[int, ...], n_players: int, granularity: str) -> list[dict[str, Any]]:
    """One default-searcher plan per size below ``n_players``, on half of greedy's reads (at least n + 2)."""
    from shapley_svc.planning import greedy_evaluations

    target = "block" if granularity == "block" else "any"
    return [
        {
            "granularity": granularity,
            "target": target,
            "remove": k,
            "budget": max(greedy_evaluations(n_players, k) // 2, n_players + 2),
        }
        for k in sorted(set(sizes))
        if k < n_players
    ]


def build_spec(args: argparse.Namespace, n_players: int) -> Any:
    """The job spec the options describe: one lm_loss task (or ``--suite``'s tasks), the Shapley estimator and
    leave-one-out, then the plans of ``--plans`` checked on the held-out tasks."""
    from shapley_svc.spec import parse_spec

    budget = args.budget or DEFAULT_BUDGET_PER_PLAYER * n_players
    plans = plan_requests(args.plans, n_players, args.granularity)
    objective = suite_objective(args)
    tasks, held_out = suite_tasks(args)  # the suite read and validated once
    plans = [plan | {"objective": objective} for plan in plans] if objective else plans
    return parse_spec(
        {
            "name": f"shapley-svc run {args.model}",
            "model": {"name": args.model, "dtype": args.dtype, "device": args.device},
            "players": {"granularities": [args.granularity]},
            "tasks": tasks,
            "estimators": [
                {"name": args.estimator, "seed": args.seed, "label": SHAPLEY_LABEL},
                {"name": "leave_one_out", "seed": args.seed},
            ],
            "budget": {"evaluations": max(budget, n_players + 1)},
            "executor": executor_options(args),
            "store": {"path": store_path(args), "reuse_across_setups": args.reuse_across_setups},
        }
        | ({"plans": plans, "held_out": held_out} if plans else {}),
        source="run options",
    )


def suite_tasks(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tasks, held-out tasks): those of ``--suite``, else the lm_loss task and the windows after it."""
    if getattr(args, "suite", None) is None:
        return [lm_task(args)], [held_out_task(args)]
    from shapley_svc.suites import load_suite

    suite = load_suite(args.suite)
    return [with_data_dir(args, task.model_dump()) for task in suite.job_tasks()], [
        with_data_dir(args, task.model_dump()) for task in suite.held_out_tasks()
    ]


def with_data_dir(args: argparse.Namespace, task: dict[str, Any]) -> dict[str, Any]:
    """``task`` reading ``--data-dir`` unless it names its own (lm-eval tasks read where lm-eval reads)."""
    if args.data_dir is None or task["name"].startswith("lm_eval:") or "data_dir" in task["params"]:
        return task
    return task | {"params": task["params"] | {"data_dir": str(args.data_dir)}}


def suite_objective(args: argparse.Namespace) -> dict[str, float] | None:
    """The plans' objective weights of ``--suite`` (None without one: the first task)."""
    if getattr(args, "suite", None) is None:
        return None
    from shapley_svc.suites import load_suite

    return load_suite(args.suite).objective()


def run(args: argparse.Namespace) -> int:
    """Run the job, add the static metrics, print the table and write the RankingSet; JSON summary last."""
    import torch

    from shapley_svc.estimators import check_estimator
    from shapley_svc.estimators.result import ShapleyResult
    from shapley_svc.ranking import RankingSet
    from shapley_svc.runner.driver import run_job
    from shapley_svc.store.sqlite import SQLiteStore

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.executor == "ray":
        torch.set_num_threads(1)
    check_estimator(args.estimator)  # an unknown name fails before the model loads
    resolve_defaults(args)
    if args.dry_run:
        return print_cost(build_spec(args, player_count(args)), args)
    if args.noise:
        raise ConfigError("--noise sets the target of a dry run: add --dry-run")
    static, model_fingerprint, n_players = static_rankings(args)
    spec = build_spec(args, n_players)
    out_path = Path(args.out or DEFAULT_OUT_DIR / f"{Path(args.model).name}-{args.granularity}-rankings.json")
    Path(spec.store.path).parent.mkdir(parents=True, exist_ok=True)
    outcome = run_job(spec, progress_bar=not args.no_progress)
    with SQLiteStore(spec.store.path) as store:
        records = store.get_results(outcome.job_id)
    first = next(iter(suite_objective(args) or {}), None)  # with a suite, the table shows its first task
    chosen = [record for record in records if first is None or record.task == first]
    results = {record.estimator: ShapleyResult.from_json(record.result_json) for record in chosen}
    shapley = results[SHAPLEY_LABEL]
    rankings = [*estimated_rankings(results, args.granularity, model_fingerprint, outcome.job_id), *static]
    RankingSet(rankings=tuple(rankings)).save(out_path)
    print(format_table(rankings, shapley))
    task = shapley.task_names[0]
    print(f"v(all players) = {shapley.v_full[0]:.4f}, v(none) = {shapley.v_empty[0]:.4f} ({task})")
    if outcome.plans:
        print(format_plans([done.plan for done in outcome.plans], shapley.v_full[0]))
    print(f"rankings written to {out_path}; values cached in {spec.store.path}")
    print(json.dumps(outcome.summary() | {"rankings": str(out_path)}))
    return 0


def player_count(args: argparse.Namespace) -> int:
    """The number of players of the model at the granularity of ``args`` (the model is loaded once here)."""
    from shapley_svc.model.loading import load_model
    from shapley_svc.model.masked import MaskedModel

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    return MaskedModel(loaded.model, loaded.layout, args.granularity).n_players


def static_rankings(args: argparse.Namespace) -> tuple[list[Any], str, int]:
    """The static metrics' rankings on the task's windows, the model fingerprint and the number of players.

    The model is loaded here first, so the demo's one-time conversion happens once, before any worker starts.
    """
    from shapley_svc.metrics import static_metrics
    from shapley_svc.model.loading import load_model
    from shapley_svc.model.masked import MaskedModel
    from shapley_svc.values import make_value_fn

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    masked = MaskedModel(loaded.model, loaded.layout, args.granularity)
    task = lm_task(args)
    static = static_metrics(masked, make_value_fn(task["name"], task["params"]).prepare(loaded.tokenizer))
    return static.rankings(loaded.fingerprint), loaded.fingerprint, masked.n_players


def estimated_rankings(results: dict[str, Any], granularity: str, model_fingerprint: str, job_id: str) -> list[Any]:
    """The Shapley and leave-one-out rankings of the job's results."""
    from shapley_svc.ranking import Ranking

    shapley, loo = results[SHAPLEY_LABEL], results["leave_one_out"]
    task = shapley.task_names[0]
    return [
        Ranking(
            players=shapley.player_names,
            granularity=granularity,
            scores=shapley.values[0].tolist(),
            stderr=shapley.stderr[0].tolist(),
            method=f"shapley:{shapley.estimator}",
            task=task,
            model_fingerprint=model_fingerprint,
            metadata={"evaluations": shapley.evaluations_used, "job_id": job_id},
        ),
        Ranking(
            players=loo.player_names,
            granularity=granularity,
            scores=loo.values[0].tolist(),
            method="leave_one_out",
            task=task,
            model_fingerprint=model_fingerprint,
            metadata={"job_id": job_id},
        ),
    ]


def format_plans(plans: list[Any], full_value: float) -> str:
    """The recommended plans: players removed, the loss on the calibration windows, and on held-out windows
    against the full model with its 95% interval."""
    lines = ["recommended plans (remove these; loss change: calibration, held-out [95% interval] over windows):"]
    for plan in plans:
        change = f"{full_value - plan.value:+.4f}"
        for check in plan.held_out:
            change += f", held-out {-check.difference:+.4f} [{-check.high:+.4f}, {-check.low:+.4f}] over {check.items}"
        reads = f"{plan.evaluations_used} reads, {plan.evaluations_computed} computed"
        lines.append(f"  k={plan.k}: {', '.join(plan.removed)}  ({change}; {reads})")
    return "\n".join(lines)


def format_table(rankings: list[Any], shapley: Any) -> str:
    """Players least important first by Shapley value, with stderr, leave-one-out and the static metrics."""
    header = [
        "player",
        "shapley",
        "+-stderr",
        *(ranking.method.removeprefix("shapley:")[:14] for ranking in rankings[1:]),
    ]
    order = sorted(range(shapley.n_players), key=lambda index: shapley.values[0, index])
    rows = [
        [
            shapley.player_names[index],
            f"{shapley.values[0, index]:+.4f}",
            f"{shapley.stderr[0, index]:.4f}",
            *(f"{ranking.scores[index]:+.4f}" for ranking in rankings[1:]),
        ]
        for index in order
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(lines)
