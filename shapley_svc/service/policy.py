"""The server's policy: what a job spec arriving over HTTP may read and how much of the machine it may take.

A section of the service settings (``policy:`` in the settings file, or ``SHAPLEY_SVC_POLICY_<SETTING>`` in
the environment). With no settings at all the defaults are safe: no local path may be named (no model
folder, no data folder, no task YAML), lm-eval tasks only by their registered names, workers and threads per
worker at most the server's cores, CPUs per worker above zero, and a cap on evaluations per job. The checks
themselves are in :mod:`shapley_svc.service.admission`; ``shapley-svc run`` and ``job`` read local paths as
before, as the policy governs only what arrives over HTTP.

Example settings file section::

    policy:
      model_roots: [/srv/models]          # local model folders a request may name
      data_roots: [/srv/data]             # data_dir of a task
      task_roots: [/srv/lm-eval-tasks]    # lm-eval YAML tasks, named by task name (lm_eval:<task>)
      models: [demo, HuggingFaceTB/*]     # names besides local folders: demo, hub ids ('*': one path part)
      max_workers: 4
      max_evaluations: 20000
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ROOT_SETTINGS = ("model_roots", "data_roots", "task_roots")
"""The policy settings that are lists of folders (``os.pathsep``-separated in the environment)."""
NAME_LIST_SETTINGS = ("models", "lm_eval_tasks", "executor_kinds")
"""The policy settings that are lists of names (comma-separated in the environment)."""


class ServicePolicy(BaseModel):
    """What a request may reach (roots, model names, lm-eval tasks) and use (workers, threads, budget, jobs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_roots: tuple[str, ...] = Field((), description="folders under which a request may name a local model")
    data_roots: tuple[str, ...] = Field((), description="folders under which a task's data_dir may lie")
    task_roots: tuple[str, ...] = Field(
        (), description="folders of lm-eval YAML tasks; a request names their tasks (lm_eval:<task>), never a path"
    )
    models: tuple[str, ...] = Field(
        ("demo",), description="model names allowed besides local folders: demo and hub ids; '*' matches in one part"
    )
    lm_eval_tasks: tuple[str, ...] | None = Field(
        None, description="lm-eval task names allowed; None: any single task lm-eval registers or task_roots hold"
    )
    executor_kinds: tuple[Literal["local", "ray"], ...] = Field(("local", "ray"), description="executor kinds allowed")
    max_workers: int | None = Field(None, ge=1, description="executor.num_workers at most; None: the server's cores")
    max_threads_per_worker: int | None = Field(None, ge=1, description="threads per worker; None: the server's cores")
    max_cpus_per_worker: float | None = Field(None, gt=0, description="CPUs per worker; None: the server's cores")
    max_gpus_per_worker: float = Field(1.0, ge=0, description="GPUs per worker; 0 also refuses device cuda")
    max_evaluations: int = Field(20_000, ge=1, description="evaluations per job: budget x granularities x estimators")
    max_tasks: int = Field(8, ge=1, description="tasks per job")
    max_sequence_tokens: int = Field(4096, ge=2, description="tokens per sequence (lm_loss window, max_length)")
    max_batch_tokens: int = Field(65_536, ge=2, description="tokens per batch a value function may pack")
    max_model_gib: float = Field(32.0, gt=0, description="weights of a local model folder, in GiB")
    max_jobs_per_token: int = Field(8, ge=1, description="queued and running jobs of the write token at once")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="size of a submitted job spec")
    local_threads: int = Field(
        1, ge=1, description="torch threads of kind-local jobs, which run in the server process (set once at start)"
    )
