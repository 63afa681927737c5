"""The prune workflow as a library call: the CLI's flags are the request's fields, and Python needs no argparse."""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from shapley_svc.cli import prune as prune_cli
from shapley_svc.errors import ConfigError
from shapley_svc.pruning.workflow import SUMMARY_FILE, PruneRequest, prune


def test_every_request_field_is_a_flag_with_the_same_default() -> None:
    parser = argparse.ArgumentParser()
    prune_cli.register(parser.add_subparsers())
    args = parser.parse_args(["prune", "--out", "somewhere"])
    for field in fields(PruneRequest):
        assert hasattr(args, field.name), field.name
        if field.default is not MISSING:
            assert getattr(args, field.name) == field.default, field.name


def test_prune_from_python_saves_the_checkpoint_and_its_summary(tiny_checkpoint: Path, tmp_path: Path) -> None:
    request = PruneRequest(
        model=str(tiny_checkpoint),
        out=tmp_path / "pruned",
        blocks=(2,),
        window=32,
        judge_windows=(8, 2),
        latency_repeats=0,
    )
    report = prune(request)
    assert report.plan.names == ("layer2.block",) and report.out == request.out
    assert report.summary.after.latency_s is None and report.summary.judge_recovered is None
    saved = json.loads((report.out / SUMMARY_FILE).read_text())
    assert saved["removed"] == ["layer2.block"] and saved["judge_after"] == report.summary.judge_after
    with pytest.raises(ConfigError, match="exists and is not empty"):
        prune(request)
