"""Task suites as data: a YAML (or JSON) file naming tasks, their sizes, splits and objective weights.

Example (``suites/tradeoffs.yaml`` ships at the repository root)::

    name: tradeoffs
    tasks:
      - {name: lm_loss, items: 8, params: {corpus: wikitext2}}
      - {name: arc_easy, items: 200, weight: 0.5}
      - {name: mmlu, items: 5, held_out_items: 5}

``items`` sizes a task on its family's parameter (multiple choice, LAMBADA, GSM8K: ``limit``; MMLU:
``per_subject``; ``lm_loss``: ``windows``; see :data:`shapley_svc.data.splits.SIZE_PARAMS`); ``split``
overrides the estimation split; ``weight`` is the task's weight in the plans' objective (on its first value
column); ``held_out_items`` sizes its judging counterpart (:func:`~shapley_svc.data.splits.judging_task`,
default: as many as it estimates on). lm-eval tasks have no known judging slice and are not held out.
A suite is validated like a job spec: unknown keys, tasks and parameters are refused, each with its path,
before any model loads (a value function is only constructed; data is read when it is prepared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from shapley_svc.errors import ConfigError
from shapley_svc.spec import TaskSpec, _format_errors, _Strict, read_mapping_file


class SuiteTask(_Strict):
    """One task of a suite: a registered value function, its size, split, objective weight and held-out size."""

    name: str = Field(min_length=1, description="a registered value function (lm_loss, mmlu, arc_easy, ...)")
    items: int | None = Field(None, ge=1, description="its size, on the family's size parameter")
    split: str | None = Field(None, min_length=1, description="the estimation split (default: the family's)")
    weight: float = Field(1.0, ge=0, description="its weight in the plans' objective")
    held_out_items: int | None = Field(None, ge=1, description="size of its judging counterpart")
    params: dict[str, Any] = Field(default_factory=dict, description="any other value-function parameter")

    def task_params(self) -> dict[str, Any]:
        """The value function's parameters: ``params`` with ``items`` and ``split`` mapped onto its own."""
        from shapley_svc.data.splits import SIZE_PARAMS, task_family

        params = dict(self.params)
        if self.items is not None:
            params[SIZE_PARAMS.get(task_family(self.name), "limit")] = self.items
        if self.split is not None:
            params["split"] = self.split
        return params


class Suite(_Strict):
    """A named list of tasks: the job's tasks, their held-out counterparts and the objective weights."""

    name: str = Field(min_length=1)
    tasks: list[SuiteTask] = Field(min_length=1)

    def job_tasks(self) -> list[TaskSpec]:
        """The job spec's ``tasks``."""
        return [TaskSpec(name=task.name, params=task.task_params()) for task in self.tasks]

    def held_out_tasks(self) -> list[TaskSpec]:
        """The job spec's ``held_out``: each task's judging counterpart (lm-eval tasks left out)."""
        from shapley_svc.data.splits import judging_task, task_family

        judged = [
            judging_task(task.name, task.task_params(), items=task.held_out_items)
            for task in self.tasks
            if task_family(task.name) != "lm_eval"
        ]
        return [TaskSpec(name=task["name"], params=task["params"]) for task in judged]

    def objective(self) -> dict[str, float]:
        """Task column -> weight: each task's weight on its first value column (a plan's ``objective``)."""
        from shapley_svc.values import make_value_fn

        return {make_value_fn(task.name, task.task_params()).task_names[0]: task.weight for task in self.tasks}


def _task_problems(suite: Suite) -> list[str]:
    """One line per task whose name or parameters do not build, or whose judging slice cannot be made."""
    from shapley_svc.data.splits import judging_task, task_family
    from shapley_svc.values import make_value_fn

    problems = []
    for index, task in enumerate(suite.tasks):
        try:
            family = task_family(task.name)
        except ConfigError as error:
            problems.append(f"  tasks.{index}.name: {error}")
            continue
        try:
            make_value_fn(task.name, task.task_params())
            if family != "lm_eval":
                judging_task(task.name, task.task_params(), items=task.held_out_items)
        except Exception as error:  # a constructor fed arbitrary YAML may raise anything: the file is wrong
            problems.append(f"  tasks.{index}.params: {error}")
    return problems


def parse_suite(data: object, *, source: str = "task suite") -> Suite:
    """Validate a mapping (parsed YAML / JSON) as a :class:`Suite`; one ConfigError lists each bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping with name and tasks, got {type(data).__name__}")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as error:
        raise ConfigError(
            f"{source} is invalid ({error.error_count()} problem(s)); fix these fields:\n{_format_errors(error)}"
        ) from error
    problems = _task_problems(suite)
    if problems:
        listed = "\n".join(problems)
        raise ConfigError(f"{source} is invalid ({len(problems)} problem(s)); fix these fields:\n{listed}")
    return suite


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file (``.yaml``, ``.yml`` or ``.json``)."""
    return parse_suite(read_mapping_file(path, "task suite"), source=f"task suite {Path(path)}")
