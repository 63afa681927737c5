"""Pruning study on the demo model (SmolLM2-135M, 30 blocks): rankings from one split, judged on another.

1. Rankings on WikiText-2 windows 0-3 (4 x 128 tokens, capped LM loss, no BOS): the three static metrics
   (block influence, angular distance, relative update norm) and leave-one-out, per block and per sublayer;
   plus iterative (re-scored) leave-one-out for blocks.
2. Pruning curves judged on held-out windows 8-15: blocks removed along each block ranking, and
   attention-only vs MLP-only sublayers removed along the sublayer rankings; parameters and KV bytes per
   token at every point, and the measured forward latency of 8 blocks / 8 attentions / 8 MLPs removed.
3. Recovery after removing early blocks: bias and low-rank emulators fitted on windows 4-7, held-out
   loss on windows 8-15 before and after.

Prints one JSON object on its last line; writes curves (JSON, PNG) under ``--out``.
Usage: ``python benchmarks/pruning_study.py [--dtype bfloat16] [--threads 1] [--out /tmp/pruning_study]``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shapley_svc.metrics.loo import leave_one_out
from shapley_svc.metrics.static import METHODS, static_metrics
from shapley_svc.model.loading import LoadedModel, load_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.pruning.apply import prune_model
from shapley_svc.pruning.curves import describe_split, plot_curves, pruning_curves, removal_order
from shapley_svc.pruning.recovery import attached, calibrate_scales, evaluate_value, fit
from shapley_svc.pruning.savings import Footprint, footprint, forward_call, interleaved_median
from shapley_svc.pruning.select import (
    PruningPlan,
    conditional_leave_one_out,
    iterative_order,
    parse_player,
    ranking_scores,
    select,
)
from shapley_svc.ranking import Ranking
from shapley_svc.values.base import ModelGame
from shapley_svc.values.lm_loss import LanguageModelingLoss

RANKING_WINDOWS, CALIBRATION_WINDOWS, JUDGE_WINDOWS = (0, 4), (4, 4), (8, 8)
WINDOW = 128
MAX_BLOCKS, MAX_ATTN, MAX_MLP, ITERATIVE = 8, 12, 8, 4
EARLY_BLOCKS = (3, 4, 5)
logger = logging.getLogger("pruning_study")


def lm_loss(windows: tuple[int, int]) -> LanguageModelingLoss:
    return LanguageModelingLoss(window=WINDOW, first_window=windows[0], windows=windows[1])


def rankings_for(loaded: LoadedModel, granularity: str) -> dict[str, Ranking]:
    """Static metrics and leave-one-out at ``granularity`` on the ranking windows."""
    masked = MaskedModel(loaded.model, loaded.layout, granularity)
    value_fn = lm_loss(RANKING_WINDOWS)
    game = ModelGame(masked, value_fn, loaded.tokenizer, loaded.fingerprint)
    metadata = {
        "corpus": value_fn.corpus,
        "window": WINDOW,
        "first_window": RANKING_WINDOWS[0],
        "windows": RANKING_WINDOWS[1],
    }
    static = static_metrics(masked, [b.to(loaded.device) for b in value_fn.prepare(loaded.tokenizer)])
    found = {r.method: r for r in static.rankings(loaded.fingerprint)}
    loo = leave_one_out(game).rankings(granularity, loaded.fingerprint, game.fingerprint(), metadata)[0]
    found[loo.method] = loo
    return found


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=1)  # two contend on 2 shared cores (RESULTS.md)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pruning_study"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logger.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    loaded = load_model("demo", dtype=args.dtype)
    model, layout = loaded.model, loaded.layout
    layers = 30
    results: dict[str, object] = {"dtype": args.dtype, "threads": args.threads}

    # 1. Rankings on windows 0-3.
    block_rankings = rankings_for(loaded, "block")
    sublayer_rankings = rankings_for(loaded, "sublayer")
    loo_scores = np.array(block_rankings["leave_one_out"].scores)
    results["spearman_vs_loo_blocks"] = {
        m: round(spearman(np.array(block_rankings[m].scores), loo_scores), 3) for m in METHODS
    }
    logger.info("static metrics and leave-one-out done after %.0f s", time.perf_counter() - started)
    ranking_game = ModelGame(
        MaskedModel(model, layout, "block"), lm_loss(RANKING_WINDOWS), loaded.tokenizer, loaded.fingerprint
    )
    iterative = iterative_order(conditional_leave_one_out(ranking_game), layers, count=ITERATIVE)
    one_shot = select(block_rankings["leave_one_out"], layers, count=ITERATIVE)
    results["iterative_loo_blocks"] = [p.name for p in iterative]
    results["one_shot_loo_blocks"] = list(one_shot.names)
    results["ranking_seconds"] = round(time.perf_counter() - started, 1)
    logger.info("rankings done after %.0f s", time.perf_counter() - started)

    # 2. Curves judged on windows 8-15.
    judge = lm_loss(JUDGE_WINDOWS)
    splits = {
        "ranking": describe_split(lm_loss(RANKING_WINDOWS)).description,
        "judge": describe_split(judge).description,
    }

    def cost(plan: PruningPlan) -> Footprint:
        return footprint(model, layout, plan)

    block_orders = {m: removal_order(ranking_scores(r), layers) for m, r in block_rankings.items()}
    block_game = ModelGame(MaskedModel(model, layout, "block"), judge, loaded.tokenizer, loaded.fingerprint)
    block_curves = pruning_curves(
        {m: o[:MAX_BLOCKS] for m, o in block_orders.items()},
        {"wikitext2": block_game},
        layers,
        max_removed=MAX_BLOCKS,
        cost=cost,
        splits=splits,
    )
    block_orders["leave_one_out_iterative"] = iterative
    iterative_curve = pruning_curves(
        {"leave_one_out_iterative": iterative}, {"wikitext2": block_game}, layers, max_removed=ITERATIVE, cost=cost
    )
    block_curves.series += iterative_curve.series
    sublayer_game = ModelGame(MaskedModel(model, layout, "sublayer"), judge, loaded.tokenizer, loaded.fingerprint)
    sublayer_orders = {}
    for method in ("leave_one_out", "block_influence"):
        scores = ranking_scores(sublayer_rankings[method])
        sublayer_orders[f"{method}/attn"] = removal_order(scores, layers, target="attn")[:MAX_ATTN]
        sublayer_orders[f"{method}/mlp"] = removal_order(scores, layers, target="mlp")[:MAX_MLP]
    sublayer_curves = pruning_curves(
        {k: v for k, v in sublayer_orders.items() if k.endswith("attn")},
        {"wikitext2": sublayer_game},
        layers,
        max_removed=MAX_ATTN,
        cost=cost,
        splits=splits,
    )
    mlp_curves = pruning_curves(
        {k: v for k, v in sublayer_orders.items() if k.endswith("mlp")},
        {"wikitext2": sublayer_game},
        layers,
        max_removed=MAX_MLP,
        cost=cost,
        splits=splits,
    )
    sublayer_curves.series += mlp_curves.series
    block_curves.save(args.out / "block_curves.json")
    sublayer_curves.save(args.out / "sublayer_curves.json")
    plot_curves(block_curves, args.out / "block_curves.png")
    plot_curves(sublayer_curves, args.out / "sublayer_curves.png")

    def losses(series: list[dict]) -> dict[str, list[float]]:
        return {s["ranking"]: [round(-v, 3) for v in s["values"]] for s in series}

    results["judge_loss_blocks_removed"] = losses(block_curves.series)
    results["judge_loss_sublayers_removed"] = losses(sublayer_curves.series)
    results["removal_orders"] = {
        **{k: [p.name for p in v[:MAX_BLOCKS]] for k, v in block_orders.items()},
        **{k: [p.name for p in v] for k, v in sublayer_orders.items()},
    }
    eight = {
        "blocks": PruningPlan.from_players(block_orders["leave_one_out"][:8], layers),
        "attn": PruningPlan.from_players(sublayer_orders["leave_one_out/attn"][:8], layers),
        "mlp": PruningPlan.from_players(sublayer_orders["leave_one_out/mlp"][:8], layers),
    }
    results["footprint_8_removed"] = {
        "full": footprint(model, layout).to_dict(),
        **{k: cost(p).to_dict() for k, p in eight.items()},
    }
    tokens = judge.prepare(loaded.tokenizer)[0].input_ids[:4]
    skip_masked = MaskedModel(model, layout, "sublayer")

    def skipping(plan: PruningPlan) -> Callable[[], object]:
        run = forward_call(model, tokens)

        def timed() -> object:
            with skip_masked.active(plan.present.reshape(-1)):
                return run()

        return timed

    latency = interleaved_median(
        {"full": forward_call(model, tokens), **{k: skipping(p) for k, p in eight.items()}}, repeats=3
    )
    results["latency_ms_4x128_8_removed"] = {k: round(v * 1e3, 1) for k, v in latency.items()}
    results["curves_seconds"] = round(time.perf_counter() - started, 1)
    logger.info("curves done after %.0f s", time.perf_counter() - started)

    # 3. Recovery after removing early blocks.
    plan = PruningPlan.from_players((parse_player(f"layer{i}.block") for i in EARLY_BLOCKS), layers)
    calibration = lm_loss(CALIBRATION_WINDOWS)
    calibration_batches = calibration.prepare(loaded.tokenizer)
    judge_batches = judge.prepare(loaded.tokenizer)
    pruned = prune_model(model, layout, plan)

    def loss_on(value_fn: LanguageModelingLoss, batches: list, candidate: torch.nn.Module) -> float:
        return -float(evaluate_value(candidate, layout, value_fn, batches)[0])

    recovery = {
        "removed": list(plan.names),
        "calibration_split": describe_split(calibration).description,
        "judge_split": describe_split(judge).description,
        "judge_full": loss_on(judge, judge_batches, model),
        "judge_pruned": loss_on(judge, judge_batches, pruned),
    }
    for kind, rank in (("bias", 0), ("lowrank", 16)):
        adapters = fit(model, layout, plan, calibration_batches, kind=kind, rank=max(rank, 1))
        calibrated = calibrate_scales(pruned, layout, adapters, lambda m: loss_on(calibration, calibration_batches, m))
        with attached(pruned, layout, adapters):
            recovered = loss_on(judge, judge_batches, pruned)
        recovery[kind] = {
            "calibration_before": calibrated.loss_without,
            "calibration_after": calibrated.loss_with,
            "judge_after": recovered,
            "scales": calibrated.scales,
        }
    results["recovery_early_blocks"] = recovery
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["perplexity_note"] = "losses are capped mean next-token CE in nats; perplexity = exp(loss)"
    print(json.dumps(results, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))
    if not math.isfinite(recovery["judge_pruned"]):
        raise SystemExit("the pruned model's loss is not finite")


if __name__ == "__main__":
    main()
