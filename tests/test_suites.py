"""Task suites: a file parses to the job's tasks, held-out counterparts and weights, or is refused by path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shapley_svc.data.splits import check_disjoint, task_slice
from shapley_svc.errors import ConfigError
from shapley_svc.suites import load_suite, parse_suite

SHIPPED = Path(__file__).resolve().parents[1] / "suites" / "tradeoffs.yaml"


def test_the_shipped_suite_parses_to_tasks_weights_and_clean_held_out_slices() -> None:
    suite = load_suite(SHIPPED)
    tasks, held_out = suite.job_tasks(), suite.held_out_tasks()
    assert [task.name for task in tasks] == ["lm_loss", "arc_easy", "piqa", "hellaswag", "lambada", "mmlu"]
    assert all(task.params["limit"] >= 200 for task in tasks if task.name in ("arc_easy", "piqa", "hellaswag"))
    assert [str(task_slice(task.name, task.params)) for task in held_out][:3] == [
        "wikitext2 test tokens 1024-2047",
        "arc_easy test items 0-199",
        "piqa validation items 200-399",
    ]
    check_disjoint([(t.name, t.params) for t in tasks], [(t.name, t.params) for t in held_out])
    assert suite.objective()["mmlu.p_correct"] == 1.0 and len(suite.objective()) == 6


def test_items_split_weight_and_held_out_items_map_onto_each_family(tmp_path: Path) -> None:
    path = tmp_path / "suite.json"
    path.write_text(
        '{"name": "s", "tasks": [{"name": "mmlu", "items": 3, "split": "test", "weight": 2, "held_out_items": 4},'
        ' {"name": "lm_loss", "items": 2}, {"name": "gsm8k", "items": 10, "params": {"shots": 1}}]}'
    )
    suite = load_suite(path)
    assert [task.params for task in suite.job_tasks()] == [
        {"per_subject": 3, "split": "test"},
        {"windows": 2},
        {"shots": 1, "limit": 10},
    ]
    mmlu, lm, gsm8k = suite.held_out_tasks()
    assert mmlu.params == {"per_subject": 4, "split": "test", "first_item": 3}
    assert lm.params["first_window"] == 2 and gsm8k.params["split"] == "test"
    assert suite.objective() == {"mmlu.p_correct": 2.0, "wikitext2.neg_loss": 1.0, "gsm8k.strict-match": 1.0}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "s", "tasks": [{"name": "piqa", "items": 10, "colour": 1}]}, "tasks.0.colour"),
        ({"name": "s", "tasks": [{"name": "piqa", "items": 10}], "extra": 1}, "extra"),
        ({"name": "s", "tasks": [{"name": "piqa", "items": "many"}]}, "tasks.0.items"),
        ({"name": "s", "tasks": [{"name": "piqa", "items": 10, "weight": -1}]}, "tasks.0.weight"),
        ({"tasks": [{"name": "piqa", "items": 10}]}, "name"),
        ({"name": "s", "tasks": [{"name": "piqa", "items": 5}, {"name": "piqqa"}]}, "tasks.1.name"),
        ({"name": "s", "tasks": [{"name": "piqa", "items": 5, "params": {"limmit": 3}}]}, "tasks.0.params"),
        ({"name": "s", "tasks": [{"name": "piqa"}]}, "tasks.0.params"),  # to the end: nothing left to judge
    ],
)
def test_bad_suites_are_refused_with_the_field_s_path(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match="task suite is invalid") as refused:
        parse_suite(data)
    assert f"  {field}:" in str(refused.value)


def test_every_bad_field_is_listed_at_once_and_files_must_be_yaml_or_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"2 problem\(s\)"):
        parse_suite({"name": "s", "tasks": [{"name": "nope"}, {"name": "piqa", "items": 2, "params": {"x": 1}}]})
    with pytest.raises(ConfigError, match="must end in"):
        load_suite(tmp_path / "suite.txt")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_suite([1, 2])


def test_run_with_a_suite_builds_its_tasks_held_out_counterparts_and_objective() -> None:
    from shapley_svc.cli import build_parser
    from shapley_svc.cli.game_options import resolve_defaults
    from shapley_svc.cli.run import build_spec

    args = build_parser().parse_args(["run", "--suite", str(SHIPPED), "--executor", "local"])
    resolve_defaults(args)
    spec = build_spec(args, n_players=6)
    assert [task.name for task in spec.tasks] == [task.name for task in load_suite(SHIPPED).job_tasks()]
    assert spec.held_out == load_suite(SHIPPED).held_out_tasks() and not spec.allow_overlap
    assert spec.plans and all(plan.objective == load_suite(SHIPPED).objective() for plan in spec.plans)
    plain = build_parser().parse_args(["run", "--executor", "local"])
    resolve_defaults(plain)
    assert [task.name for task in build_spec(plain, n_players=6).tasks] == ["lm_loss"]  # unchanged without a suite


def test_run_with_a_suite_reads_data_dir_unless_a_task_names_its_own(tmp_path: Path) -> None:
    from shapley_svc.cli import build_parser
    from shapley_svc.cli.game_options import resolve_defaults
    from shapley_svc.cli.run import build_spec

    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: two\ntasks:\n  - {name: piqa, items: 10}\n"
        "  - {name: arc_easy, items: 10, params: {data_dir: /elsewhere}}\n"
    )
    args = build_parser().parse_args(["run", "--suite", str(suite), "--data-dir", str(tmp_path), "--executor", "local"])
    resolve_defaults(args)
    spec = build_spec(args, n_players=6)
    for tasks in (spec.tasks, spec.held_out):
        assert [task.params["data_dir"] for task in tasks] == [str(tmp_path), "/elsewhere"]
