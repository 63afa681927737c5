"""Valuing a task item by item (the held-out game of plans): one column per item, equal to the item values.

Every family with per-item values is covered, generation included, and a game of them equals what each item
is worth under its coalition; a value function without items is refused when the game is built.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values.base import ModelGame, ValueFunction
from shapley_svc.values.items import item_value_groups
from shapley_svc.values.lambada import Lambada
from shapley_svc.values.lm_loss import LanguageModelingLoss
from shapley_svc.values.mmlu import MMLU
from shapley_svc.values.multi import MultiTask
from shapley_svc.values.multiple_choice import MultipleChoice
from shapley_svc.values.per_item import GenerativePerItem, PerItem, per_item

sys.path.insert(0, str(Path(__file__).parent))
from test_mmlu import write_mmlu  # fixture writer shared with the MMLU tests


@pytest.fixture(scope="module")
def small() -> LoadedModel:
    return tiny_model("llama", num_layers=3, seed=5)


@pytest.fixture(scope="module")
def masked(small: LoadedModel) -> MaskedModel:
    return MaskedModel(small.model, small.layout, "block")


@pytest.fixture(scope="module")
def lambada_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lambada")
    (folder / "lambada").mkdir()
    passages = [{"text": f"The boat drifts past the mill and under the old {word}"} for word in "abcde"]
    (folder / "lambada" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in passages))
    return folder


def families(tmp_path: Path, lambada_dir: Path) -> dict[str, ValueFunction]:
    mmlu_dir = write_mmlu(tmp_path / "mmlu", questions_per_subject=4, dev_per_subject=1)
    return {
        "lm_loss": LanguageModelingLoss(data_dir=default_data_dir(), window=16, windows=6, windows_per_batch=4),
        "mmlu": MMLU(data_dir=mmlu_dir, shots=1, metrics=("p_correct", "accuracy")),
        "arc_easy": MultipleChoice(task="arc_easy", limit=7, data_dir=default_data_dir()),
        "lambada": Lambada(source="local", data_dir=lambada_dir, max_new_tokens=3),
    }


def test_each_item_gets_its_column_and_they_average_to_the_value(
    masked: MaskedModel, small: LoadedModel, tmp_path: Path, lambada_dir: Path
) -> None:
    masks = np.random.default_rng(0).random((3, masked.n_players)) < 0.7
    masks[0] = True
    for family, value_fn in families(tmp_path, lambada_dir).items():
        whole = ModelGame(masked, value_fn, small.tokenizer, small.fingerprint)
        wrapped = per_item(value_fn)
        assert isinstance(wrapped, GenerativePerItem) == (family == "lambada"), family
        items = ModelGame(masked, wrapped, small.tokenizer, small.fingerprint)
        count, tasks = value_fn.item_count(), len(value_fn.task_names)  # type: ignore[attr-defined]
        assert items.task_names[:tasks] == tuple(f"{task}@0" for task in value_fn.task_names), family
        per_item_values = items(masks).reshape(len(masks), count, tasks)
        for row, mask in enumerate(masks):
            statistics = whole.statistics(mask[None])[0]
            (expected,) = item_value_groups(value_fn, statistics)
            np.testing.assert_allclose(per_item_values[row], expected.values, err_msg=family)
        if family != "lm_loss":  # equal weights: the columns' mean is the value
            np.testing.assert_allclose(per_item_values.mean(axis=1), whole(masks), err_msg=family)


def test_a_value_without_items_is_refused(small: LoadedModel, masked: MaskedModel) -> None:
    multi = MultiTask([LanguageModelingLoss(data_dir=default_data_dir(), window=16, windows=2)])
    with pytest.raises(ConfigError, match="no per-item values"):
        PerItem(multi)
    unprepared = PerItem(LanguageModelingLoss(data_dir=default_data_dir(), window=16, windows=2))
    with pytest.raises(ConfigError, match="prepare"):
        _ = unprepared.task_names
