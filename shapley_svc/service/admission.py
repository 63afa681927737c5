"""Admission of a job spec arriving over HTTP: every section and every task checked against the server's policy.

:meth:`Admission.enforce` walks the spec through :data:`SECTION_CHECKS` (one check per :class:`JobSpec`
section) and each task through :data:`TASK_CHECKS` (one per value-function kind), collects every
:class:`Violation` and raises them together as a :class:`PolicyError`, which the API answers with a 422
naming each field and the rule (the policy setting) it breaks. It returns the spec the server stores: lm-eval
tasks named from a task folder get that folder as ``include_path``; :meth:`Admission.submitted` takes it off
again, so responses show the spec as submitted.

Paths are resolved (symlinks followed) and must lie under a root of the policy; names (task, split, subject,
corpus, model) are checked against the known ones and never joined into a path; a refusal echoes only what
the caller sent (never a resolved path, never whether a path outside the roots exists). A development server
(``--dev``) skips the path and model-name rules; its limits still apply.

A new spec section or value-function kind plugs in by adding its check to SECTION_CHECKS or TASK_CHECKS.
Until then the server refuses it (fail closed), and ``tests/service/test_admission.py`` names what is missing.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shapley_svc.data.corpus import CORPORA
from shapley_svc.data.generative import GSM8K_SPLITS, LAMBADA_SPLITS
from shapley_svc.data.mmlu import SPLITS as MMLU_SPLITS
from shapley_svc.data.mmlu import SUBJECTS
from shapley_svc.data.multiple_choice import DATASETS, SOURCES
from shapley_svc.errors import ConfigError, ShapleySvcError
from shapley_svc.estimators import check_estimator
from shapley_svc.estimators.stopping import make_stopping_rule
from shapley_svc.service.policy import ServicePolicy
from shapley_svc.spec import JobSpec, TaskSpec
from shapley_svc.values import LM_EVAL_PREFIX, make_value_fn, task_kind
from shapley_svc.values.multiple_choice import DEFAULT_MAX_LENGTH
from shapley_svc.values.multiple_choice import TASKS as MULTIPLE_CHOICE_TASKS

Location = tuple[str | int, ...]
"""Where in the spec: ``("tasks", 0, "params", "split")``."""

_TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_GIB = 1024**3


@dataclass(frozen=True)
class Violation:
    """One refusal: the spec field, the rule (the policy setting or check) it breaks, and what to do."""

    field: Location
    rule: str
    message: str

    @property
    def where(self) -> str:
        """The field as a dotted path: ``tasks.0.params.split``."""
        return ".".join(str(part) for part in self.field) or "(spec)"


class PolicyError(ConfigError):
    """The server's policy refuses a job spec; ``violations`` lists each field and rule (HTTP 422)."""

    def __init__(self, violations: list[Violation]):
        self.violations = tuple(violations)
        listed = "; ".join(f"{item.where}: {item.message} (rule {item.rule})" for item in self.violations)
        super().__init__(f"the server's policy refuses this job: {listed}")


class JobQuotaError(ShapleySvcError):
    """The token already has as many queued and running jobs as the policy allows (HTTP 429)."""


def resolve_roots(roots: tuple[str, ...]) -> tuple[Path, ...]:
    """The policy's folders, resolved (symlinks followed)."""
    return tuple(Path(root).expanduser().resolve() for root in roots)


def under_roots(value: str, roots: tuple[Path, ...]) -> Path | None:
    """``value`` resolved (symlinks followed) when it lies under one of ``roots``, else None."""
    try:
        resolved = Path(value).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unknown ~user, a NUL byte
        return None
    return resolved if any(resolved.is_relative_to(root) for root in roots) else None


def name_allowed(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``name`` matches one of ``patterns``, where ``*`` matches within one ``/``-separated part."""
    return any(re.fullmatch(re.escape(pattern).replace(r"\*", "[^/]*"), name) for pattern in patterns)


@dataclass
class Admission:
    """The server's policy made ready (roots resolved, limits fixed to this machine); checks and binds specs."""

    policy: ServicePolicy = field(default_factory=ServicePolicy)
    dev: bool = False
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        self.model_roots = resolve_roots(self.policy.model_roots)
        self.data_roots = resolve_roots(self.policy.data_roots)
        self.task_roots = resolve_roots(self.policy.task_roots)

    def limit(self, setting: str) -> float:
        """The policy's limit ``setting``; an unset per-worker limit is the server's core count."""
        value = getattr(self.policy, setting)
        return self.cores if value is None else value

    def enforce(self, spec: JobSpec) -> JobSpec:
        """``spec`` as the server stores it (lm-eval folder tasks bound); a PolicyError listing every violation."""
        violations = [
            Violation(
                (section,), "unchecked_section", f"this server has no policy check for {section!r}; it refuses it"
            )
            for section in JobSpec.model_fields
            if section not in SECTION_CHECKS
        ]
        for check in SECTION_CHECKS.values():
            violations.extend(check(self, spec))
        if violations:
            raise PolicyError(violations)
        return self._bind(spec)

    def readmit(self, stored: dict[str, Any]) -> JobSpec:
        """A stored job checked again before it runs (the policy may have changed since it was submitted)."""
        spec = JobSpec.model_validate(stored)
        bound = self.enforce(JobSpec.model_validate(self.submitted(stored)))
        if bound.result_fingerprint() != spec.result_fingerprint():
            message = "the server's task folders changed since this job was submitted; submit it again"
            raise PolicyError([Violation(("tasks",), "task_roots", message)])
        return spec

    def submitted(self, stored: dict[str, Any]) -> dict[str, Any]:
        """The stored spec as it was submitted: without the task folders the server bound lm-eval tasks to."""
        tasks = stored.get("tasks")
        if self.dev or not isinstance(tasks, list):
            return stored
        shown = [
            {**task, "params": {k: v for k, v in task["params"].items() if k != "include_path"}}
            if isinstance(task, dict) and isinstance(task.get("params"), dict) and _is_lm_eval(task.get("name"))
            else task
            for task in tasks
        ]
        return {**stored, "tasks": shown}

    def task_root(self, task: str) -> Path | None:
        """The first task folder of the policy holding lm-eval task ``task`` (None: none does)."""
        from shapley_svc.values.lm_eval_bridge import registered_tasks

        for root in self.task_roots:
            try:
                if task in registered_tasks(root):
                    return root
            except ConfigError:  # lm-eval is not installed: no folder holds a task
                return None
        return None

    def _bind(self, spec: JobSpec) -> JobSpec:
        tasks = []
        for task in spec.tasks:
            if _is_lm_eval(task.name) and "include_path" not in task.params:
                root = self.task_root(task.name[len(LM_EVAL_PREFIX) :])
                if root is not None:
                    task = task.model_copy(update={"params": {**task.params, "include_path": str(root)}})
            tasks.append(task)
        return spec.model_copy(update={"tasks": tasks})


def _is_lm_eval(name: object) -> bool:
    return isinstance(name, str) and name.startswith(LM_EVAL_PREFIX)


# ----------------------------------------------------------------------------------------------- sections

SectionCheck = Callable[[Admission, JobSpec], Iterator[Violation]]


def _nothing_to_check(admission: Admission, spec: JobSpec) -> Iterator[Violation]:
    return iter(())


def _check_model(admission: Admission, spec: JobSpec) -> Iterator[Violation]:
    if not admission.dev:
        yield from _check_model_name(admission, spec.model.name, ("model", "name"))
    if spec.model.device != "cpu" and admission.policy.max_gpus_per_worker == 0:
        message = f"device {spec.model.device!r} needs a GPU and this server allows none; use device cpu"
        yield Violation(("model", "device"), "max_gpus_per_worker", message)


def _check_model_name(admission: Admission, name: str, where: Location) -> Iterator[Violation]:
    """What the loader would read from disk must be a folder under the model roots; other names must be allowed."""
    allowed = ", ".join(admission.policy.models) or "none"
    if name != "demo" and _reads_from_disk(name):
        folder = under_roots(name, admission.model_roots)
        if folder is None:
            message = f"{name!r} is not a folder under this server's model roots; name one there, or one of: {allowed}"
            yield Violation(where, "model_roots", message)
        elif not folder.is_dir():
            yield Violation(where, "model_roots", f"there is no model folder {name!r} under this server's model roots")
        elif (weights := _weight_bytes(folder)) > admission.policy.max_model_gib * _GIB:
            message = (
                f"the model {name!r} has {weights / _GIB:.1f} GiB of weights, over this server's limit of "
                f"{admission.policy.max_model_gib:g} GiB"
            )
            yield Violation(where, "max_model_gib", message)
    elif not (_HUB_ID.fullmatch(name) and ".." not in name and name_allowed(name, admission.policy.models)):
        yield Violation(where, "models", f"{name!r} is not a model this server serves; it serves: {allowed}")


def _reads_from_disk(name: str) -> bool:
    """Whether :func:`~shapley_svc.model.loading.load_model` would treat ``name`` as a local path."""
    try:
        return name.startswith(("/", ".", "~")) or "\\" in name or Path(name).expanduser().exists()
    except (OSError, RuntimeError, ValueError):  # an unknown ~user, a NUL byte: a path, and not an allowed one
        return True


def _weight_bytes(folder: Path) -> int:
    """Bytes of the weight files in ``folder`` (symlinks followed, as the loader does)."""
    total = 0
    for entry in os.scandir(folder):
        if entry.name.endswith(_WEIGHT_SUFFIXES):
            try:
                total += entry.stat().st_size
            except OSError:  # a dangling link: the loader will say so
                continue
    return total


def _check_executor(admission: Admission, spec: JobSpec) -> Iterator[Violation]:
    executor = spec.executor
    if executor.kind not in admission.policy.executor_kinds:
        kinds = ", ".join(admission.policy.executor_kinds) or "none"
        yield Violation(("executor", "kind"), "executor_kinds", f"kind {executor.kind!r} is not allowed here: {kinds}")
    if executor.num_cpus_per_worker <= 0:
        message = "num_cpus_per_worker must be above 0 here: a worker reserving no CPU is scheduled without limit"
        yield Violation(("executor", "num_cpus_per_worker"), "cpus_above_zero", message)
    limits = {
        "num_workers": "max_workers",
        "threads_per_worker": "max_threads_per_worker",
        "num_cpus_per_worker": "max_cpus_per_worker",
        "num_gpus_per_worker": "max_gpus_per_worker",
    }
    for name, setting in limits.items():
        value, cap = getattr(executor, name), admission.limit(setting)
        if value > cap:
            yield Violation(("executor", name), setting, f"{name} {value} is over this server's limit of {cap:g}")


def _check_budget(admission: Admission, spec: JobSpec) -> Iterator[Violation]:
    """The estimators' budget on every granularity and every plan's budget, together within the limit."""
    runs = len(spec.players.granularities) * len(spec.estimators)
    planned = sum(plan.budget for plan in spec.plans)
    total = spec.budget.evaluations * runs + planned
    if total > admission.policy.max_evaluations:
        message = (
            f"{spec.budget.evaluations} evaluations x {runs} run(s) (granularities x estimators)"
            + (f" + {planned} for plans" if planned else "")
            + f" = {total}, over this server's limit of {admission.policy.max_evaluations} per job"
        )
        yield Violation(("budget", "evaluations"), "max_evaluations", message)
    try:
        make_stopping_rule(spec.budget.stopping)
    except (ShapleySvcError, TypeError, ValueError) as error:
        yield Violation(("budget", "stopping"), "known_names", str(error))


def _check_estimators(admission: Admission, spec: JobSpec) -> Iterator[Violation]:
    for index, estimator in enumerate(spec.estimators):
        try:
            check_estimator(estimator.name, estimator.params)
        except ConfigError as error:
            yield Violation(("estimators", index), "known_names", str(error))


def _check_tasks(admission: Admission, spec: JobSpec) -> Iterator[Violation]:
    if len(spec.tasks) > admission.policy.max_tasks:
        message = f"{len(spec.tasks)} tasks, over this server's limit of {admission.policy.max_tasks} per job"
        yield Violation(("tasks",), "max_tasks", message)
    for index, task in enumerate(spec.tasks):
        yield from _check_task(admission, task, ("tasks", index))


def _check_plans(admission: Admission, spec: JobSpec) -> Iterator[Violation]:
    """Each plan's searcher and its options known (its budget counts in ``_check_budget``)."""
    from shapley_svc.planning import SEARCHERS

    for index, plan in enumerate(spec.plans):
        try:
            SEARCHERS.build(SEARCHERS.key(plan.method), params=plan.params)
        except ConfigError as error:
            yield Violation(("plans", index), "known_names", str(error))
        except Exception as error:  # options from JSON may break a constructor in any way
            yield Violation(("plans", index, "params"), "parameters", str(error) or type(error).__name__)


def _check_held_out(admission: Admission, spec: JobSpec) -> Iterator[Violation]:
    """Held-out tasks checked like tasks (and counted with them); lm-eval tasks are not served held out."""
    if len(spec.tasks) + len(spec.held_out) > admission.policy.max_tasks:
        message = f"{len(spec.tasks)} tasks and {len(spec.held_out)} held out, over this server's limit of "
        yield Violation(("held_out",), "max_tasks", message + f"{admission.policy.max_tasks} per job")
    for index, task in enumerate(spec.held_out):
        if _is_lm_eval(task.name):
            message = "lm-eval tasks are not served as held-out tasks; hold out windows or items of a built-in task"
            yield Violation(("held_out", index, "name"), "known_names", message)
        else:
            yield from _check_task(admission, task, ("held_out", index))


def _check_overlap(admission: Admission, spec: JobSpec) -> Iterator[Violation]:
    """Held-out data disjoint from the tasks' unless the spec allows overlap (built-in held-out tasks only)."""
    from shapley_svc.data.splits import check_disjoint, overlaps

    tasks = [(task.name, task.params) for task in spec.tasks]
    held_out = [(task.name, task.params) for task in spec.held_out if not _is_lm_eval(task.name)]
    try:
        overlaps(tasks, held_out)
    except Exception:  # bad task names or parameters: the task checks refuse them, naming their field
        return
    try:
        check_disjoint(tasks, held_out, allow_overlap=spec.allow_overlap)
    except ConfigError as error:
        yield Violation(("held_out",), "clean_splits", str(error))


SECTION_CHECKS: dict[str, SectionCheck] = {
    "version": _nothing_to_check,
    "name": _nothing_to_check,  # a label, bounded by max_request_bytes
    "model": _check_model,
    "players": _nothing_to_check,  # at most the two granularities
    "tasks": _check_tasks,
    "estimators": _check_estimators,
    "budget": _check_budget,
    "executor": _check_executor,
    "store": _nothing_to_check,  # never opened: the server runs every job on its own store
    "plans": _check_plans,
    "held_out": _check_held_out,
    "allow_overlap": _check_overlap,
}
"""One check per JobSpec section; a section missing here is refused (see the module docstring)."""


# ----------------------------------------------------------------------------------------------- tasks

TaskCheck = Callable[[Admission, TaskSpec, Any, Location], Iterator[Violation]]
"""Checks one task given its spec, the value function built from it (nothing read yet) and where it is."""


def _check_task(admission: Admission, task: TaskSpec, where: Location) -> Iterator[Violation]:
    """The task's kind, then its parameters as the worker will build them, then the kind's own check."""
    try:
        kind = task_kind(task.name)
    except ConfigError as error:
        yield Violation((*where, "name"), "known_names", str(error))
        return
    check = TASK_CHECKS.get(kind)
    if check is None:
        yield Violation((*where, "name"), "unchecked_task_kind", f"this server has no policy check for {kind!r} tasks")
        return
    try:
        built = make_value_fn(task.name, task.params)
    except Exception as error:  # a constructor fed arbitrary JSON may raise anything: the request is what is wrong
        yield Violation((*where, "params"), "parameters", str(error) or type(error).__name__)
        return
    yield from check(admission, task, built, where)


def _param(where: Location, name: str) -> Location:
    return (*where, "params", name)


def _check_data_dir(admission: Admission, task: TaskSpec, where: Location) -> Iterator[Violation]:
    value = task.params.get("data_dir")
    if value is None or admission.dev:
        return
    if not isinstance(value, str) or under_roots(value, admission.data_roots) is None:
        message = f"{value!r} is not under this server's data roots; name a folder there, or leave data_dir out"
        yield Violation(_param(where, "data_dir"), "data_roots", message)


def _check_known(
    value: object, known: tuple[str, ...], where: Location, what: str, *, optional: bool = False
) -> Iterator[Violation]:
    """``value`` is one of the ``known`` names (or None, when ``optional``)."""
    if not (value is None and optional) and (not isinstance(value, str) or value not in known):
        close = difflib.get_close_matches(value, known, n=1) if isinstance(value, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        yield Violation(where, "known_names", f"unknown {what} {value!r}{hint}: use one of {', '.join(known)}")


def _check_tokens(admission: Admission, where: Location, sizes: dict[str, Any]) -> Iterator[Violation]:
    """Each of ``sizes`` (a parameter or ``a*b`` product, by name: its value) within the policy's token limits."""
    for name, value in sizes.items():
        per_sequence = name in ("window", "max_length", "max_row_tokens", "max_new_tokens", "max_gen_toks")
        setting = "max_sequence_tokens" if per_sequence else "max_batch_tokens"
        cap = getattr(admission.policy, setting)
        if isinstance(value, bool) or not isinstance(value, int):
            yield Violation(_param(where, name.partition("*")[0]), "parameters", f"{name} must be an integer")
        elif value > cap:
            message = f"{name} = {value} tokens, over this server's limit of {cap}"
            yield Violation(_param(where, name.partition("*")[0]), setting, message)


def _scoring_sizes(built: Any) -> dict[str, Any]:
    sizes = {"max_row_tokens": built.max_row_tokens, "max_batch_tokens": built.max_batch_tokens}
    return sizes | ({"max_length": built.max_length} if built.max_length is not None else {})


def _check_lm_loss(admission: Admission, task: TaskSpec, built: Any, where: Location) -> Iterator[Violation]:
    yield from _check_data_dir(admission, task, where)
    yield from _check_known(built.corpus, tuple(CORPORA), _param(where, "corpus"), "corpus")
    sizes = {"window": built.window, "chunk_tokens": built.chunk_tokens}
    if isinstance(built.window, int) and isinstance(built.windows_per_batch, int):
        sizes["window*windows_per_batch"] = built.window * built.windows_per_batch
    else:
        sizes["windows_per_batch"] = built.windows_per_batch  # not an integer: refused as such
    yield from _check_tokens(admission, where, sizes)


def _check_multiple_choice(admission: Admission, task: TaskSpec, built: Any, where: Location) -> Iterator[Violation]:
    yield from _check_data_dir(admission, task, where)
    yield from _check_known(built.source, SOURCES, _param(where, "source"), "data source")
    splits = DATASETS[MULTIPLE_CHOICE_TASKS[built.task].dataset].splits
    yield from _check_known(built.split, splits, _param(where, "split"), f"split of {built.task}", optional=True)
    yield from _check_tokens(admission, where, _scoring_sizes(built))


def _check_mmlu(admission: Admission, task: TaskSpec, built: Any, where: Location) -> Iterator[Violation]:
    yield from _check_data_dir(admission, task, where)
    yield from _check_known(built.source, SOURCES, _param(where, "source"), "data source")
    yield from _check_known(built.split, MMLU_SPLITS, _param(where, "split"), "MMLU split")
    subjects = built.subjects
    if subjects is not None and (isinstance(subjects, str) or not isinstance(subjects, list | tuple)):
        yield Violation(_param(where, "subjects"), "known_names", "give subjects as a list of MMLU subject names")
    else:
        for index, subject in enumerate(subjects or ()):
            yield from _check_known(subject, SUBJECTS, (*_param(where, "subjects"), index), "MMLU subject")
    yield from _check_tokens(admission, where, _scoring_sizes(built))


def _check_lm_eval(admission: Admission, task: TaskSpec, built: Any, where: Location) -> Iterator[Violation]:
    if admission.dev:
        pass
    elif "include_path" in task.params:
        message = "a request may not name a folder: name a task of the server's task folders (lm_eval:<task>)"
        yield Violation(_param(where, "include_path"), "task_roots", message)
    else:
        yield from _check_lm_eval_name(admission, built.task, (*where, "name"))
    yield from _check_tokens(admission, where, _scoring_sizes(built) | _generation_sizes(built, built.max_gen_toks))


def _generation_sizes(built: Any, new_tokens: Any) -> dict[str, Any]:
    """A generative task's token sizes: the cap, the context, and a batch of full-length rows."""
    sizes = {"max_gen_toks" if hasattr(built, "max_gen_toks") else "max_new_tokens": new_tokens}
    length = built.max_length if built.max_length is not None else DEFAULT_MAX_LENGTH
    if built.max_length is not None:
        sizes["max_length"] = built.max_length
    if isinstance(built.batch_size, int) and isinstance(length, int) and not isinstance(built.batch_size, bool):
        sizes["batch_size*max_length"] = built.batch_size * length
    else:
        sizes["batch_size"] = built.batch_size  # not an integer: refused as such
    return sizes


def _check_generative(admission: Admission, task: TaskSpec, built: Any, where: Location) -> Iterator[Violation]:
    """GSM8K and LAMBADA: data folder, source and split known, token cap, context and batch within the limits."""
    yield from _check_data_dir(admission, task, where)
    yield from _check_known(built.source, SOURCES, _param(where, "source"), "data source")
    splits = GSM8K_SPLITS if task_kind(task.name) == "gsm8k" else LAMBADA_SPLITS
    yield from _check_known(built.split, splits, _param(where, "split"), f"split of {task_kind(task.name)}")
    if hasattr(built, "fewshot_split"):
        yield from _check_known(built.fewshot_split, GSM8K_SPLITS, _param(where, "fewshot_split"), "GSM8K split")
    yield from _check_tokens(admission, where, _generation_sizes(built, built.new_token_cap))


def _check_lm_eval_name(admission: Admission, name: str, where: Location) -> Iterator[Violation]:
    """A registered task name (never a file or a pattern), allowed by the policy and known to lm-eval."""
    if not _TASK_NAME.fullmatch(name) or name.endswith((".yaml", ".yml")):
        message = f"{name!r} is not an lm-eval task name: YAML tasks are read only from the server's task folders"
        yield Violation(where, "task_roots", message)
        return
    allowed = admission.policy.lm_eval_tasks
    if allowed is not None:
        if name not in allowed:
            yield Violation(where, "lm_eval_tasks", f"lm-eval task {name!r} is not allowed here: {', '.join(allowed)}")
        return
    if admission.task_root(name) is not None:
        return
    from shapley_svc.values.lm_eval_bridge import registered_tasks

    try:
        known = registered_tasks(None)
    except ConfigError:
        yield Violation(where, "lm_eval", "this server cannot run lm-eval tasks: lm-eval is not installed there")
        return
    if name not in known:
        close = difflib.get_close_matches(name, sorted(known), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        yield Violation(where, "known_names", f"lm-eval has no single task {name!r}{hint}")


TASK_CHECKS: dict[str, TaskCheck] = {
    "lm_loss": _check_lm_loss,
    "mmlu": _check_mmlu,
    **{kind: _check_multiple_choice for kind in MULTIPLE_CHOICE_TASKS},
    "gsm8k": _check_generative,
    "lambada": _check_generative,
    "lm_eval": _check_lm_eval,
}
"""One check per value-function kind (registry entry); a kind missing here is refused."""
