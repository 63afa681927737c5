"""`shapley-svc prune`: remove players chosen from a ranking file or an explicit list, save, report the cost.

Examples::

    shapley-svc prune --model demo --blocks 27,28 --out pruned/
    shapley-svc prune --model demo --ranking ranking.json --method leave_one_out --count 4 --protect-last 1 \\
        --recovery bias --out pruned/ --push-to-hub my-user/smollm2-pruned

The pruned model is judged on LM-loss windows disjoint from those used for calibration (and, by default,
from the first 4 windows a ranking from ``shapley-svc run`` is estimated on); the summary says which. The
folder gets a model card (README.md); ``--push-to-hub REPO`` uploads the folder when the hub is reachable.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

DEFAULT_CALIBRATION = (4, 4)
DEFAULT_JUDGE = (8, 8)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]  # argparse's private type
    """Add the ``prune`` subcommand."""
    parser = subparsers.add_parser(
        "prune",
        help="remove blocks or sublayers and save a checkpoint that loads in plain transformers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="demo", help="'demo', a local checkpoint folder or a hub id (default demo)")
    parser.add_argument("--out", required=True, type=Path, help="new folder for the pruned checkpoint and summary")
    parser.add_argument("--dtype", default="float32", help="bfloat16, float32, float16 or auto (default float32)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    _selection_flags(parser.add_argument_group("what to remove: a ranking file, or explicit lists"))
    _evaluation_flags(parser)
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="upload the pruned folder, model card included, to this hub model repository (e.g. user/name)",
    )
    parser.set_defaults(handler=run)


def _selection_flags(chosen: argparse._ArgumentGroup) -> None:
    """What to remove: a ranking file with the selection rules, or explicit lists."""
    chosen.add_argument("--ranking", type=Path, help="ranking JSON (the shapley-svc Ranking format)")
    chosen.add_argument(
        "--plan",
        help="exactly a plan's players go: a plan JSON file from `shapley-svc plan`, or JOB_ID:NAME, a plan a job "
        "stored in --store (`shapley-svc job` / `run`; NAME as in the job's summary, e.g. block-block-4)",
    )
    chosen.add_argument(
        "--store", type=Path, default=None, help="results store of --plan JOB_ID:NAME (default runs/shapley-svc.sqlite)"
    )
    chosen.add_argument("--method", help="which ranking of a ranking set to use (e.g. leave_one_out)")
    chosen.add_argument("--task", help="with --method: the task of the ranking to use, when several")
    chosen.add_argument(
        "--target",
        default=None,
        choices=("block", "attn", "mlp", "sublayer"),
        help="which players of the ranking may go (default: block or sublayer, as ranked)",
    )
    chosen.add_argument("--count", type=int, help="remove this many players")
    chosen.add_argument("--fraction", type=float, help="remove floor(F * players of the target)")
    chosen.add_argument("--protect-first", type=int, default=0, help="never touch the first N layers")
    chosen.add_argument("--protect-last", type=int, default=0, help="never touch the last N layers")
    chosen.add_argument("--blocks", type=_indices, default=(), help="remove these blocks, e.g. 27,28")
    chosen.add_argument("--attn", type=_indices, default=(), help="remove the attention of these layers")
    chosen.add_argument("--mlp", type=_indices, default=(), help="remove the MLP of these layers")


def _evaluation_flags(parser: argparse.ArgumentParser) -> None:
    """Recovery, and the LM-loss data it is calibrated and the pruned model judged on."""
    recovery = parser.add_argument_group("recovery")
    recovery.add_argument(
        "--recovery",
        default="none",
        choices=("none", "bias", "lowrank"),
        help="emulate each removed player by a mean bias or a low-rank linear map",
    )
    recovery.add_argument("--rank", type=int, default=8, help="rank of the lowrank emulators (default 8)")
    data = parser.add_argument_group("evaluation data (LM loss, capped, no BOS)")
    data.add_argument("--corpus", default="wikitext2", help="wikitext2 or lambada (default wikitext2)")
    data.add_argument("--data-dir", type=Path, help="shared data folder (default ../shared/data)")
    data.add_argument("--window", type=int, default=128, help="tokens per window (default 128)")
    data.add_argument(
        "--calibration-windows",
        type=_window_range,
        default=DEFAULT_CALIBRATION,
        metavar="FIRST:COUNT",
        help="windows fitting recovery (default 4:4)",
    )
    data.add_argument(
        "--judge-windows",
        type=_window_range,
        default=DEFAULT_JUDGE,
        metavar="FIRST:COUNT",
        help="held-out windows the pruned model is judged on (default 8:8)",
    )
    data.add_argument(
        "--ranking-windows",
        type=_window_range,
        default=None,
        metavar="FIRST:COUNT",
        help="windows the ranking was estimated on, to check they are disjoint (e.g. 0:4)",
    )
    data.add_argument("--latency-repeats", type=int, default=5, help="interleaved timing repeats; 0 skips timing")


def chosen_plan(text: str | None, store: Path | None) -> Any:
    """``--plan``: an existing file's path, or the plan ``NAME`` job ``JOB_ID`` stored (``JOB_ID:NAME``)."""
    from shapley_svc.cli.game_options import DEFAULT_OUT_DIR
    from shapley_svc.errors import ConfigError
    from shapley_svc.planning.plan import RemovalPlan
    from shapley_svc.store.sqlite import SQLiteStore

    if text is None or Path(text).is_file() or ":" not in text:
        return None if text is None else Path(text)
    job_id, _, name = text.partition(":")
    path = store or DEFAULT_OUT_DIR / "shapley-svc.sqlite"
    with SQLiteStore(path) as opened:
        plans = {record.name: record for record in opened.get_plans(job_id)}
    if name not in plans:
        raise ConfigError(f"job {job_id} in {path} has no plan {name!r}; its plans: {sorted(plans) or 'none'}")
    plan = RemovalPlan.from_json(plans[name].plan_json)
    return plan.with_provenance(plan.provenance | {"job_id": job_id, "plan": name})


def _indices(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 27,28, got {text!r}") from None


def _window_range(text: str) -> tuple[int, int]:
    try:
        first, count = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:COUNT like 8:8, got {text!r}") from None
    if first < 0 or count < 1:
        raise argparse.ArgumentTypeError(f"FIRST must be >= 0 and COUNT >= 1, got {text!r}")
    return first, count


def run(args: argparse.Namespace) -> int:
    """Prune as the flags say (:func:`shapley_svc.pruning.workflow.prune`) and print the summary."""
    # Imported here so that `shapley-svc --help` stays fast.
    from shapley_svc.pruning.workflow import PruneRequest, prune

    options = {field.name: getattr(args, field.name) for field in fields(PruneRequest)}
    report = prune(PruneRequest(**options | {"plan": chosen_plan(args.plan, args.store)}))
    print(report.summary.format())
    print(
        f"saved to {report.out} with its model card (plain transformers: AutoModelForCausalLM.from_pretrained; "
        "skip form: shapley_svc.pruning.load_skipping)"
    )
    if report.hub_url is not None:
        print(f"pushed to {report.hub_url}")
    return 0
