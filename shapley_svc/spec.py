"""Job specifications: typed, validated once at the edge (CLI, HTTP API, `ray job submit` entrypoint).

A :class:`JobSpec` says which model to load, which players (block and/or sublayer granularity), which
tasks (value functions by registry name + parameters; all of them are scored in one pass, one value column
each), which estimators (name + parameters + seed), the budget of coalition evaluations per
(granularity, estimator) run and its stopping rule, how to execute (in process or on a Ray actor pool), and
where the results store lives. Files are YAML or JSON; every validation problem becomes one
:class:`~shapley_svc.errors.ConfigError` that lists each bad field with its path.

Example (YAML)::

    model: {name: demo, dtype: bfloat16}
    players: {granularities: [block, sublayer]}
    tasks: [{name: lm_loss, params: {corpus: lambada, windows: 4}}]
    estimators: [{name: permutation, seed: 0}]
    budget: {evaluations: 512}
    executor: {kind: ray, address: auto, num_workers: 4, num_gpus_per_worker: 1}
    store: {path: results.sqlite}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from shapley_svc.errors import ConfigError
from shapley_svc.players import Granularity

SPEC_VERSION = 1

REUSE_ACROSS_SETUPS_HELP = (
    "serve cached values computed under another device type, dtype or torch / transformers version "
    "(recorded in each result's provenance); by default they are computed again"
)


class _Strict(BaseModel):
    """Base of every spec section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """Which model to load and how: ``demo``, a hub id or a local folder; dtype; device of each worker."""

    name: str = Field("demo", min_length=1, description="'demo', a Hugging Face hub id or a local folder")
    dtype: Literal["bfloat16", "float32", "float16", "auto"] = "bfloat16"
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="cpu, cuda or cuda:N on each worker")


class PlayersSpec(_Strict):
    """The player sets to value; one run per granularity (``block``: L players, ``sublayer``: 2L)."""

    granularities: list[Granularity] = Field(default_factory=lambda: [Granularity.BLOCK], min_length=1)

    @field_validator("granularities")
    @classmethod
    def _unique(cls, granularities: list[Granularity]) -> list[Granularity]:
        if len(set(granularities)) != len(granularities):
            raise ValueError(f"granularities {granularities} repeat a value; list each at most once")
        return granularities


class TaskSpec(_Strict):
    """One value function, by registry name and constructor parameters (e.g. ``lm_loss`` + ``windows``)."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class EstimatorSpec(_Strict):
    """One estimator, by registry name, parameters and seed; ``label`` names its results (default: name)."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(0, ge=0)
    label: str | None = Field(None, min_length=1)

    @property
    def key(self) -> str:
        """The name results of this estimator are stored under."""
        return self.label or self.name


class StoppingRuleSpec(_Strict):
    """A stopping criterion: one rule by registry name and parameters, or ``all_of`` / ``any_of`` a list of them.

    Example (YAML): ``{all_of: [{name: stderr_below, params: {threshold: 0.01}}, {name: rank_stable}]}``.
    """

    name: str | None = Field(None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    all_of: list[StoppingRuleSpec] | None = Field(None, min_length=1)
    any_of: list[StoppingRuleSpec] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> StoppingRuleSpec:
        forms = [key for key in ("name", "all_of", "any_of") if getattr(self, key) is not None]
        if len(forms) != 1:
            raise ValueError(f"give exactly one of name, all_of or any_of (got {forms or 'none'})")
        if self.params and self.name is None:
            raise ValueError("params belong to a named rule; put them inside the all_of / any_of entries")
        return self

    @model_serializer(mode="wrap")
    def _only_its_form(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump only the form given (a named rule dumps as ``{name, params}``, as before composition existed)."""
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


class BudgetSpec(_Strict):
    """Coalition evaluations allowed per (granularity, estimator) run, and optional early-stopping rules."""

    evaluations: int = Field(gt=0, description="coalition evaluations per (granularity, estimator) run")
    stopping: list[StoppingRuleSpec] = Field(
        default_factory=list, description="a run stops when any entry (or the budget) says so"
    )


class ExecutorSpec(_Strict):
    """Where coalitions are evaluated: in this process, or on a pool of Ray actors each holding one model."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(
        None, description="Ray address ('auto', 'ray://host:10001', 'host:6379'); None starts a local Ray"
    )
    num_workers: int = Field(1, ge=1, description="Ray actors, each with one resident model")
    num_gpus_per_worker: float = Field(0.0, ge=0)
    num_cpus_per_worker: float = Field(1.0, ge=0)
    threads_per_worker: int = Field(1, ge=1, description="torch.set_num_threads in each worker")
    chunk_size: int = Field(16, ge=1, description="coalitions per task sent to a worker")
    max_in_flight: int | None = Field(
        None, ge=1, description="chunks submitted and not yet done (default 2 per worker)"
    )
    max_worker_restarts: int = Field(8, ge=0, description="dead actors replaced before the job fails")

    @property
    def in_flight_limit(self) -> int:
        """Chunks allowed in flight: ``max_in_flight`` or two per worker (one running, one queued)."""
        return self.max_in_flight if self.max_in_flight is not None else 2 * self.num_workers

    @model_validator(mode="after")
    def _address_needs_ray(self) -> ExecutorSpec:
        if self.kind == "local" and self.address is not None:
            raise ValueError(f"address {self.address!r} is set but kind is 'local'; set kind: ray or drop address")
        return self


class StoreSpec(_Strict):
    """The results store: a SQLite file (created if missing) holding jobs, results and the value cache."""

    path: str = Field("shapley-svc.sqlite", min_length=1)
    reuse_across_setups: bool = Field(False, description=REUSE_ACROSS_SETUPS_HELP)


class PlanSpec(_Strict):
    """A plan the job searches after its estimators, on the same cached values (see ``shapley-svc plan``).

    Example (YAML): ``{remove: 8, budget: 106}``, or ``{most: true, limits: {wikitext2.neg_loss: 0.3}, budget: 200}``.
    """

    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    granularity: Granularity = Granularity.BLOCK
    target: Literal["block", "attn", "mlp", "any"] | None = Field(
        None, description="which players may go (default: block, or any sublayer at granularity sublayer)"
    )
    remove: int | None = Field(None, ge=1, description="how many players go (omit with most: true)")
    most: bool = Field(False, description="as many players as possible while every limit holds")
    method: str = Field("default", min_length=1, description="the plan searcher (shapley-svc plan --help)")
    params: dict[str, Any] = Field(default_factory=dict)
    budget: int = Field(gt=0, description="distinct coalitions the search may read")
    seed: int = Field(0, ge=0)
    objective: dict[str, float] | None = Field(None, description="task weights (default: the first task)")
    limits: dict[str, float] = Field(default_factory=dict, description="the most each task may lose")

    @model_validator(mode="after")
    def _one_size(self) -> PlanSpec:
        if (self.remove is None) == (not self.most):
            raise ValueError("give remove: K, or most: true with limits")
        if self.most and not self.limits:
            raise ValueError("most: true needs limits (the most a task may lose)")
        return self

    @property
    def resolved_target(self) -> str:
        """Which players may go: the target given, else blocks, or any sublayer at granularity sublayer."""
        return self.target or ("block" if self.granularity is Granularity.BLOCK else "any")

    @property
    def key(self) -> str:
        """The name the plan is stored under."""
        return self.name or f"{self.granularity.value}-{self.resolved_target}-{'most' if self.most else self.remove}"


class JobSpec(_Strict):
    """A whole job: model x granularities x estimators, each run scoring every task at once; then its plans."""

    version: Literal[1] = SPEC_VERSION
    name: str | None = Field(None, description="a human label for the job")
    model: ModelSpec = Field(default_factory=ModelSpec)
    players: PlayersSpec = Field(default_factory=PlayersSpec)
    tasks: list[TaskSpec] = Field(min_length=1)
    estimators: list[EstimatorSpec] = Field(min_length=1)
    budget: BudgetSpec
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    store: StoreSpec = Field(default_factory=StoreSpec)
    plans: list[PlanSpec] = Field(default_factory=list)
    held_out: list[TaskSpec] = Field(
        default_factory=list,
        description="tasks on other data than tasks (e.g. lm_loss windows after them, MMLU test questions) on "
        "which every plan is checked against the full model, item by item",
    )
    allow_overlap: bool = Field(
        False,
        description="allow held_out to share items with tasks (refused by default: a plan judged on the data it "
        "was chosen on looks better than it is; see shapley_svc.data.splits)",
    )

    @field_validator("estimators")
    @classmethod
    def _unique_estimator_keys(cls, estimators: list[EstimatorSpec]) -> list[EstimatorSpec]:
        keys = [estimator.key for estimator in estimators]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"estimators {repeated} appear more than once; give each a distinct 'label'")
        return estimators

    @model_validator(mode="after")
    def _plans_fit(self) -> JobSpec:
        keys = [plan.key for plan in self.plans]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"plans {repeated} appear more than once; give each a distinct 'name'")
        missing = sorted({plan.granularity.value for plan in self.plans} - set(self.players.granularities))
        if missing:
            raise ValueError(f"plans at granularity {missing} need it in players.granularities")
        return self

    def result_fingerprint(self) -> str:
        """sha256 of what decides the results (model, players, tasks, estimators, budget, plans), not where
        they run; a spec without plans keeps the fingerprint it had before plans existed."""
        sections = {"version", "model", "players", "tasks", "estimators", "budget"}
        sections |= {section for section in ("plans", "held_out") if getattr(self, section)}
        decisive = self.model_dump(mode="json", include=sections)
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()


def _format_errors(error: ValidationError) -> str:
    """One line per field error: ``tasks.0.name: Field required``."""
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {location}: {item['msg']}")
    return "\n".join(lines)


def parse_spec(data: object, *, source: str = "job spec") -> JobSpec:
    """Validate a mapping (parsed YAML / JSON) as a :class:`JobSpec`; errors list each bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of sections (model, tasks, ...), got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as error:
        raise ConfigError(
            f"{source} is invalid ({error.error_count()} problem(s)); fix these fields:\n{_format_errors(error)}"
        ) from error


def read_mapping_file(path: str | Path, what: str) -> object:
    """The parsed contents of a ``.yaml``, ``.yml`` or ``.json`` file (``what``: "job spec", "task suite", for
    the errors); a wrong suffix, an unreadable file or bad syntax is a ConfigError."""
    file = Path(path)
    if file.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"{what} {file} must end in .yaml, .yml or .json")
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {what} {file}: {error.strerror or error}") from error
    try:
        return json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{what} {file} is not valid {file.suffix[1:].upper()}: {error}") from error


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a job spec file (``.yaml``, ``.yml`` or ``.json``)."""
    return parse_spec(read_mapping_file(path, "job spec"), source=f"job spec {Path(path)}")


def dump_spec(spec: JobSpec, path: str | Path) -> None:
    """Write ``spec`` to ``path`` as YAML or JSON (by suffix), so that :func:`load_spec` reads it back."""
    spec_path = Path(path)
    data = spec.model_dump(mode="json")
    if spec_path.suffix.lower() == ".json":
        spec_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    else:
        spec_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


DEMO_SPEC_YAML = """\
name: demo
model: {name: demo, dtype: bfloat16, device: cpu}
players: {granularities: [block]}
tasks:
  - name: lm_loss
    params: {corpus: lambada, window: 128, windows: 4}
estimators:
  - {name: permutation, seed: 0}
budget: {evaluations: 240}
executor: {kind: local, chunk_size: 16}
store: {path: shapley-svc.sqlite}
"""


def demo_spec() -> JobSpec:
    """The embedded demo job: block Shapley values of the demo model on LAMBADA language modelling."""
    return parse_spec(yaml.safe_load(DEMO_SPEC_YAML), source="the embedded demo spec")
