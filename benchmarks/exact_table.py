"""Exact game table of a model's players in a layer range, in the format of ``../shared/games`` (its README).

Every coalition of the chosen players (the model's other players always present) is scored with the
capped language-modelling loss, then the exact Shapley values come from the whole table. More ground truth
for ``benchmarks/estimators.py --games-dir``: the shipped table is one game; these are others (other layers,
sublayer players) of the same model. 2^n coalitions, so n <= 16 (how long 12 players took: benchmarks/RESULTS.md).
Prints one JSON object on its last line.
Usage: ``python benchmarks/exact_table.py --granularity sublayer --layers 24-29 --windows 2 --out T.npz``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shapley_svc.coalitions import layer_order
from shapley_svc.estimators.exact import all_coalitions, shapley_from_table
from shapley_svc.model.loading import load_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values.base import ModelGame
from shapley_svc.values.lm_loss import LanguageModelingLoss

MAX_PLAYERS = 16
CHUNK = 128  # coalitions per engine call, in layer order so that neighbours share hidden-state prefixes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="'demo' or a local checkpoint folder")
    parser.add_argument("--granularity", choices=("block", "sublayer"), default="block")
    parser.add_argument("--layers", required=True, help="first-last layer whose players play, e.g. 18-29")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--windows", type=int, default=2, help="WikiText-2 test windows per coalition")
    parser.add_argument("--window", type=int, default=128, help="tokens per window")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write (its stem names the game)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    first, last = (int(layer) for layer in args.layers.split("-"))
    loaded = load_model(args.model, dtype="float32", device="cpu")
    masked = MaskedModel(loaded.model, loaded.layout, args.granularity)
    playing = [index for index, player in enumerate(masked.players) if first <= player.layer <= last]
    if not 1 <= len(playing) <= MAX_PLAYERS:
        parser.error(f"layers {args.layers} give {len(playing)} players; 1 to {MAX_PLAYERS} fit a table")
    value_fn = LanguageModelingLoss(
        corpus="wikitext2", data_dir=args.data_dir, window=args.window, windows=args.windows
    )
    game = ModelGame(masked, value_fn, loaded.tokenizer, loaded.fingerprint)

    coalitions = all_coalitions(len(playing))
    masks = np.ones((len(coalitions), masked.n_players), dtype=bool)
    masks[:, playing] = coalitions
    order = layer_order(masks)
    values = np.empty(len(coalitions))
    started = time.perf_counter()
    with tqdm(total=len(order), desc="coalitions", unit="coal") as bar:
        for start in range(0, len(order), CHUNK):
            rows = order[start : start + CHUNK]
            values[rows] = game(masks[rows])[:, 0]
            bar.update(len(rows))
    seconds = time.perf_counter() - started
    shapley = shapley_from_table(values[:, None])[0]

    names = [masked.player_names[index] for index in playing]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    description = (
        f"{args.model} fp32, players {names} (every other {args.granularity} player present); value = minus the "
        f"mean capped next-token loss on {args.windows} x {args.window} WikiText-2 test tokens"
    )
    np.savez(
        args.out,
        coalitions=coalitions,
        values=values,
        shapley=shapley,
        player_names=np.array(names),
        description=np.array(description),
    )
    summary = {
        "table": str(args.out),
        "players": names,
        "v_full": float(values[-1]),
        "v_empty": float(values[0]),
        "shapley": [round(float(value), 6) for value in shapley],
        "efficiency_gap": float(shapley.sum() - (values[-1] - values[0])),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
