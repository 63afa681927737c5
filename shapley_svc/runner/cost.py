"""Cost estimate before a run (``--dry-run``): seconds per evaluation on one worker, scaled to the job.

One worker is built in this process, a warm-up chunk is evaluated, then ``sample`` random coalitions of each
granularity are timed. The job implies at most ``budget x estimators`` evaluations per granularity (an upper
bound: values already in the store's cache are not evaluated again); wall time assumes the evaluations
spread evenly over the workers, and GPU-hours count every worker's GPUs for that wall time.

Per task (each task of the spec played alone on the worker's model) and task column it also reports the
number of items, the full model's value and its bootstrap standard error over items
(:func:`~shapley_svc.values.items.coalition_stderr`), and, for a target noise ``X`` (a standard error in the
task's units), the items needed ``ceil(items * (stderr / X)^2)`` (at least 2) and what that costs: the task's
seconds per evaluation at its current size (``task_sample`` random coalitions timed), scaled linearly to the
needed items, per evaluation, per job (x the granularity's evaluations) and in wall time over the workers.
Nothing is written to the store and no job starts.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from shapley_svc.errors import ConfigError
from shapley_svc.runner.executors import HELD_OUT, GameWorker, WorkerSetup
from shapley_svc.spec import JobSpec


@dataclass(frozen=True)
class NoiseTargets:
    """Target standard errors: ``default`` for every task column, ``per_task`` by column or task name.

    A key matches a column (``mmlu.accuracy``), the part of a column before its first dot (``mmlu``,
    ``wikitext2``) or the spec's task name (``lm_loss``); the most specific key wins.
    """

    default: float | None = None
    per_task: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, texts: list[str] | None) -> NoiseTargets:
        """``["0.01", "mmlu=0.02"]``: a bare number is the default, ``TASK=X`` a task's own target."""
        default, per_task = None, {}
        for text in texts or []:
            name, _, number = text.rpartition("=")
            try:
                target = float(number)
            except ValueError:
                raise ConfigError(f"--noise takes X or TASK=X with X a number, not {text!r}") from None
            if not target > 0 or not math.isfinite(target):
                raise ConfigError(f"a noise target must be a positive standard error, got {text!r}")
            if name:
                per_task[name.strip()] = target
            else:
                default = target
        return cls(default, per_task)

    def target(self, column: str, task: str) -> float | None:
        """The target for ``column`` of the spec task named ``task`` (None: no target)."""
        for key in (column, column.split(".", 1)[0], task):
            if key in self.per_task:
                return self.per_task[key]
        return self.default

    def check(self, known: set[str]) -> None:
        """A ConfigError for a per-task key that names no column or task of the job."""
        unknown = sorted(set(self.per_task) - known)
        if unknown:
            raise ConfigError(
                f"--noise names no task of this job: {', '.join(unknown)}; use {', '.join(sorted(known))}"
            )


@dataclass(frozen=True)
class TaskCost:
    """One task column of one granularity: items, the full model's value and stderr, and what a noise target
    costs. ``stderr`` is None when the value is not a mean over items; the ``*_needed`` fields when no target."""

    granularity: str
    task: str
    items: int | None
    value: float
    stderr: float | None
    noise: float | None
    items_needed: int | None
    seconds_per_evaluation: float
    seconds_per_evaluation_needed: float | None
    job_seconds_needed: float | None
    wall_seconds_needed: float | None


@dataclass(frozen=True)
class CostEstimate:
    """Measured seconds per evaluation per granularity and what the job's budget implies; per task column the
    items, stderr and the items and cost a noise target needs (``tasks``)."""

    seconds_per_evaluation: dict[str, float]
    evaluations: dict[str, int]
    workers: int
    wall_seconds: float
    gpu_hours: float
    tasks: tuple[TaskCost, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def items_needed(items: int, stderr: float, noise: float) -> int:
    """Items for a standard error of ``noise``: ``ceil(items * (stderr / noise)^2)``, at least 2."""
    return max(2, math.ceil(items * (stderr / noise) ** 2))


def estimate_cost(
    spec: JobSpec,
    *,
    sample: int = 8,
    seed: int = 0,
    noise: NoiseTargets | None = None,
    task_sample: int = 3,
    progress_bar: bool = True,
) -> CostEstimate:
    """Time ``sample`` random coalitions per granularity on one in-process worker; scale to the spec.

    Then each task alone: its full model's stderr and ``task_sample`` timed coalitions (see the module).
    """
    worker = GameWorker.from_setup(WorkerSetup.from_spec(spec))
    rng = np.random.default_rng(seed)
    per_evaluation: dict[str, float] = {}
    evaluations: dict[str, int] = {}
    for key, info in worker.describe().items():
        worker.evaluate(key, np.ones((1, info.n_players), dtype=bool))  # warm-up: kernels, allocator
        coalitions = rng.random((sample, info.n_players)) < 0.5
        started = time.perf_counter()
        worker.evaluate(key, coalitions)
        per_evaluation[key] = (time.perf_counter() - started) / sample
        evaluations[key] = spec.budget.evaluations * len(spec.estimators)
    workers = spec.executor.num_workers if spec.executor.kind == "ray" else 1
    total_seconds = sum(per_evaluation[key] * evaluations[key] for key in per_evaluation)
    wall = total_seconds / workers
    gpus = spec.executor.num_gpus_per_worker if spec.executor.kind == "ray" else 0.0
    tasks = task_costs(
        worker,
        spec,
        evaluations,
        workers,
        noise or NoiseTargets(),
        sample=task_sample,
        seed=seed,
        progress_bar=progress_bar,
    )
    return CostEstimate(per_evaluation, evaluations, workers, wall, wall * workers * gpus / 3600, tasks)


def task_costs(
    worker: GameWorker,
    spec: JobSpec,
    evaluations: dict[str, int],
    workers: int,
    noise: NoiseTargets,
    *,
    sample: int,
    seed: int,
    progress_bar: bool,
) -> tuple[TaskCost, ...]:
    """Per granularity and task column of ``spec``: items, stderr of the full model, and a noise target's cost."""
    from shapley_svc.values import make_value_fn
    from shapley_svc.values.base import ModelGame
    from shapley_svc.values.items import coalition_stderr

    keys = [key for key in worker.games if not key.endswith(HELD_OUT)]
    rng = np.random.default_rng(seed)
    rows: list[TaskCost] = []
    known: set[str] = set()
    with tqdm(total=len(keys) * len(spec.tasks), desc="timing tasks", unit="task", disable=not progress_bar) as bar:
        for key in keys:
            game = worker.games[key]
            if not isinstance(game, ModelGame):
                raise ConfigError(f"game {key!r} is not a ModelGame: the dry run times model games only")
            for task in spec.tasks:
                alone = ModelGame(
                    game.masked, make_value_fn(task.name, task.params), game.tokenizer, game.model_fingerprint
                )
                try:
                    errors = coalition_stderr(alone, seed=seed)  # also the warm-up of this task
                    values, stderr, items = errors.values, list(errors.stderr), list(errors.items)
                except ConfigError:  # not a mean over items: a value, no stderr
                    values = alone(np.ones((1, alone.n_players), dtype=bool))[0]
                    stderr, items = [None] * len(values), [None] * len(values)
                coalitions = rng.random((sample, alone.n_players)) < 0.5
                started = time.perf_counter()
                alone(coalitions)
                seconds = (time.perf_counter() - started) / sample
                known |= {task.name, *alone.task_names, *(column.split(".", 1)[0] for column in alone.task_names)}
                for column, value, error, count in zip(alone.task_names, values, stderr, items, strict=True):
                    rows.append(
                        _task_cost(
                            key,
                            column,
                            task.name,
                            float(value),
                            error,
                            count,
                            seconds,
                            evaluations[key],
                            workers,
                            noise,
                        )
                    )
                bar.update()
    noise.check(known)
    return tuple(rows)


def _task_cost(
    granularity: str,
    column: str,
    task: str,
    value: float,
    stderr: float | None,
    items: int | None,
    seconds: float,
    evaluations: int,
    workers: int,
    noise: NoiseTargets,
) -> TaskCost:
    target = noise.target(column, task)
    needed = None if target is None or stderr is None or items is None else items_needed(int(items), stderr, target)
    per_evaluation = None if needed is None else seconds * needed / int(items)  # type: ignore[arg-type]
    return TaskCost(
        granularity=granularity,
        task=column,
        items=None if items is None else int(items),
        value=value,
        stderr=None if stderr is None else float(stderr),
        noise=target,
        items_needed=needed,
        seconds_per_evaluation=seconds,
        seconds_per_evaluation_needed=per_evaluation,
        job_seconds_needed=None if per_evaluation is None else per_evaluation * evaluations,
        wall_seconds_needed=None if per_evaluation is None else per_evaluation * evaluations / workers,
    )


def format_cost(cost: CostEstimate) -> str:
    """The readable report: per granularity, then per task column (items, stderr, a target's items and cost)."""
    lines = [
        f"{key}: {seconds * 1000:.1f} ms per evaluation x {cost.evaluations[key]} evaluations"
        for key, seconds in cost.seconds_per_evaluation.items()
    ]
    lines.append(
        f"expected wall time on {cost.workers} worker(s): {cost.wall_seconds / 60:.1f} min; "
        f"GPU-hours: {cost.gpu_hours:.2f}"
    )
    if not cost.tasks:
        return "\n".join(lines)
    header = ["granularity", "task", "items", "value", "stderr", "noise", "items needed", "ms/eval", "ms/eval needed"]
    header += ["job s needed", "wall s needed"]
    table = [header] + [
        [
            row.granularity,
            row.task,
            _cell(row.items, "{}"),
            f"{row.value:.4f}",
            _cell(row.stderr, "{:.4f}"),
            _cell(row.noise, "{:g}"),
            _cell(row.items_needed, "{}"),
            f"{row.seconds_per_evaluation * 1000:.1f}",
            _cell(row.seconds_per_evaluation_needed, "{:.1f}", 1000),
            _cell(row.job_seconds_needed, "{:.4g}"),
            _cell(row.wall_seconds_needed, "{:.4g}"),
        ]
        for row in cost.tasks
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in table]
    return "\n".join(lines)


def _cell(value: float | None, pattern: str, scale: float = 1.0) -> str:
    return "-" if value is None else pattern.format(value * scale)
