"""Several tasks in one game: each column equals the single-task game."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values.base import ModelGame
from shapley_svc.values.lm_loss import LanguageModelingLoss
from shapley_svc.values.mmlu import MMLU
from shapley_svc.values.multi import MultiTask
from shapley_svc.values.multiple_choice import MultipleChoice


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("multi")
    (folder / "mmlu").mkdir()
    (folder / "piqa").mkdir()
    (folder / "wikitext2").mkdir()
    for split, count in (("test", 4), ("dev", 2)):
        rows = [
            {
                "id": f"anatomy/{split}/{i}",
                "subject": "anatomy",
                "question": f"Bone {i}?",
                "choices": ["arm", "leg", "rib", "skull"],
                "answer": i % 4,
            }
            for i in range(count)
        ]
        (folder / "mmlu" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    piqa = [
        {"id": f"val/{i}", "question": f"open jar {i}", "choices": ["twist lid", "hit it"], "answer": 0}
        for i in range(3)
    ]
    (folder / "piqa" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in piqa))
    text = " = Rivers = \n\n The river runs past the old mill and under the stone bridge to the town . \n" * 30
    (folder / "wikitext2" / "wiki.test.raw").write_text(text)
    return folder


def value_fns(data_dir: Path) -> list:
    return [
        MMLU(split="test", data_dir=data_dir, shots=2, metrics=("p_correct", "accuracy")),
        MultipleChoice("piqa", data_dir=data_dir),
        LanguageModelingLoss(data_dir=data_dir, window=32, windows=2),
    ]


def test_multi_task_columns_equal_single_task_games(data_dir: Path) -> None:
    loaded: LoadedModel = tiny_model("qwen2", num_layers=3, seed=4)
    masked = MaskedModel(loaded.model, loaded.layout, "sublayer")
    masks = np.random.default_rng(2).random((4, masked.n_players)) < 0.5
    multi = ModelGame(masked, MultiTask(value_fns(data_dir)), loaded.tokenizer, loaded.fingerprint)
    combined = multi(masks)
    singles = [ModelGame(masked, fn, loaded.tokenizer, loaded.fingerprint)(masks) for fn in value_fns(data_dir)]
    assert multi.task_names == (
        "mmlu.p_correct",
        "mmlu.accuracy",
        "piqa.acc",
        "piqa.acc_norm",
        "wikitext2.neg_loss",
    )
    np.testing.assert_allclose(combined, np.concatenate(singles, axis=1), rtol=0, atol=1e-6)
    assert multi.fingerprint() == multi.fingerprint()


def test_multi_task_rejects_empty_and_duplicate_columns(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        MultiTask([])
    with pytest.raises(ConfigError, match="distinct"):
        _ = MultiTask([MultipleChoice("piqa", data_dir=data_dir), MultipleChoice("piqa", data_dir=data_dir)]).task_names
