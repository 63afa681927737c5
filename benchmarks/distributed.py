"""Benchmark: what the Ray actor pool costs and how well the driver keeps actors busy.

- ``pool_over_inprocess``: seconds per evaluation through a 1-actor RayActorPool / in this process, demo
  model, the same chunks of coalitions (goal <= 1.05).
- ``two_over_one_actor``: throughput of 2 actors (1 torch thread each) / 1 actor, demo model (goal >= 1.7;
  needs two idle cores).
- ``simulated_busy_fraction``: the real driver pumps a real estimator (permutation, 30 players) to N actors
  that sleep the measured in-process seconds per evaluation for each coalition; the fraction of the run's
  wall time the actors are busy (actor-side seconds / (N x wall)), for N = 8, 16, 32 (goal >= 0.9 at 32).

The model measurements are interleaved (the three set-ups in turn, rotating which goes first) and their
medians taken, because the machine may be busy with other work. JSON on the last line.

    python benchmarks/distributed.py                   # demo model, 5 repeats, simulation 8/16/32 actors
    python benchmarks/distributed.py --repeats 5 --actors 32
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from shapley_svc.estimators import make_estimator
from shapley_svc.runner.estimation import EstimationRun
from shapley_svc.runner.evaluator import Control, Evaluator
from shapley_svc.runner.executors import (
    Chunk,
    Executor,
    GameInfo,
    GameWorker,
    InProcessExecutor,
    RayActorPool,
    WorkerSetup,
)
from shapley_svc.spec import ExecutorSpec, ModelSpec, TaskSpec
from shapley_svc.store import SQLiteStore
from shapley_svc.types import Coalitions, Values

logger = logging.getLogger("benchmarks.distributed")
SIMULATED_PLAYERS = 30


def drain(executor: Executor, game: str, coalitions: Coalitions, chunk_size: int) -> tuple[float, float]:
    """Wall seconds to evaluate ``coalitions`` in chunks through ``executor`` kept full, and the seconds the
    workers themselves spent evaluating (summed over chunks)."""
    chunks = [
        Chunk(index, game, coalitions[start : start + chunk_size])
        for index, start in enumerate(range(0, len(coalitions), chunk_size))
    ]
    started = time.perf_counter()
    waiting = list(chunks)
    done = 0
    compute = 0.0
    while done < len(chunks):
        while waiting and executor.in_flight < executor.capacity:
            executor.submit(waiting.pop(0))
        results = executor.wait(timeout=None)
        done += len(results)
        compute += sum(result.seconds for result in results)
    return time.perf_counter() - started, compute


def measure_model(args: argparse.Namespace) -> dict[str, object]:
    """Per-evaluation seconds in process, through 1 actor and through 2 actors; interleaved repeats."""
    task = TaskSpec(name="lm_loss", params={"corpus": "wikitext2", "window": args.window, "windows": args.windows})
    setup = WorkerSetup(ModelSpec(name="demo", dtype=args.dtype), ("block",), (task,), threads=1)
    local = InProcessExecutor(GameWorker.from_setup(setup))
    one = RayActorPool(setup, ExecutorSpec(kind="ray", num_workers=1, chunk_size=args.chunk_size))
    two = RayActorPool(setup, ExecutorSpec(kind="ray", num_workers=2, chunk_size=args.chunk_size))
    executors: dict[str, Executor] = {"in_process": local, "one_actor": one, "two_actors": two}
    n_players = local.games()["block"].n_players
    seconds: dict[str, list[float]] = {name: [] for name in executors}
    compute: dict[str, list[float]] = {name: [] for name in executors}
    try:
        for executor in executors.values():  # warm-up: kernels, allocator, first-call costs
            drain(executor, "block", np.ones((args.chunk_size, n_players), dtype=bool), args.chunk_size)
        names = list(executors)
        for repeat in range(args.repeats):
            coalitions = np.random.default_rng(repeat).random((args.coalitions, n_players)) < 0.5
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                elapsed, busy = drain(executors[name], "block", coalitions, args.chunk_size)
                seconds[name].append(elapsed / args.coalitions)
                compute[name].append(busy / args.coalitions)
                logger.info(
                    "repeat=%d %s: %.3f s per evaluation (%.3f s computing)",
                    repeat,
                    name,
                    seconds[name][-1],
                    compute[name][-1],
                )
    finally:
        one.close()
        two.close()
    per_evaluation = {name: statistics.median(values) for name, values in seconds.items()}
    computing = {name: statistics.median(values) for name, values in compute.items()}
    return {
        "seconds_per_evaluation": {name: round(value, 4) for name, value in per_evaluation.items()},
        "seconds_per_evaluation_all": {name: [round(value, 4) for value in values] for name, values in seconds.items()},
        "compute_seconds_per_evaluation": {name: round(value, 4) for name, value in computing.items()},
        "pool_over_inprocess": round(per_evaluation["one_actor"] / per_evaluation["in_process"], 3),
        "actor_compute_over_inprocess": round(computing["one_actor"] / computing["in_process"], 3),
        "two_over_one_actor": round(per_evaluation["one_actor"] / per_evaluation["two_actors"], 3),
        "measured_seconds_per_evaluation": per_evaluation["in_process"],
    }


class SleepingActor:
    """A simulated model actor: each coalition takes ``seconds_per_coalition`` of sleep; v(S) = |S|."""

    seconds_per_coalition = 0.1

    def __init__(self, setup: WorkerSetup, worker: int):
        self.worker = worker

    def describe(self) -> dict[str, GameInfo]:
        names = tuple(f"layer{i}.block" for i in range(SIMULATED_PLAYERS))
        return {"block": GameInfo("block", "simulated", names, ("size",))}

    def evaluate(self, game_key: str, coalitions: Coalitions) -> tuple[Values, float]:
        started = time.perf_counter()
        time.sleep(self.seconds_per_coalition * len(coalitions))
        return coalitions.sum(axis=1, keepdims=True).astype(float), time.perf_counter() - started


def simulate(actors: int, seconds_per_coalition: float, chunk_size: int, rounds: int, folder: Path) -> dict[str, float]:
    """Busy fraction of ``actors`` sleeping actors driven by the real driver and a permutation estimator."""
    actor_class = type("SleepingActor", (SleepingActor,), {"seconds_per_coalition": seconds_per_coalition})
    executor = ExecutorSpec(kind="ray", num_workers=actors, num_cpus_per_worker=0, chunk_size=chunk_size)
    setup = WorkerSetup(ModelSpec(), ("block",), ())
    pool = RayActorPool(setup, executor, actor_class=actor_class)
    # a round of walks holds about two chunks per actor (as many as the pool keeps in flight)
    walks = 2 * math.ceil(actors * chunk_size / (SIMULATED_PLAYERS - 1))
    budget = 2 + rounds * walks * (SIMULATED_PLAYERS - 1)
    estimator = make_estimator("permutation", SIMULATED_PLAYERS, budget, seed=0, params={"walks_per_round": walks})
    try:
        with SQLiteStore(folder / f"simulated-{actors}.sqlite") as store:
            evaluator = Evaluator(pool, store, pool.games()["block"], chunk_size=chunk_size)
            stats = EstimationRun(estimator, evaluator, budget=budget).run(Control(progress_bar=False))
    finally:
        pool.close()
    busy = stats.worker_seconds / (actors * stats.seconds)
    logger.info("actors=%d evaluated=%d wall=%.1f s busy=%.3f", actors, stats.evaluated, stats.seconds, busy)
    return {
        "busy_fraction": round(busy, 3),
        "evaluations": stats.evaluated,
        "wall_seconds": round(stats.seconds, 2),
        "walks_per_round": walks,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the model measurements")
    parser.add_argument("--coalitions", type=int, default=8, help="coalitions per model measurement")
    parser.add_argument("--chunk-size", type=int, default=2, help="coalitions per chunk (model measurements)")
    parser.add_argument("--window", type=int, default=64, help="tokens per window of the language-modelling task")
    parser.add_argument("--windows", type=int, default=2, help="windows of the language-modelling task")
    parser.add_argument("--dtype", default="float32", choices=("bfloat16", "float32"))  # bf16: emulated here
    parser.add_argument("--actors", type=int, nargs="+", default=[8, 16, 32], help="simulated cluster sizes")
    parser.add_argument("--simulated-chunk-size", type=int, default=4, help="coalitions per simulated chunk")
    parser.add_argument("--rounds", type=int, default=3, help="estimator rounds in a simulated run")
    parser.add_argument("--seconds-per-coalition", type=float, default=None, help="skip the model; simulate this")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")  # one thread per process: the actors Ray starts inherit it
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # a private Ray: never joins another user's
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING", _temp_dir=temp_dir)
    started = time.perf_counter()
    results: dict[str, object] = {"cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()[0]}
    try:
        if args.seconds_per_coalition is None:
            results |= measure_model(args)
            seconds_per_coalition = float(results.pop("measured_seconds_per_evaluation"))  # type: ignore[arg-type]
        else:
            seconds_per_coalition = args.seconds_per_coalition
        results["simulated_seconds_per_coalition"] = round(seconds_per_coalition, 4)
        with tempfile.TemporaryDirectory() as folder:
            runs = {
                actors: simulate(actors, seconds_per_coalition, args.simulated_chunk_size, args.rounds, Path(folder))
                for actors in args.actors
            }
        results["simulated_busy_fraction"] = {str(actors): run["busy_fraction"] for actors, run in runs.items()}
        results["simulated_runs"] = {str(actors): run for actors, run in runs.items()}
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()[0]
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
