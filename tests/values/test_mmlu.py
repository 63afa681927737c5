"""MMLU k-shot value: prompt format, packed prefix reuse, letter-only scoring, shot dropping, sampling."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from shapley_svc.errors import ConfigError
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values import make_value_fn
from shapley_svc.values.base import ModelGame
from shapley_svc.values.mmlu import MMLU, MMLUResults, evaluate_questions

SUBJECTS = ("astronomy", "high_school_geography")


def write_mmlu(folder: Path, questions_per_subject: int = 5, dev_per_subject: int = 3) -> Path:
    """A small MMLU folder (test, validation + dev JSONL in the shared schema) with short questions; validation
    holds the test questions under validation ids (MMLU's default split)."""
    (folder / "mmlu").mkdir(parents=True, exist_ok=True)
    words = ["river", "stone", "market", "window", "bridge", "cat", "town", "water", "sky", "mill"]
    for split, count in (
        ("test", questions_per_subject),
        ("validation", questions_per_subject),
        ("dev", dev_per_subject),
    ):
        rows = []
        for subject_index, subject in enumerate(SUBJECTS):
            for index in range(count):
                word = words[(index + subject_index) % len(words)]
                rows.append(
                    {
                        "id": f"{subject}/{split}/{index}",
                        "subject": subject,
                        "question": f" Where is the {word} number {index}? ",
                        "choices": [f"near the {w}" for w in words[index : index + 4]],
                        "answer": (index + subject_index) % 4,
                    }
                )
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (folder / "mmlu" / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    return folder


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and a busy machine makes more threads much slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mmlu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mmlu(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def small_llama() -> LoadedModel:
    return tiny_model("llama", num_layers=3, seed=2)


def masks_for(masked: MaskedModel, count: int = 5, seed: int = 0) -> np.ndarray:
    masks = np.random.default_rng(seed).random((count, masked.n_players)) < 0.6
    masks[0] = True
    return masks


def test_prompt_is_the_lm_eval_mmlu_template(mmlu_dir: Path, small_llama: LoadedModel) -> None:
    value_fn = MMLU(subjects=("astronomy",), per_subject=1, shots=1, data_dir=mmlu_dir)
    value_fn.prepare(small_llama.tokenizer)
    expected = (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "Where is the river number 0?\nA. near the river\nB. near the stone\nC. near the market\n"
        "D. near the window\nAnswer: A\n\n"
        "Where is the river number 0?\nA. near the river\nB. near the stone\nC. near the market\n"
        "D. near the window\nAnswer:"
    )
    assert value_fn.questions[0].context == expected
    whole = small_llama.tokenizer(expected + " B", add_special_tokens=False)["input_ids"]
    question = value_fn.questions[0]
    assert [*question.input_ids, question.letter_ids[1]] == whole


def test_prefix_reuse_gives_the_same_values_as_no_reuse(mmlu_dir: Path, tiny: LoadedModel) -> None:
    masked = MaskedModel(tiny.model, tiny.layout, "sublayer")
    masks = masks_for(masked)
    values, per_question = [], []
    for reuse in (True, False):
        value_fn = MMLU(
            data_dir=mmlu_dir, shots=2, reuse_prefix=reuse, metrics=("p_correct", "accuracy"), max_row_tokens=300
        )
        values.append(ModelGame(masked, value_fn, tiny.tokenizer, tiny.fingerprint)(masks))
        per_question.append(evaluate_questions(masked, value_fn, tiny.tokenizer, masks[1]).letter_scores)
    assert len(value_fn._batches) >= 1
    np.testing.assert_allclose(values[0], values[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(per_question[0], per_question[1], rtol=0, atol=1e-5)


def test_packing_puts_several_questions_in_one_row(mmlu_dir: Path, small_llama: LoadedModel) -> None:
    packed = MMLU(data_dir=mmlu_dir, shots=2).prepare(small_llama.tokenizer)
    unpacked = MMLU(data_dir=mmlu_dir, shots=2, reuse_prefix=False).prepare(small_llama.tokenizer)
    assert sum(batch.input_ids.numel() for batch in packed) < 0.6 * sum(batch.input_ids.numel() for batch in unpacked)
    assert packed[0].attention_mask is not None and packed[0].attention_mask.ndim == 4


def direct_letter_logprobs(loaded: LoadedModel, masked: MaskedModel, value_fn: MMLU, mask: np.ndarray) -> np.ndarray:
    """Full-vocabulary log p(" X" | context) per question from a plain forward (lm-eval's computation)."""
    rows = []
    with torch.inference_mode(), masked.active(mask):
        for question in value_fn.questions:
            logits = loaded.model(torch.tensor([question.input_ids])).logits[0].float().log_softmax(-1)
            start = len(question.context_ids) - 1
            bridge = sum(float(logits[start + i, token]) for i, token in enumerate(question.bridge_ids))
            rows.append([bridge + float(logits[-1, letter]) for letter in question.letter_ids])
    return np.array(rows)


def test_letter_only_scoring_equals_full_logit_scoring(mmlu_dir: Path, small_llama: LoadedModel) -> None:
    masked = MaskedModel(small_llama.model, small_llama.layout, "block")
    mask = np.array([True, False, True])
    value_fn = MMLU(data_dir=mmlu_dir, shots=2, metrics=("p_correct", "accuracy"))
    results = evaluate_questions(masked, value_fn, small_llama.tokenizer, mask)
    direct = direct_letter_logprobs(small_llama, masked, value_fn, mask)
    np.testing.assert_allclose(results.letter_scores, direct, rtol=0, atol=1e-5)
    reference = MMLUResults(results.question_ids, results.subjects, results.gold, direct, full_vocab=True)
    game_values = ModelGame(masked, value_fn, small_llama.tokenizer, small_llama.fingerprint)(mask[None])
    assert game_values[0, 0] == pytest.approx(reference.p_correct.mean(), abs=1e-6)
    assert game_values[0, 1] == pytest.approx(reference.correct.mean(), abs=1e-12)


def test_long_prompts_drop_shots_instead_of_failing(mmlu_dir: Path, small_llama: LoadedModel) -> None:
    full = MMLU(data_dir=mmlu_dir, shots=3, max_length=4096)
    full.prepare(small_llama.tokenizer)
    longest = max(len(question.context_ids) for question in full.questions)
    short = MMLU(data_dir=mmlu_dir, shots=3, max_length=longest - 40)
    short.prepare(small_llama.tokenizer)
    assert min(question.shots for question in short.questions) < 3
    assert all(len(question.context_ids) <= longest - 40 for question in short.questions)
    masked = MaskedModel(small_llama.model, small_llama.layout, "block")
    assert np.isfinite(
        ModelGame(masked, short, small_llama.tokenizer, small_llama.fingerprint)(masks_for(masked))
    ).all()


def test_question_sample_is_fixed_by_its_seed(mmlu_dir: Path, small_llama: LoadedModel) -> None:
    def ids(seed: int) -> list[str]:
        value_fn = MMLU(data_dir=mmlu_dir, shots=1, sample=4, seed=seed)
        value_fn.prepare(small_llama.tokenizer)
        return [question.id for question in value_fn.questions]

    assert ids(3) == ids(3)
    assert len(ids(3)) == 4
    assert any(ids(seed) != ids(3) for seed in range(4, 8))


def test_fingerprint_is_stable_and_tracks_shots(mmlu_dir: Path, small_llama: LoadedModel) -> None:
    def fingerprint(shots: int, reuse: bool = True) -> str:
        value_fn = MMLU(data_dir=mmlu_dir, shots=shots, reuse_prefix=reuse)
        value_fn.prepare(small_llama.tokenizer)
        return value_fn.fingerprint()

    assert fingerprint(2) == fingerprint(2) == fingerprint(2, reuse=False)
    assert fingerprint(1) != fingerprint(2)
    with pytest.raises(ConfigError, match="prepare"):
        MMLU(data_dir=mmlu_dir).fingerprint()


def test_accuracy_comes_with_its_standard_error() -> None:
    scores = np.array([[0.0, -1, -2, -3], [0, -1, -2, -3], [0, -1, -2, -3], [0, -1, -2, -3]])
    results = MMLUResults(("a", "b", "c", "d"), ("s",) * 4, np.array([0, 0, 1, 2]), scores, full_vocab=False)
    mean, stderr = results.accuracy()
    assert mean == 0.5
    assert stderr == pytest.approx(math.sqrt(1 / 3 / 4))
    assert 0 < results.smooth()[0] < 1


def test_registry_builds_mmlu_and_suggests_names(mmlu_dir: Path) -> None:
    value_fn = make_value_fn("mmlu", {"data_dir": mmlu_dir, "shots": 1})
    assert isinstance(value_fn, MMLU)
    assert value_fn.task_names == ("mmlu.p_correct",)
    with pytest.raises(ConfigError, match="did you mean 'mmlu'"):
        make_value_fn("mmlu5")
    with pytest.raises(ConfigError, match="did you mean 'shots'"):
        make_value_fn("mmlu", {"shot": 3})
    with pytest.raises(ConfigError, match="unknown MMLU metric"):
        MMLU(metrics=("acc",))
