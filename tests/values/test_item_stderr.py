"""Per-item values and the bootstrap standard error of a task value.

Each value function's ``finalize`` equals the weighted mean of its item values (so the two cannot drift);
the vectorised bootstrap equals a brute-force one that resamples the items themselves and calls the value
function's own ``finalize``; for iid items it is close to std / sqrt(n). Valued item by item (``PerItem``, the
held-out game of plans), every family gives one column per item, equal to its item values.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.stats import bootstrap_stderr
from shapley_svc.values.base import ModelGame, ValueFunction
from shapley_svc.values.gsm8k import GSM8K
from shapley_svc.values.items import ItemValues, coalition_stderr, item_value_groups
from shapley_svc.values.lambada import Lambada
from shapley_svc.values.lm_loss import LanguageModelingLoss
from shapley_svc.values.mmlu import MMLU
from shapley_svc.values.multi import MultiTask
from shapley_svc.values.multiple_choice import MultipleChoice
from shapley_svc.values.per_item import GenerativePerItem, PerItem, per_item

sys.path.insert(0, str(Path(__file__).parent))
from test_mmlu import write_mmlu  # fixture writer shared with the MMLU tests

RESAMPLES = 2000
# Each bootstrap estimate of a standard error has a relative Monte-Carlo error of about 1 / sqrt(2 B):
# 1.6% at B = 2000, so two independent ones differ by about 2.2% (1 sd); 10% is more than 4 sd.
RELATIVE_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def small() -> LoadedModel:
    return tiny_model("llama", num_layers=3, seed=7)


@pytest.fixture(scope="module")
def masked(small: LoadedModel) -> MaskedModel:
    return MaskedModel(small.model, small.layout, "block")


@pytest.fixture(scope="module")
def mmlu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mmlu(tmp_path_factory.mktemp("mmlu"), questions_per_subject=6, dev_per_subject=2)


@pytest.fixture(scope="module")
def generative_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five GSM8K problems and six LAMBADA passages."""
    folder = tmp_path_factory.mktemp("generative")
    (folder / "gsm8k").mkdir()
    (folder / "lambada").mkdir()
    problems = [
        {"id": f"test/{i}", "question": f"Tom has {i} apples and buys 2. How many?", "answer": f"#### {i + 2}"}
        for i in range(5)
    ]
    (folder / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in problems))
    passages = [{"text": f"The river runs past the old mill and under the stone {word}"} for word in "abcdef"]
    (folder / "lambada" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in passages))
    return folder


def full_statistics(masked: MaskedModel, loaded: LoadedModel, value_fn: ValueFunction) -> list[np.ndarray]:
    """The statistics ``finalize`` gets for a random coalition of most players."""
    game = ModelGame(masked, value_fn, loaded.tokenizer, loaded.fingerprint)
    mask = np.random.default_rng(1).random(masked.n_players) < 0.7
    return game.statistics(mask[None])[0]


def lm_loss() -> LanguageModelingLoss:
    return LanguageModelingLoss(data_dir=default_data_dir(), window=16, windows=20, windows_per_batch=8)


# ----------------------------------------------------------------------------------------------- the bootstrap


def test_bootstrap_of_iid_items_is_std_over_sqrt_n() -> None:
    values = np.random.default_rng(0).normal(3.0, 2.0, size=(400, 2)) * [1.0, 10.0]
    expected = values.std(axis=0) / np.sqrt(len(values))
    np.testing.assert_allclose(bootstrap_stderr(values, resamples=4000, seed=1), expected, rtol=0.05)


def test_vectorised_bootstrap_equals_a_loop_of_weighted_means() -> None:
    rng = np.random.default_rng(2)
    values, weights = rng.normal(size=(60, 3)), rng.uniform(1, 5, size=60)
    looped = []
    for _ in range(RESAMPLES):
        drawn = rng.integers(0, len(values), size=len(values))
        looped.append(np.average(values[drawn], axis=0, weights=weights[drawn]))
    brute = np.std(looped, axis=0, ddof=1)
    np.testing.assert_allclose(bootstrap_stderr(values, weights, resamples=RESAMPLES), brute, rtol=RELATIVE_TOLERANCE)
    # the weights matter: the unweighted bootstrap is a different number here
    assert not np.allclose(bootstrap_stderr(values, resamples=RESAMPLES), brute, rtol=0.02)


def test_bootstrap_is_seeded_and_refuses_too_few_items() -> None:
    values = np.arange(10.0)
    assert bootstrap_stderr(values, seed=3) == bootstrap_stderr(values, seed=3)
    with pytest.raises(ConfigError, match="at least 2 items"):
        bootstrap_stderr(np.ones((1, 2)))
    with pytest.raises(ConfigError, match="positive weights"):
        bootstrap_stderr(values, np.zeros(10))


# ----------------------------------------------------------------------------------------------- against brute force


def brute_force_stderr(finalize_resampled, items: int, seed: int = 5) -> np.ndarray:
    """Standard deviation of ``finalize_resampled(drawn item indices)`` over RESAMPLES draws with replacement."""
    rng = np.random.default_rng(seed)
    return np.std([finalize_resampled(rng.integers(0, items, size=items)) for _ in range(RESAMPLES)], axis=0, ddof=1)


def test_lm_loss_stderr_equals_a_bootstrap_over_resampled_windows(masked: MaskedModel, small: LoadedModel) -> None:
    value_fn = lm_loss()
    game = ModelGame(masked, value_fn, small.tokenizer, small.fingerprint)
    result = coalition_stderr(game, resamples=RESAMPLES)
    windows = np.concatenate(game.statistics(np.ones((1, masked.n_players), dtype=bool))[0])  # [windows, 2]
    assert windows.shape == (20, 2) and result.items.tolist() == [20]
    np.testing.assert_allclose(result.values, game(np.ones((1, masked.n_players), dtype=bool))[0], rtol=1e-12)
    brute = brute_force_stderr(lambda drawn: value_fn.finalize([windows[drawn]]), len(windows))
    np.testing.assert_allclose(result.stderr, brute, rtol=RELATIVE_TOLERANCE)
    assert result.stderr[0] > 0


def test_mmlu_stderr_equals_a_bootstrap_over_resampled_questions(
    masked: MaskedModel, small: LoadedModel, mmlu_dir: Path
) -> None:
    value_fn = MMLU(data_dir=mmlu_dir, split="test", shots=1, metrics=("p_correct", "accuracy"))
    game = ModelGame(masked, value_fn, small.tokenizer, small.fingerprint)
    result = coalition_stderr(game, resamples=RESAMPLES)
    rows = np.concatenate(game.statistics(np.ones((1, masked.n_players), dtype=bool))[0])
    rows = rows[np.argsort(rows[:, 0])]  # one row per question: (index, four letter scores)

    def finalize_resampled(drawn: np.ndarray) -> np.ndarray:
        resampled = copy.copy(value_fn)  # the same value function over the drawn questions
        resampled.questions = [value_fn.questions[index] for index in drawn]
        renumbered = np.column_stack([np.arange(len(drawn)), rows[drawn, 1:]])
        return resampled.finalize([renumbered])

    brute = brute_force_stderr(finalize_resampled, len(rows))
    assert result.items.tolist() == [12, 12]
    np.testing.assert_allclose(result.stderr, brute, rtol=RELATIVE_TOLERANCE)


# ----------------------------------------------------------------------------------------------- finalize == mean


def assert_finalize_is_the_weighted_mean(value_fn: ValueFunction, statistics: list[np.ndarray]) -> None:
    groups = item_value_groups(value_fn, statistics)
    mean = np.concatenate([group.mean() for group in groups])
    np.testing.assert_allclose(value_fn.finalize(statistics), mean, rtol=1e-12, atol=1e-15)
    assert sum(group.values.shape[1] for group in groups) == len(value_fn.task_names)


def test_finalize_is_the_weighted_mean_of_item_values(
    masked: MaskedModel, small: LoadedModel, mmlu_dir: Path, generative_dir: Path
) -> None:
    value_fns: list[ValueFunction] = [
        lm_loss(),
        MMLU(data_dir=mmlu_dir, split="test", shots=1, metrics=("p_correct", "accuracy")),
        MultipleChoice("arc_easy", data_dir=default_data_dir(), limit=8, metrics=("acc", "acc_norm", "p_correct")),
        Lambada(source="local", data_dir=generative_dir, max_new_tokens=4),
        GSM8K(source="local", data_dir=generative_dir, split="test", shots=0, max_new_tokens=6),
    ]
    for value_fn in value_fns:
        statistics = full_statistics(masked, small, value_fn)
        assert_finalize_is_the_weighted_mean(value_fn, statistics)


def test_lm_loss_windows_are_weighted_by_their_tokens(masked: MaskedModel, small: LoadedModel) -> None:
    value_fn = lm_loss()
    items = value_fn.item_values(full_statistics(masked, small, value_fn))
    assert items.items == 20 and np.all(items.weights == 15)  # 16-token windows predict 15 tokens each


def test_multi_task_columns_keep_their_own_items(masked: MaskedModel, small: LoadedModel, mmlu_dir: Path) -> None:
    value_fn = MultiTask([lm_loss(), MMLU(data_dir=mmlu_dir, split="test", shots=1, metrics=("p_correct", "accuracy"))])
    game = ModelGame(masked, value_fn, small.tokenizer, small.fingerprint)
    statistics = game.statistics(np.ones((1, masked.n_players), dtype=bool))[0]
    assert_finalize_is_the_weighted_mean(value_fn, statistics)
    groups = item_value_groups(value_fn, statistics)
    assert [(group.items, group.values.shape[1]) for group in groups] == [(20, 1), (12, 2)]
    result = coalition_stderr(game)
    assert result.items.tolist() == [20, 12, 12] and np.all(result.stderr > 0)


def test_a_value_that_is_not_a_mean_over_items_says_so(masked: MaskedModel, small: LoadedModel) -> None:
    value_fn = PerItem(lm_loss())  # one column per window: values, not a mean over items
    statistics = full_statistics(masked, small, value_fn)
    with pytest.raises(ConfigError, match="not a mean over items"):
        item_value_groups(value_fn, statistics)
    with pytest.raises(ConfigError, match="weights"):
        ItemValues(np.ones((3, 1)), np.ones(2))


@pytest.fixture(scope="module")
def isolated_hf_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """lm-eval's JSON loader caches under HF_HOME: point it at a temporary folder."""
    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(home))
        patch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
        import datasets

        patch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
        yield


def test_lm_eval_task_items_are_its_documents(
    masked: MaskedModel, small: LoadedModel, mmlu_dir: Path, isolated_hf_home: None, tmp_path: Path
) -> None:
    pytest.importorskip("lm_eval", reason="the lm-eval bridge needs the optional extra lm-eval[hf]")
    from shapley_svc.data.mmlu import load_mmlu
    from shapley_svc.values.lm_eval_bridge import LMEvalTask, write_mmlu_tasks

    names = write_mmlu_tasks(tmp_path, load_mmlu(shots=1, data_dir=mmlu_dir))
    value_fn = LMEvalTask(str(tmp_path / f"{names[0]}.yaml"))
    statistics = full_statistics(masked, small, value_fn)
    assert_finalize_is_the_weighted_mean(value_fn, statistics)
    assert item_value_groups(value_fn, statistics)[0].items == 6


# ----------------------------------------------------------------------------------------------- item by item


def item_families(mmlu_dir: Path, generative_dir: Path) -> dict[str, ValueFunction]:
    return {
        "lm_loss": LanguageModelingLoss(data_dir=default_data_dir(), window=16, windows=6, windows_per_batch=4),
        "mmlu": MMLU(data_dir=mmlu_dir, shots=1, metrics=("p_correct", "accuracy")),
        "arc_easy": MultipleChoice(task="arc_easy", limit=7, data_dir=default_data_dir()),
        "lambada": Lambada(source="local", data_dir=generative_dir, max_new_tokens=3),
    }


def test_per_item_gives_each_item_its_column_and_they_average_to_the_value(
    masked: MaskedModel, small: LoadedModel, mmlu_dir: Path, generative_dir: Path
) -> None:
    masks = np.random.default_rng(0).random((3, masked.n_players)) < 0.7
    masks[0] = True
    for family, value_fn in item_families(mmlu_dir, generative_dir).items():
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


def test_per_item_refuses_a_value_without_items() -> None:
    multi = MultiTask([LanguageModelingLoss(data_dir=default_data_dir(), window=16, windows=2)])
    with pytest.raises(ConfigError, match="no per-item values"):
        PerItem(multi)
    unprepared = PerItem(LanguageModelingLoss(data_dir=default_data_dir(), window=16, windows=2))
    with pytest.raises(ConfigError, match="prepare"):
        _ = unprepared.task_names
