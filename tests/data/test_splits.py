"""Clean splits: the slice each task family reads, its judging counterpart, and the overlap refusal."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from shapley_svc.data.splits import (
    DataSlice,
    check_disjoint,
    judging_task,
    overlaps,
    seed_paper_note,
    split_provenance,
    task_slice,
)
from shapley_svc.errors import ConfigError

SINGLE_SPLIT = ("piqa", "hellaswag", "boolq", "winogrande")

# (name, estimation params, expected estimation slice text, expected judging slice text)
FAMILIES: list[tuple[str, dict[str, Any], str, str]] = [
    ("mmlu", {"per_subject": 5}, "mmlu validation items 0-4", "mmlu test items 0-4"),
    ("mmlu", {"split": "test", "per_subject": 5}, "mmlu test items 0-4", "mmlu test items 5-9"),
    ("arc_easy", {"limit": 200}, "arc_easy validation items 0-199", "arc_easy test items 0-199"),
    (
        "arc_challenge",
        {"split": "test", "limit": 50},
        "arc_challenge test items 0-49",
        "arc_challenge test items 50-99",
    ),
    *[
        (task, {"limit": 200}, f"{task} validation items 0-199", f"{task} validation items 200-399")
        for task in SINGLE_SPLIT
    ],
    ("lambada", {"limit": 100}, "lambada test items 0-99", "lambada test items 100-199"),
    ("gsm8k", {"limit": 50}, "gsm8k train items 1000-1049", "gsm8k test items 0-49"),
    ("gsm8k", {"split": "test", "limit": 50}, "gsm8k test items 0-49", "gsm8k test items 50-99"),
    ("lm_loss", {"corpus": "wikitext2", "windows": 4}, "wikitext2 test tokens 0-511", "wikitext2 test tokens 512-1023"),
]


@pytest.mark.parametrize(("name", "params", "estimated", "judged"), FAMILIES)
def test_each_family_estimates_and_judges_on_disjoint_slices(
    name: str, params: dict[str, Any], estimated: str, judged: str
) -> None:
    judging = judging_task(name, params)
    assert str(task_slice(name, params)).startswith(estimated)
    assert str(task_slice(judging["name"], judging["params"])).startswith(judged)
    check_disjoint([(name, params)], [(judging["name"], judging["params"])])  # clean: nothing raised


@pytest.mark.parametrize(("name", "params", "estimated", "judged"), FAMILIES)
def test_judging_on_the_estimation_data_is_refused_unless_allowed(
    name: str, params: dict[str, Any], estimated: str, judged: str
) -> None:
    with pytest.raises(ConfigError, match="overlaps") as refused:
        check_disjoint([(name, params)], [(name, params)])
    assert str(refused.value).count(estimated) == 2 and "allow_overlap" in str(refused.value)
    check_disjoint([(name, params)], [(name, params)], allow_overlap=True)


def test_default_splits_are_clean_for_the_two_split_families() -> None:
    assert task_slice("mmlu").split == "validation" and task_slice("arc_easy").split == "validation"
    assert task_slice("gsm8k").split == "train" and task_slice("gsm8k").start == 1000
    assert judging_task("mmlu")["params"] == {"per_subject": None, "first_item": 0, "split": "test"}


@pytest.mark.parametrize("name", [*SINGLE_SPLIT, "lambada"])
def test_a_single_split_set_estimated_to_its_end_has_nothing_left_to_judge(name: str) -> None:
    with pytest.raises(ConfigError, match="give it a limit"):
        judging_task(name)


def test_partly_overlapping_ranges_are_refused_and_adjacent_ones_are_not() -> None:
    with pytest.raises(
        ConfigError, match=r"piqa validation items 150-349\) overlaps tasks.0 piqa \(piqa validation items 0-199\)"
    ):
        check_disjoint([("piqa", {"limit": 200})], [("piqa", {"first_item": 150, "limit": 200})])
    assert not overlaps([("piqa", {"limit": 200})], [("piqa", {"first_item": 200})])
    assert not overlaps([("piqa", {"limit": 200})], [("hellaswag", {"limit": 200})])


def test_lm_loss_windows_are_compared_in_tokens_whatever_their_size() -> None:
    calibration = ("lm_loss", {"window": 128, "windows": 4})  # tokens 0-511
    assert overlaps([calibration], [("lm_loss", {"window": 256, "first_window": 1})])  # tokens 256-511
    assert not overlaps([calibration], [("lm_loss", {"window": 256, "first_window": 2})])
    assert not overlaps([calibration], [("lm_loss", {"corpus": "lambada", "window": 128, "windows": 4})])


def test_lambada_text_windows_and_lambada_items_cannot_be_told_apart_so_they_overlap() -> None:
    assert overlaps([("lm_loss", {"corpus": "lambada"})], [("lambada", {"first_item": 4000})])


def test_mmlu_slices_of_other_subjects_do_not_overlap() -> None:
    first = ("mmlu", {"split": "test", "subjects": ["astronomy"]})
    assert not overlaps([first], [("mmlu", {"split": "test", "subjects": ["marketing"]})])
    assert overlaps([first], [("mmlu", {"split": "test"})])  # all subjects include astronomy


def test_lm_eval_tasks_overlap_themselves_and_have_no_judging_counterpart() -> None:
    assert task_slice("lm_eval:arc_easy", {"limit": 10}) == DataSlice("lm_eval:arc_easy", "?", 0, 10)
    assert overlaps([("lm_eval:arc_easy", {"limit": 10})], [("lm_eval:arc_easy", {})])
    assert not overlaps([("lm_eval:arc_easy", {})], [("arc_easy", {"split": "test"})])
    with pytest.raises(ConfigError, match="lm-eval picks its own split"):
        judging_task("lm_eval:arc_easy")


def test_judging_items_size_the_counterpart() -> None:
    judged = judging_task("piqa", {"limit": 200, "metrics": ["acc"]}, items=50)
    assert judged["params"] == {"limit": 50, "first_item": 200, "split": "validation", "metrics": ["acc"]}
    lm = judging_task("lm_loss", {"windows": 4, "window": 64}, items=2)["params"]
    assert lm == {"windows": 2, "window": 64, "first_window": 4}


def test_provenance_records_both_sides_and_the_seed_paper_note() -> None:
    record = split_provenance([("mmlu", {"split": "test"})], [("mmlu", {"split": "test"})], True)
    assert record["allow_overlap"] and record["overlapping"] and record["judging_slices"][0]["split"] == "test"
    assert "seed paper" in (seed_paper_note([("mmlu", {"split": "test"})]) or "")
    assert seed_paper_note([("mmlu", {})]) is None


def test_run_s_held_out_windows_come_from_the_judging_counterpart() -> None:
    from shapley_svc.cli.game_options import held_out_task

    args = argparse.Namespace(corpus="wikitext2", windows=4, window=128, data_dir=None, held_out_windows=None)
    task = held_out_task(args)
    assert task["params"]["first_window"] == 4 and task["params"]["windows"] == 4
    assert not overlaps([("lm_loss", {"windows": 4})], [(task["name"], task["params"])])
