"""`shapley-svc prune`: remove players chosen from a ranking file or an explicit list, save, report the cost.

Examples::

    shapley-svc prune --model demo --blocks 27,28 --out pruned/
    shapley-svc prune --model demo --ranking ranking.json --method leave_one_out --count 4 --protect-last 1 \\
        --recovery bias --out pruned/

The pruned model is judged on LM-loss windows disjoint from those used for calibration (and, by default,
from the first 4 windows a ranking from ``shapley-svc run`` is estimated on); the summary says which.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shapley_svc.errors import ConfigError

if TYPE_CHECKING:
    from shapley_svc.pruning.curves import Split
    from shapley_svc.pruning.select import PruningPlan
    from shapley_svc.ranking import Ranking
    from shapley_svc.values.lm_loss import LanguageModelingLoss

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
    chosen = parser.add_argument_group("what to remove: a ranking file, or explicit lists")
    chosen.add_argument("--ranking", type=Path, help="ranking JSON (the shapley-svc Ranking format)")
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
    parser.set_defaults(handler=run)


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
    """Select, prune, recover, measure, save and print the summary."""
    # Heavy imports here so that `shapley-svc --help` stays fast.
    from shapley_svc.model.layouts import resolve
    from shapley_svc.model.loading import load_model
    from shapley_svc.model.masked import MaskedModel
    from shapley_svc.pruning import apply, curves, recovery, savings
    from shapley_svc.values.lm_loss import LanguageModelingLoss

    explicit = bool(args.blocks or args.attn or args.mlp)
    if explicit == (args.ranking is not None):
        raise ConfigError("give either --ranking FILE (with --count or --fraction) or --blocks/--attn/--mlp lists")
    if explicit and (args.count is not None or args.fraction is not None or args.method or args.target):
        raise ConfigError(
            "--count/--fraction/--method/--target select from a --ranking; drop them with --blocks/--attn/--mlp"
        )
    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"output folder {args.out} exists and is not empty: choose a new --out folder")
    ranking = None if explicit else _load_ranking(args.ranking, args.method, args.task)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    num_layers = len(resolve(loaded.model, loaded.layout.layers))
    if ranking is None:
        plan = _explicit_plan(args, num_layers)
        source, split = "explicit list", curves.Split("-")
    else:
        plan, source, split = _ranking_plan(args, ranking, num_layers)
        if ranking.model_fingerprint != loaded.fingerprint:
            source += " [its model fingerprint differs from this model's: other weights or --dtype?]"
    if args.ranking_windows is not None:
        split = _lm_split(args, args.ranking_windows, LanguageModelingLoss)
    if not plan.removed:
        raise ConfigError("nothing to remove: raise --count/--fraction or list --blocks/--attn/--mlp")

    judge = _lm_loss(args, args.judge_windows, LanguageModelingLoss)
    judge_batches = [batch.to(loaded.device) for batch in judge.prepare(loaded.tokenizer)]
    pruned = apply.prune_model(loaded.model, loaded.layout, plan)
    loss_before = -float(recovery.evaluate_value(loaded.model, loaded.layout, judge, judge_batches)[0])
    loss_after = -float(recovery.evaluate_value(pruned, loaded.layout, judge, judge_batches)[0])

    out = apply.save_pruned(
        loaded,
        plan,
        args.out,
        pruned=pruned,
        provenance={
            "ranking": source,
            "ranking_split": split.description,
            "judge_split": curves.describe_split(judge).description,
        },
    )
    summary_kwargs: dict[str, Any] = {}
    if args.recovery != "none":
        calibration_fn = _lm_loss(args, args.calibration_windows, LanguageModelingLoss)
        calibration_batches = [b.to(loaded.device) for b in calibration_fn.prepare(loaded.tokenizer)]
        adapters = recovery.fit(
            loaded.model, loaded.layout, plan, calibration_batches, kind=args.recovery, rank=args.rank
        )
        calibration = recovery.calibrate_scales(
            pruned,
            loaded.layout,
            adapters,
            lambda model: -float(recovery.evaluate_value(model, loaded.layout, calibration_fn, calibration_batches)[0]),
        )
        adapters.save(out / recovery.RECOVERY_FILE)
        with recovery.attached(pruned, loaded.layout, adapters):
            recovered = -float(recovery.evaluate_value(pruned, loaded.layout, judge, judge_batches)[0])
        summary_kwargs = {
            "judge_recovered": recovered,
            "recovery": args.recovery,
            "recovery_scales": calibration.scales,
            "calibration_split": curves.describe_split(calibration_fn),
            "calibration_before": calibration.loss_without,
            "calibration_after": calibration.loss_with,
        }

    latency_before = latency_after = None
    if args.latency_repeats > 0:
        tokens = judge_batches[0].input_ids[:4]
        pruned_masked = MaskedModel(pruned, loaded.layout, "sublayer")
        skip_mask = np.array([p not in set(apply.skipped_in_pruned(plan)) for p in pruned_masked.players])
        run_pruned = savings.forward_call(pruned, tokens)

        def run_skip_form() -> object:
            with pruned_masked.active(skip_mask):
                return run_pruned()

        times = savings.interleaved_median(
            {"before": savings.forward_call(loaded.model, tokens), "after": run_skip_form},
            repeats=args.latency_repeats,
        )
        latency_before, latency_after = times["before"], times["after"]

    summary = curves.PruningSummary(
        model=loaded.name,
        removed=list(plan.names),
        ranking_source=source,
        ranking_split=split,
        judge_split=curves.describe_split(judge),
        before=savings.footprint(loaded.model, loaded.layout, None, latency_before),
        after=savings.footprint(loaded.model, loaded.layout, plan, latency_after),
        judge_task=f"{args.corpus} loss (nats)",
        judge_before=loss_before,
        judge_after=loss_after,
        **summary_kwargs,
    )
    (out / "pruning-summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str) + "\n")
    print(summary.format())
    print(
        f"saved to {out} (plain transformers: AutoModelForCausalLM.from_pretrained; skip form: "
        "shapley_svc.pruning.load_skipping)"
    )
    return 0


def _explicit_plan(args: argparse.Namespace, num_layers: int) -> PruningPlan:
    from shapley_svc.model.masked import Player
    from shapley_svc.pruning.select import PruningPlan

    players = [Player(i, "block") for i in args.blocks]
    players += [Player(i, "attn") for i in args.attn] + [Player(i, "mlp") for i in args.mlp]
    return PruningPlan.from_players(players, num_layers)


def _ranking_plan(args: argparse.Namespace, ranking: Ranking, num_layers: int) -> tuple[PruningPlan, str, Split]:
    from shapley_svc.pruning.select import select

    target = args.target or ranking.granularity
    plan = select(
        ranking,
        num_layers,
        target=target,
        count=args.count,
        fraction=args.fraction,
        protect_first=args.protect_first,
        protect_last=args.protect_last,
    )
    source = f"{ranking.method}{'' if ranking.task is None else f' on {ranking.task}'} from {args.ranking}"
    return plan, source, ranking_split(ranking)


def ranking_split(ranking: Ranking) -> Split:
    """The split a ranking was estimated on, from its metadata (``corpus``, ``window``, ``first_window``,
    ``windows`` as written by LM-loss rankings, or a free-text ``split``)."""
    from shapley_svc.pruning.curves import Split

    meta = ranking.metadata
    keys = ("corpus", "window", "first_window", "windows")
    if all(key in meta for key in keys):
        first, last = int(meta["first_window"]), int(meta["first_window"]) + int(meta["windows"]) - 1
        corpus, window = str(meta["corpus"]), int(meta["window"])
        return Split(f"{corpus} windows {first}-{last} of {window} tokens", corpus, window, (first, last))
    if "split" in meta:
        return Split(str(meta["split"]))
    what = ranking.task or "static metrics"
    return Split(f"{what} (split not recorded in the ranking; state it with --ranking-windows)")


def _load_ranking(path: Path, method: str | None, task: str | None) -> Ranking:
    from shapley_svc.ranking import RankingSet

    rankings = RankingSet.load(path)
    if method is not None:
        return rankings.find(method, task)
    if len(rankings.rankings) != 1:
        available = ", ".join(sorted({r.method for r in rankings.rankings}))
        raise ConfigError(f"{path} holds {len(rankings.rankings)} rankings: pick one with --method ({available})")
    return rankings.rankings[0]


def _lm_loss(
    args: argparse.Namespace, windows: tuple[int, int], factory: type[LanguageModelingLoss]
) -> LanguageModelingLoss:
    first, count = windows
    return factory(corpus=args.corpus, data_dir=args.data_dir, window=args.window, windows=count, first_window=first)


def _lm_split(args: argparse.Namespace, windows: tuple[int, int], factory: type[LanguageModelingLoss]) -> Split:
    from shapley_svc.pruning.curves import describe_split

    return describe_split(_lm_loss(args, windows, factory))
