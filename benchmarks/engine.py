"""Engine benchmark: masked evaluation against the plain transformers forward, on the same tokens.

Every ratio compares the same 8 x 128 WikiText-2 tokens, dtype and thread count, after warm-up, as the
median of interleaved repeats. Baselines are the plain transformers forward. Decoder-layer forwards are
counted by hooks on the transformers decoder layers, not by the engine. The last line is one JSON object.

    python benchmarks/engine.py --dtype bfloat16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shapley_svc.data.corpus import default_data_dir, load_corpus, token_windows
from shapley_svc.engine import BatchedEngine, TokenBatch
from shapley_svc.model.layouts import resolve
from shapley_svc.model.loading import LoadedModel, load_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values.base import ModelGame
from shapley_svc.values.lm_loss import LanguageModelingLoss

log = logging.getLogger("benchmarks.engine")


def permutation_walk_masks(n_players: int, walks: int, seed: int) -> np.ndarray:
    """bool[walks * n, n]: the coalitions a permutation walk visits, after each player joins."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(walks):
        mask = np.zeros(n_players, dtype=bool)
        for player in rng.permutation(n_players):
            mask[player] = True
            masks.append(mask.copy())
    return np.array(masks)


def interleaved_medians(
    candidates: dict[str, Callable[[], object]], repeats: int, warm_up: bool = True
) -> dict[str, float]:
    """Median wall time of each candidate, run in turn ``repeats`` times, after one warm-up each if asked.

    The walk comparisons skip the warm-up: each candidate is hundreds of forwards of kernels the forward-pass
    section has already warmed, and one more pass of each would double the longest part of the run.
    """
    if warm_up:
        for run in candidates.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            log.info("%s: %.2f s", name, times[name][-1])
    return {name: statistics.median(values) for name, values in times.items()}


class DecoderLayerCounter:
    """Counts decoder-layer forwards that do work, by forward hooks on the transformers layers' MLP modules.

    A hook on the decoder layer itself would also count the layers a mask skips (their calls return the input
    untouched); under block masks a layer computes exactly when its MLP runs.
    """

    def __init__(self, masked: MaskedModel):
        self.calls = 0
        self.handles = [resolve(layer, masked.layout.mlp).register_forward_hook(self.count) for layer in masked.layers]

    def count(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def benchmark(loaded: LoadedModel, ids: torch.Tensor, walks: int, repeats: int, seed: int) -> dict[str, float]:
    model = loaded.model
    masked = MaskedModel(model, loaded.layout, "block")
    engine = BatchedEngine(masked)
    batch = TokenBatch(ids)
    n = masked.n_players
    rng = np.random.default_rng(seed)
    results: dict[str, float] = {}

    def plain_forward() -> object:
        with torch.inference_mode():
            return model(ids).logits

    def engine_full() -> object:
        return engine.evaluate(masked.full_mask()[None], batch, readout=masked.head)

    times = interleaved_medians({"plain": plain_forward, "engine_all_present": engine_full}, repeats)
    results["plain_forward_s"] = times["plain"]
    results["engine_all_present_s"] = times["engine_all_present"]
    results["all_present_over_plain"] = times["engine_all_present"] / times["plain"]

    def stack_under(mask: np.ndarray) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode(), masked.active(mask):
                return model.model(ids).last_hidden_state

        return run

    def head_only() -> object:
        with torch.inference_mode():
            return model.lm_head(torch.zeros((*ids.shape, model.config.hidden_size), dtype=model.dtype))

    candidates = {"full": stack_under(masked.full_mask()), "head": head_only}
    for skipped in (5, 10, 15):
        mask = masked.full_mask()
        mask[rng.choice(n, size=skipped, replace=False)] = False
        candidates[f"skip{skipped}"] = stack_under(mask)
    times = interleaved_medians(candidates, repeats)
    results["decoder_stack_full_s"] = times["full"]
    results["head_s"] = times["head"]
    for skipped in (5, 10, 15):
        results[f"skip{skipped}_over_full"] = times[f"skip{skipped}"] / times["full"]
        results[f"skip{skipped}_goal"] = (n - skipped) / n + 0.05

    if walks == 0:  # the forward-pass ratios only: the walk comparisons take far longer (RESULTS.md)
        return results
    masks = permutation_walk_masks(n, walks, seed)

    def engine_stack() -> object:
        return engine.evaluate(masks, batch, readout=lambda hidden: None)

    def alone_stack() -> object:
        return [stack_under(mask)() for mask in masks]

    counter = DecoderLayerCounter(masked)
    layer_forwards: dict[str, int] = {}

    def counted(name: str, run: Callable[[], object]) -> Callable[[], object]:
        def run_and_count() -> object:
            counter.calls = 0
            output = run()
            layer_forwards[name] = counter.calls
            return output

        return run_and_count

    try:
        candidates = {"engine": counted("engine", engine_stack), "alone": counted("alone", alone_stack)}
        times = interleaved_medians(candidates, max(1, repeats // 2), warm_up=False)
    finally:
        counter.close()
    results["engine_layer_forwards"] = layer_forwards["engine"]
    results["alone_layer_forwards"] = layer_forwards["alone"]
    results["engine_layer_ratio"] = layer_forwards["engine"] / layer_forwards["alone"]
    results["engine_stack_s"] = times["engine"]
    results["alone_stack_s"] = times["alone"]
    results["engine_wall_ratio"] = times["engine"] / times["alone"]

    value_fn = LanguageModelingLoss(corpus="wikitext2", window=ids.shape[1], windows=len(ids))
    game = ModelGame(masked, value_fn, loaded.tokenizer, loaded.fingerprint)
    cap = float(np.log(len(loaded.tokenizer)))

    def alone_loss() -> object:
        values = []
        for mask in masks:
            with torch.inference_mode(), masked.active(mask):
                logits = model(ids).logits[:, :-1].float()
            losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
            values.append(-float(losses.clamp(max=cap).mean()))
        return values

    times = interleaved_medians(
        {"engine": lambda: game(masks), "alone": alone_loss}, max(1, repeats // 2), warm_up=False
    )
    results["engine_end_to_end_s"] = times["engine"]
    results["alone_end_to_end_s"] = times["alone"]
    results["engine_end_to_end_ratio"] = times["engine"] / times["alone"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="model id or path (default: the demo model)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="windows of WikiText-2 (default 8)")
    parser.add_argument("--window", type=int, default=128, help="tokens per window (default 128)")
    parser.add_argument("--walks", type=int, default=8, help="permutation walks for the engine ratios (0: skip them)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the shared data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    text = load_corpus("wikitext2", args.data_dir or default_data_dir())
    ids = token_windows(loaded.tokenizer, text, window=args.window, count=args.batch).to(args.device)
    results = benchmark(loaded, ids, args.walks, args.repeats, args.seed)
    results.update(model=args.model, dtype=args.dtype, threads=args.threads, tokens=f"{args.batch}x{args.window}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
