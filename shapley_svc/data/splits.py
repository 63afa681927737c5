"""Which slice of which data set each task reads, and the clean judging slice of an estimation task.

The one place that knows each task family's splits. A ranking or plan is estimated on one slice and judged
on another, disjoint one:

| family | estimates on (default) | judged on |
| --- | --- | --- |
| ``mmlu`` | validation (shots from dev) | test |
| ``arc_easy``, ``arc_challenge`` | validation | test |
| ``gsm8k`` | train, after its shot pool | test |
| ``piqa``, ``hellaswag``, ``boolq``, ``winogrande`` | validation (their only split) | the items after |
| ``lambada`` | test (its only split) | the items after |
| ``lm_loss`` (WikiText-2 or LAMBADA text) | test windows | the windows after |

An estimation task already on its family's judging split is judged on the items (windows) right after its
slice. Slices come from a task's parameters alone (the value function is built, which reads no data).
``lm_eval:<task>`` tasks: lm-eval picks the split when the task is built, so its slice has split ``?`` and
overlaps every slice of the same lm-eval task (refused unless overlap is allowed); name their judging
tasks explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from shapley_svc.errors import ConfigError

UNKNOWN_SPLIT = "?"
JUDGING_SPLITS = {"mmlu": "test", "arc_easy": "test", "arc_challenge": "test", "gsm8k": "test"}
"""A family's judging split where it differs from its estimation split; other families judge the items after."""
SIZE_PARAMS = {"lm_loss": "windows", "mmlu": "per_subject", "lm_eval": "limit"}
"""The parameter that sizes a task of each family (others: ``limit``); a suite's ``items`` maps onto it."""
OFFSET_PARAMS = {"lm_loss": "first_window"}
"""The parameter that offsets a task's slice (others: ``first_item``; lm-eval tasks have none)."""
SEED_PAPER_TEST_SET = ("mmlu", "test")


@dataclass(frozen=True)
class DataSlice:
    """Items (or tokens) ``start`` to ``start + count`` (to the end when None) of one split of a data set.

    For MMLU the range holds per subject, over ``subjects`` (None: every subject).
    """

    dataset: str
    split: str
    start: int = 0
    count: int | None = None
    unit: str = "items"
    subjects: tuple[str, ...] | None = None

    @property
    def stop(self) -> int | None:
        """One past the last item (None: to the end)."""
        return None if self.count is None else self.start + self.count

    def overlaps(self, other: DataSlice) -> bool:
        """Whether the two may share an item (an unknown split, or units that cannot be compared, may)."""
        if self.dataset != other.dataset:
            return False
        if UNKNOWN_SPLIT not in (self.split, other.split) and self.split != other.split:
            return False
        if self.subjects is not None and other.subjects is not None and not set(self.subjects) & set(other.subjects):
            return False
        if self.unit != other.unit or UNKNOWN_SPLIT in (self.split, other.split):
            return True
        return (other.stop is None or self.start < other.stop) and (self.stop is None or other.start < self.stop)

    def __str__(self) -> str:
        last = "end" if self.stop is None else str(self.stop - 1)
        text = f"{self.dataset} {self.split} {self.unit} {self.start}-{last}"
        if self.subjects is not None or self.dataset == "mmlu":
            text += f" per subject ({', '.join(self.subjects) if self.subjects else 'all subjects'})"
        return text

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields plus the short text, for provenance."""
        return asdict(self) | {"text": str(self)}


def task_family(name: str) -> str:
    """The registry entry ``name`` builds (``lm_eval`` for ``lm_eval:<task>``); unknown: a ConfigError."""
    from shapley_svc.values import task_kind

    return task_kind(name)


def task_slice(name: str, params: Mapping[str, Any] | None = None) -> DataSlice:
    """The slice the task ``name`` with ``params`` reads, from its parameters and the value function's defaults."""
    from shapley_svc.values import make_value_fn

    family = task_family(name)
    built: Any = make_value_fn(name, dict(params or {}))
    if family == "lm_loss":
        window = int(built.window)
        return DataSlice(built.corpus, "test", built.first_window * window, built.windows * window, "tokens")
    if family == "mmlu":
        subjects = tuple(built.subjects) if built.subjects is not None else None
        return DataSlice("mmlu", built.split, built.first_item, built.per_subject, subjects=subjects)
    if family == "lm_eval":
        return DataSlice(name, UNKNOWN_SPLIT, 0, built.limit)
    if family == "gsm8k":
        return DataSlice("gsm8k", built.split, built.start_item, built.limit)
    if family == "lambada":
        return DataSlice("lambada", built.split, built.first_item, built.limit)
    split = built.split or built._template.split
    return DataSlice(built._template.dataset, split, built.first_item, built.limit)


def judging_task(name: str, params: Mapping[str, Any] | None = None, items: int | None = None) -> dict[str, Any]:
    """The judging counterpart ``{"name", "params"}`` of an estimation task, ``items`` in size (default: its own).

    Example: ``judging_task("mmlu", {"per_subject": 5})`` is MMLU test, 5 per subject, from the first question.
    """
    family = task_family(name)
    if family == "lm_eval":
        raise ConfigError(f"{name}: lm-eval picks its own split, so there is no known judging slice; name one")
    estimated = task_slice(name, params)
    per_unit = estimated.count // _window(name, params) if estimated.count is not None else None  # in the param's unit
    size_param, offset_param = SIZE_PARAMS.get(family, "limit"), OFFSET_PARAMS.get(family, "first_item")
    split = JUDGING_SPLITS.get(family, estimated.split)
    start = 0
    if split == estimated.split:
        if estimated.stop is None:
            raise ConfigError(
                f"{name} estimates on {estimated}, to the end of its only split: give it a {size_param} so the "
                "items after it can judge"
            )
        start = estimated.stop // _window(name, params)
    judged = dict(params or {}) | {size_param: items if items is not None else per_unit, offset_param: start}
    if family != "lm_loss":
        judged["split"] = split
    return {"name": name, "params": judged}


def _window(name: str, params: Mapping[str, Any] | None) -> int:
    """Tokens per unit of the task's size parameter: an lm_loss window, else 1 (an item)."""
    if task_family(name) != "lm_loss":
        return 1
    from shapley_svc.values import make_value_fn

    return int(make_value_fn(name, dict(params or {})).window)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Overlap:
    """An estimation task and a judging task whose slices may share items."""

    estimation: str
    judging: str
    estimation_slice: DataSlice
    judging_slice: DataSlice

    def __str__(self) -> str:
        return f"{self.judging} ({self.judging_slice}) overlaps {self.estimation} ({self.estimation_slice})"


def overlaps(
    tasks: Sequence[tuple[str, Mapping[str, Any]]],
    judging: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    labels: tuple[str, str] = ("tasks", "held_out"),
) -> list[Overlap]:
    """Every (estimation, judging) pair of ``(name, params)`` tasks whose slices may share items."""
    estimated = [task_slice(name, params) for name, params in tasks]
    judged = [task_slice(name, params) for name, params in judging]
    return [
        Overlap(f"{labels[0]}.{i} {tasks[i][0]}", f"{labels[1]}.{j} {judging[j][0]}", first, second)
        for i, first in enumerate(estimated)
        for j, second in enumerate(judged)
        if first.overlaps(second)
    ]


def check_disjoint(
    tasks: Sequence[tuple[str, Mapping[str, Any]]],
    judging: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    allow_overlap: bool = False,
) -> None:
    """A ConfigError naming both slices of every overlapping pair, unless ``allow_overlap``."""
    found = [] if allow_overlap else overlaps(tasks, judging)
    if found:
        listed = "; ".join(str(overlap) for overlap in found)
        raise ConfigError(
            f"the judging data overlaps the estimation data: {listed}. Judge on other items (the defaults of "
            "shapley_svc.data.splits.judging_task do), or set allow_overlap: true to allow it explicitly"
        )


def split_provenance(
    tasks: Sequence[tuple[str, Mapping[str, Any]]],
    judging: Sequence[tuple[str, Mapping[str, Any]]],
    allow_overlap: bool,
) -> dict[str, Any]:
    """What results and plans record: the estimation and judging slices, and whether overlap was allowed."""
    return {
        "estimation_slices": [task_slice(name, params).as_dict() for name, params in tasks],
        "judging_slices": [task_slice(name, params).as_dict() for name, params in judging],
        "allow_overlap": allow_overlap,
        "overlapping": [str(overlap) for overlap in overlaps(tasks, judging)],
    }


def seed_paper_note(tasks: Sequence[tuple[str, Mapping[str, Any]]]) -> str | None:
    """For an estimator that follows the seed paper: a note when it estimates on MMLU test questions."""
    dataset, split = SEED_PAPER_TEST_SET
    if any((found := task_slice(name, params)).dataset == dataset and found.split == split for name, params in tasks):
        return (
            "estimated on MMLU test questions, reproducing the seed paper's test-set choice: values judged "
            "on the same questions are an upper bound, not a clean estimate"
        )
    return None
