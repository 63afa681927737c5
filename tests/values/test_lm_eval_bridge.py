"""The lm-eval bridge: a local YAML task as a value function, equal to lm-eval's own loop and to our MMLU."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from shapley_svc.data.mmlu import load_mmlu
from shapley_svc.engine import BatchedEngine
from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values import make_value_fn
from shapley_svc.values.base import ModelGame
from shapley_svc.values.lm_eval_bridge import LMEvalTask, load_task, masked_lm
from shapley_svc.values.lm_eval_local import write_mmlu_tasks
from shapley_svc.values.mmlu import MMLU
from shapley_svc.values.multiple_choice import gather_choice_statistics

pytest.importorskip("lm_eval", reason="the lm-eval bridge needs the optional extra lm-eval[hf]")
sys.path.insert(0, str(Path(__file__).parent))
from test_mmlu import write_mmlu  # fixture writer shared with the MMLU tests


@pytest.fixture(autouse=True, scope="module")
def isolated_hf_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """lm-eval's JSON loader caches under HF_HOME: point it at a temporary folder; one torch thread."""
    home = tmp_path_factory.mktemp("hf_home")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(home))
        patch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
        import datasets

        patch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    data = write_mmlu(tmp_path_factory.mktemp("bridge_data"), questions_per_subject=3, dev_per_subject=2)
    folder = tmp_path_factory.mktemp("bridge_tasks")
    names = write_mmlu_tasks(folder, load_mmlu(shots=2, data_dir=data))
    return data, folder, names


@pytest.fixture(scope="module")
def small_llama() -> LoadedModel:
    return tiny_model("llama", num_layers=3, seed=5)


def test_local_yaml_task_equals_our_mmlu_accuracy(task_dir: tuple[Path, Path, list[str]], small_llama) -> None:
    data, folder, names = task_dir
    masked = MaskedModel(small_llama.model, small_llama.layout, "sublayer")
    masks = np.random.default_rng(3).random((4, masked.n_players)) < 0.6
    masks[0] = True
    ours = MMLU(subjects=("astronomy",), split="test", data_dir=data, shots=2, metrics=("accuracy",))
    bridge = LMEvalTask(str(folder / f"{names[0]}.yaml"))
    ours_values = ModelGame(masked, ours, small_llama.tokenizer, small_llama.fingerprint)(masks)
    game = ModelGame(masked, bridge, small_llama.tokenizer, small_llama.fingerprint)
    assert game.task_names == ("local_mmlu_astronomy.acc",)
    np.testing.assert_allclose(game(masks), ours_values, rtol=0, atol=1e-12)


def test_packed_requests_equal_lm_eval_loop_over_masked_lm(task_dir: tuple[Path, Path, list[str]], small_llama) -> None:
    _, folder, names = task_dir
    masked = MaskedModel(small_llama.model, small_llama.layout, "block")
    mask = np.array([True, False, True])
    value_fn = LMEvalTask(names[1], include_path=folder)
    batches = value_fn.prepare(small_llama.tokenizer)
    engine = BatchedEngine(masked)
    statistics = [
        engine.evaluate(mask[None], batch, readout=lambda h, i=i: value_fn.score(i, h, masked.head))[0]
        for i, batch in enumerate(batches)
    ]
    ours = gather_choice_statistics(statistics, value_fn._request_count)
    task = load_task(names[1], include_path=folder)
    task.build_all_requests(limit=None, rank=0, world_size=1)
    instances = sorted(task.instances, key=lambda instance: (instance.doc_id, instance.idx))
    reference = masked_lm(masked, small_llama.tokenizer, mask).loglikelihood(instances, disable_tqdm=True)
    np.testing.assert_allclose(ours[:, 0], [ll for ll, _ in reference], rtol=0, atol=1e-5)
    assert ours[:, 1].astype(bool).tolist() == [greedy for _, greedy in reference]


def test_unknown_tasks_and_registry(task_dir: tuple[Path, Path, list[str]]) -> None:
    _, folder, names = task_dir
    value_fn = make_value_fn(f"lm_eval:{folder / (names[0] + '.yaml')}", {"limit": 2})
    assert isinstance(value_fn, LMEvalTask)
    with pytest.raises(ConfigError, match="lm_eval:"):
        make_value_fn("lm_eval:")
    with pytest.raises(ConfigError, match="does not know the task"):
        load_task("no_such_task_anywhere", include_path=folder)
