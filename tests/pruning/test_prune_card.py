"""The pruned checkpoint's model card: the hub's format, every figure from the run's summary; no push offline."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import ModelCard

from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import DEMO_HUB_ID, DEMO_LICENSE
from shapley_svc.pruning import card
from shapley_svc.pruning.workflow import PruneReport, PruneRequest, check_request, prune


@pytest.fixture(scope="module")
def report(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> PruneReport:
    """A tiny Llama pruned by the workflow (a block and an attention, bias recovery, timed once)."""
    request = PruneRequest(
        model=str(tiny_checkpoint),
        out=tmp_path_factory.mktemp("card") / "pruned",
        blocks=(2,),
        attn=(1,),
        recovery="bias",
        window=32,
        calibration_windows=(4, 2),
        judge_windows=(8, 2),
        latency_repeats=1,
    )
    return prune(request)


def test_the_card_is_a_hub_model_card(report: PruneReport) -> None:
    assert report.card == report.out / "README.md"
    loaded = ModelCard.load(report.card)
    assert loaded.data.library_name == "transformers" and loaded.data.pipeline_tag == "text-generation"
    assert set(card.TAGS) <= set(loaded.data.tags)
    assert loaded.data.base_model is None  # a local folder has no hub id


def test_every_figure_of_the_card_comes_from_the_summary(report: PruneReport) -> None:
    text, summary = report.card.read_text(), report.summary
    assert "`layer1.attn`, `layer2.block`" in text and "4 before, 3 after" in text
    assert f"| {summary.judge_task} | {summary.judge_before:.4f} | {summary.judge_after:.4f} |" in text
    assert f"{summary.judge_recovered:.4f} |" in text and summary.judge_split.description in text
    assert f"| parameters | {summary.before.parameters:,} | {summary.after.parameters:,} |" in text
    assert f"| KV bytes/token (skip) | {summary.before.kv_bytes_per_token:,} |" in text
    assert f"{summary.calibration_before:.4f} without, {summary.calibration_after:.4f} with" in text
    assert summary.calibration_split is not None and summary.calibration_split.description in text
    assert f"{summary.after.latency_s * 1e3:.1f}" in text  # type: ignore[operator]
    assert "explicit list" in text and "load_skipping" in text


def test_what_is_known_of_the_base_model(tmp_path: Path) -> None:
    assert card.base_model("demo") == card.BaseModel("demo", DEMO_HUB_ID, DEMO_LICENSE)
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n\n# a model\n")
    assert card.base_model(str(tmp_path)) == card.BaseModel(str(tmp_path), None, "mit")
    assert card.base_model("someone/never-downloaded") == card.BaseModel(
        "someone/never-downloaded", "someone/never-downloaded", None
    )


def test_push_to_hub_offline_is_a_clear_error_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, report: PruneReport
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    request = PruneRequest(model="not/loaded", out=tmp_path / "out", blocks=(1,), push_to_hub="me/pruned")
    with pytest.raises(ConfigError, match=r"offline mode is on .*hf upload"):
        check_request(request)
    with pytest.raises(ConfigError, match="offline mode is on"):
        card.push_to_hub(report.out, "me/pruned")
    with pytest.raises(ConfigError, match="not a hub repository id"):
        card.check_hub_reachable("not a repo id!")
