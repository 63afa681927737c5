"""Generic multiple choice: lm-eval's prompts and acc / acc_norm, packing, Winogrande partial scoring."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shapley_svc.data.multiple_choice import MultipleChoiceItem
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values import make_value_fn
from shapley_svc.values.base import ModelGame
from shapley_svc.values.multiple_choice import (
    TASKS,
    MultipleChoice,
    encode_pairs,
    hellaswag_preprocess,
    task_template,
)

ROWS = {
    "arc_easy": [
        {"id": "a1", "question": "Which is warm?", "choices": ["the sun", "ice", "snow", "a cold river"], "answer": 0},
        {"id": "a2", "question": "What do cats eat?", "choices": ["fish", "stones", "glass"], "answer": 0},
    ],
    "hellaswag": [
        {
            "id": "val/0",
            "subject": "Roof repair",
            "question": "A man is on a roof. he",
            "choices": ["is using a [title] tool.", "is holding a cat.", "pulls up roofing.", "sings."],
            "answer": 2,
            "ctx_a": "A man is on a roof.",
            "ctx_b": "he",
        },
    ],
    "piqa": [{"id": "val/0", "question": "dry a cat", "choices": ["use a towel ", "use the oven"], "answer": 0}],
    "boolq": [
        {
            "id": "val/0",
            "question": "is the river high in spring",
            "passage": "In spring the river is high.",
            "choices": ["no", "yes"],
            "answer": 1,
        },
    ],
    "winogrande": [
        {
            "id": "dev/0",
            "question": "The cat sat on the mat because the _ was warm.",
            "choices": ["cat", "mat"],
            "answer": 1,
        },
        {
            "id": "dev/1",
            "question": "Sarah helped Maria because _ was kind.",
            "choices": ["Sarah", "Maria"],
            "answer": 0,
        },
    ],
}


def write_tasks(folder: Path) -> Path:
    """Tiny data files for every multiple-choice task, in each task's default split."""
    for task, rows in {**ROWS, "arc_challenge": ROWS["arc_easy"]}.items():
        template = TASKS[task]
        (folder / template.dataset).mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (folder / template.dataset / f"{template.split}.jsonl").write_text(lines, encoding="utf-8")
    return folder


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("mc"))


@pytest.fixture(scope="module")
def small_llama() -> LoadedModel:
    return tiny_model("llama", num_layers=3, seed=3)


def direct_loglikelihoods(loaded: LoadedModel, masked: MaskedModel, value_fn: MultipleChoice, mask: np.ndarray):
    """Per item, log p(continuation | context) per choice from plain forwards (lm-eval's loop)."""
    assert value_fn._requests is not None
    result = []
    with torch.inference_mode(), masked.active(mask):
        for request in value_fn._requests:
            lls = []
            for context, continuation in encode_pairs(loaded.tokenizer, request.pairs, add_bos=False):
                whole = context + continuation
                logits = loaded.model(torch.tensor([whole[:-1]])).logits[0, len(context) - 1 :]
                logprobs = F.log_softmax(logits.float(), dim=-1)
                lls.append(float(logprobs.gather(1, torch.tensor(continuation)[:, None]).sum()))
            result.append(np.array(lls))
    return result


@pytest.mark.parametrize("task", [*ROWS, "arc_challenge"])
def test_values_equal_lm_eval_loop_with_and_without_packing(
    task: str, data_dir: Path, small_llama: LoadedModel
) -> None:
    masked = MaskedModel(small_llama.model, small_llama.layout, "sublayer")
    masks = np.random.default_rng(1).random((3, masked.n_players)) < 0.6
    masks[0] = True
    values = []
    for reuse in (True, False):
        value_fn = MultipleChoice(task, data_dir=data_dir, reuse_prefix=reuse, metrics=("acc", "acc_norm", "p_correct"))
        values.append(ModelGame(masked, value_fn, small_llama.tokenizer, small_llama.fingerprint)(masks))
    np.testing.assert_allclose(values[0], values[1], rtol=0, atol=1e-6)
    for mask, row in zip(masks, values[0], strict=True):
        direct = direct_loglikelihoods(small_llama, masked, value_fn, mask)
        expected = value_fn.per_item_metrics(direct)
        np.testing.assert_allclose(row, [expected[m].mean() for m in ("acc", "acc_norm", "p_correct")], atol=1e-5)


def test_default_metrics_follow_lm_eval(data_dir: Path) -> None:
    assert MultipleChoice("arc_easy", data_dir=data_dir).task_names == ("arc_easy.acc", "arc_easy.acc_norm")
    assert MultipleChoice("boolq", data_dir=data_dir).task_names == ("boolq.acc",)
    assert MultipleChoice("winogrande", data_dir=data_dir).task_names == ("winogrande.acc",)


def test_prompts_match_the_lm_eval_task_yamls() -> None:
    arc = task_template("arc_easy").build(MultipleChoiceItem("x", "Why?", ("a b", "c"), 1))
    assert arc.pairs == (("Question: Why?\nAnswer:", " a b"), ("Question: Why?\nAnswer:", " c"))
    boolq = task_template("boolq").build(MultipleChoiceItem("x", "is it", ("no", "yes"), 1, extra={"passage": "P."}))
    assert boolq.pairs[1] == ("P.\nQuestion: is it?\nAnswer:", " yes")
    wino = task_template("winogrande").build(MultipleChoiceItem("x", "A _ sat down.", ("cat", "dog"), 0))
    assert wino.pairs == (("A cat", " sat down."), ("A dog", " sat down."))
    hella = task_template("hellaswag").build(
        MultipleChoiceItem(
            "x",
            "",
            ("is [title] here.", "b"),
            0,
            subject="Cooking",
            extra={"ctx_a": "A man cooks.", "ctx_b": "then he"},
        )
    )
    assert hella.pairs[0] == ("Cooking: A man cooks. Then he", " is. here.")
    # as lm-eval's utils.preprocess: " [title]" -> ". ", other [markers] dropped, then one double space collapsed
    assert hellaswag_preprocess("  a [header] b  [title] c ") == "a b . c"


def test_registry_builds_multiple_choice_tasks(data_dir: Path) -> None:
    value_fn = make_value_fn("piqa", {"data_dir": data_dir})
    assert isinstance(value_fn, MultipleChoice)
    assert value_fn.task == "piqa"
