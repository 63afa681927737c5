"""Job specs: defaults, strictness, field-error messages, YAML / JSON round trips, the embedded demo spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shapley_svc.errors import ConfigError
from shapley_svc.spec import JobSpec, demo_spec, dump_spec, load_spec, parse_spec

MINIMAL = {
    "tasks": [{"name": "lm_loss"}],
    "estimators": [{"name": "permutation"}],
    "budget": {"evaluations": 64},
}


def test_minimal_spec_gets_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.model.name == "demo"
    assert spec.players.granularities == ["block"]
    assert spec.executor.kind == "local"
    assert spec.executor.in_flight_limit == 2
    assert spec.estimators[0].key == "permutation"


def test_every_bad_field_is_listed_with_its_path() -> None:
    bad = {
        "model": {"dtype": "float8", "device": "tpu"},
        "players": {"granularities": ["block", "block"]},
        "tasks": [{"params": {}}],
        "estimators": [{"name": "permutation", "seed": -1, "extra": 1}],
        "budget": {"evaluations": 0},
    }
    with pytest.raises(ConfigError) as caught:
        parse_spec(bad)
    message = str(caught.value)
    for path in (
        "model.dtype",
        "model.device",
        "players.granularities",
        "tasks.0.name",
        "estimators.0.seed",
        "estimators.0.extra",
        "budget.evaluations",
    ):
        assert f"  {path}:" in message, path


def test_repeated_estimators_need_labels() -> None:
    twice = {**MINIMAL, "estimators": [{"name": "permutation"}, {"name": "permutation", "seed": 1}]}
    with pytest.raises(ConfigError, match="distinct 'label'"):
        parse_spec(twice)
    labelled = {**MINIMAL, "estimators": [{"name": "permutation"}, {"name": "permutation", "seed": 1, "label": "p1"}]}
    assert [e.key for e in parse_spec(labelled).estimators] == ["permutation", "p1"]


@pytest.mark.parametrize(
    ("plans", "message"),
    [
        ([{"budget": 10}], "give remove: K, or most: true"),
        ([{"remove": 2, "most": True, "limits": {"t": 0.1}, "budget": 10}], "give remove: K, or most: true"),
        ([{"most": True, "budget": 10}], "most: true needs limits"),
        ([{"remove": 2, "budget": 10}, {"remove": 2, "budget": 20}], "distinct 'name'"),
        ([{"granularity": "sublayer", "remove": 2, "budget": 10}], "need it in players.granularities"),
        ([{"remove": 2, "budget": 10, "name": "../x"}], "plans.0.name"),
    ],
)
def test_plans_say_how_many_go_once_each_at_a_granularity_the_job_has(plans: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec({**MINIMAL, "plans": plans})


def test_plans_are_named_by_granularity_target_and_size_and_decide_the_fingerprint() -> None:
    spec = parse_spec(
        {**MINIMAL, "players": {"granularities": ["block", "sublayer"]}, "plans": [
            {"remove": 2, "budget": 10},
            {"granularity": "sublayer", "target": "attn", "remove": 3, "budget": 10},
            {"granularity": "sublayer", "most": True, "limits": {"wikitext2.neg_loss": 0.1}, "budget": 10},
        ]}
    )  # fmt: skip
    assert [plan.key for plan in spec.plans] == ["block-block-2", "sublayer-attn-3", "sublayer-any-most"]
    without = parse_spec({**MINIMAL, "players": {"granularities": ["block", "sublayer"]}})
    assert spec.result_fingerprint() != without.result_fingerprint()


def test_local_executor_refuses_an_address() -> None:
    with pytest.raises(ConfigError, match="kind: ray"):
        parse_spec({**MINIMAL, "executor": {"address": "auto"}})


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trip(tmp_path: Path, suffix: str) -> None:
    spec = parse_spec({**MINIMAL, "executor": {"kind": "ray", "num_workers": 3}})
    path = tmp_path / f"job{suffix}"
    dump_spec(spec, path)
    assert load_spec(path) == spec


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"\.yaml, \.yml or \.json"):
        load_spec(tmp_path / "job.txt")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_spec(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_spec(listed)
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"tasks": []}))
    with pytest.raises(ConfigError, match=str(invalid)):
        load_spec(invalid)


def test_result_fingerprint_ignores_where_the_job_runs() -> None:
    local = parse_spec(MINIMAL)
    distributed = parse_spec({**MINIMAL, "executor": {"kind": "ray", "num_workers": 8}, "store": {"path": "x.db"}})
    more_budget = parse_spec({**MINIMAL, "budget": {"evaluations": 65}})
    assert local.result_fingerprint() == distributed.result_fingerprint()
    assert local.result_fingerprint() != more_budget.result_fingerprint()


def test_demo_spec_is_valid() -> None:
    spec = demo_spec()
    assert isinstance(spec, JobSpec)
    assert spec.model.name == "demo"
