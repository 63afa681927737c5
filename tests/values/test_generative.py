"""Generative value functions (GSM8K, LAMBADA): lm-eval's prompts and answer extraction, values under each
coalition through ModelGame, games mixing generation with token batches, fingerprints and errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.engine.generation import StopRule, generate_greedy, generated_text
from shapley_svc.errors import ConfigError, EvaluationError
from shapley_svc.model.loading import LoadedModel, tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values import make_value_fn
from shapley_svc.values.base import ModelGame, generated_statistics
from shapley_svc.values.gsm8k import FILTERS, GSM8K, exact_match, extract_answer
from shapley_svc.values.lambada import FIRST_WORD, STOP, Lambada, first_word
from shapley_svc.values.lm_loss import LanguageModelingLoss
from shapley_svc.values.multi import MultiTask

SHARED_GSM8K = default_data_dir() / "gsm8k" / "test.jsonl"
GENERATIONS = (
    " She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs, so she makes 9 * 2 = $<<9*2=18>>18.\n#### 18",
    " The answer is $1,250.50.",
    " #### -3.",
    " I think 7 or 8, maybe 12",
    " no idea",
    "",
    " #### 18 and then #### 20",
    " 0.5.",
)
WORDS = (" signs", ' signs" he said', " don't", ' "Nadia', "", " ", "\u201cSal\u201d ", " thought...Tess", " dog,")


@pytest.fixture(scope="module")
def small() -> LoadedModel:
    return tiny_model("llama", num_layers=3, seed=5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four GSM8K test and three train problems, five LAMBADA passages and a little WikiText-like text."""
    folder = tmp_path_factory.mktemp("generative")
    for dataset in ("gsm8k", "lambada", "wikitext2"):
        (folder / dataset).mkdir()
    problems = {
        split: [
            {
                "id": f"{split}/{i}",
                "question": f"Tom has {i} apples and buys {i + 2}. How many?",
                "answer": f"He has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2}.\n#### {2 * i + 2}",
            }
            for i in range(count)
        ]
        for split, count in (("test", 4), ("train", 3))
    }
    for split, rows in problems.items():
        (folder / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    passages = [{"text": f"The river runs past the old mill and under the stone {word}"} for word in "abcde"]
    (folder / "lambada" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in passages))
    text = " = Rivers = \n\n The river runs past the old mill and under the stone bridge to the town . \n" * 30
    (folder / "wikitext2" / "wiki.test.raw").write_text(text)
    return folder


def test_lambada_first_word_is_lm_eval_regex_filter_with_the_same_pattern() -> None:
    pytest.importorskip("lm_eval", reason="compares with lm-eval's regex filter")
    from lm_eval.filters.extraction import RegexFilter

    theirs = RegexFilter(regex_pattern=FIRST_WORD.pattern).apply([[text] for text in WORDS], [None] * len(WORDS))
    assert [first_word(text) for text in WORDS] == [row[0] for row in theirs]
    assert [first_word(text) for text in WORDS[:4]] == ["signs", "signs", "don't", '"Nadia']


@pytest.mark.parametrize("name", list(FILTERS))
def test_gsm8k_answer_extraction_and_exact_match_are_lm_eval_s(name: str) -> None:
    pytest.importorskip("lm_eval", reason="compares with lm-eval's regex filter and exact_match")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    pattern, group = FILTERS[name]
    extracted = RegexFilter(pattern.pattern, group_select=group).apply([[text] for text in GENERATIONS], [None] * 8)
    assert [extract_answer(text, pattern, group) for text in GENERATIONS] == [row[0] for row in extracted]
    reference = "She sells 9 eggs.\n#### 18"
    ignored = [",", "\\$", "(?s).*#### ", "\\.$"]
    for (prediction,) in extracted:
        score = exact_match_hf_evaluate([prediction], [reference], regexes_to_ignore=ignored, ignore_case=True)
        assert exact_match(prediction, reference) == bool(score["exact_match"])
    assert exact_match(extract_answer(GENERATIONS[0], pattern, group), reference)


def test_gsm8k_prompts_stops_and_scores_equal_lm_eval_s_own_task(tmp_path: Path) -> None:
    """lm-eval's bundled gsm8k task over the shared rows: same prompts (its seeded 5-shot draw), same stop
    sequences, and its filters and metric give our per-question scores on the same texts."""
    pytest.importorskip("lm_eval", reason="compares with lm-eval's gsm8k task")
    if not SHARED_GSM8K.is_file():
        pytest.skip(f"the shared GSM8K file is not at {SHARED_GSM8K} (set SHAPLEY_SVC_DATA_DIR)")
    from shapley_svc.values.lm_eval_bridge import load_task
    from shapley_svc.values.lm_eval_local import write_gsm8k_task

    name = write_gsm8k_task(tmp_path / "tasks")
    task = load_task(name, include_path=tmp_path / "tasks")
    task.build_all_requests(limit=len(GENERATIONS), rank=0, world_size=1)
    instances = sorted(task.instances, key=lambda instance: instance.doc_id)
    ours = GSM8K(split="test", limit=len(GENERATIONS))
    assert ours.prompts() == [instance.args[0] for instance in instances]
    assert instances[0].args[1]["until"] == ["Question:", "</s>", "<|im_end|>"]
    for instance, text in zip(instances, GENERATIONS, strict=True):
        instance.resps, instance.filtered_resps = [text], {}
    task.apply_filters()
    per_item = ours.per_item_metrics(list(GENERATIONS))
    for key in FILTERS:
        theirs = [task.process_results(i.doc, [i.filtered_resps[key]])["exact_match"] for i in instances]
        assert per_item[key].tolist() == theirs
    assert per_item["strict-match"][0] == 1.0  # the first generation is the right answer, 18, for question 0


def greedy_texts(loaded: LoadedModel, prompts: list[str], stop: tuple[str, ...], cap: int) -> list[str]:
    """Reference texts of ``prompts``: one prompt at a time, straight through the generation engine."""
    rule = StopRule(stop, cap)
    ids = [loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    tokens = [generate_greedy(loaded.model, loaded.tokenizer, [prompt], rule).tokens[0] for prompt in ids]
    return [generated_text(loaded.tokenizer, row, stop) for row in tokens]


def test_lambada_and_gsm8k_values_under_each_coalition(small: LoadedModel, data_dir: Path) -> None:
    masked = MaskedModel(small.model, small.layout, "sublayer")
    masks = np.array([[1] * 6, [1, 0, 0, 1, 1, 1], [0] * 6], dtype=bool)
    lambada = Lambada(source="local", data_dir=data_dir, batch_size=2)
    gsm8k = GSM8K(
        split="test", source="local", data_dir=data_dir, shots=1, max_new_tokens=12, fewshot_sampler="first_n"
    )
    ticks: list[int] = []
    lambada_game = ModelGame(masked, lambada, small.tokenizer, small.fingerprint)
    gsm8k_game = ModelGame(masked, gsm8k, small.tokenizer, small.fingerprint)
    values = np.hstack([lambada_game(masks, progress=lambda: ticks.append(1)), gsm8k_game(masks)])
    assert lambada_game.task_names == ("lambada.acc",) and gsm8k_game.task_names[0] == "gsm8k.strict-match"
    assert len(ticks) == len(masks)  # one tick per coalition: no token batches
    stop = (*STOP, small.tokenizer.eos_token)
    for mask, row in zip(masks, values, strict=True):
        with masked.active(mask):
            texts = greedy_texts(small, [item.context for item in lambada.items], stop, 8)
            maths = greedy_texts(small, gsm8k.prompts(), ("Question:", "</s>", "<|im_end|>", "</s>"), 12)
        expected = np.mean([first_word(t) == item.target for t, item in zip(texts, lambada.items, strict=True)])
        assert row[0] == expected
        assert row[1:].tolist() == [gsm8k.per_item_metrics(maths)[name].mean() for name in FILTERS]
    assert lambada.last_cost.prompts == 5 and lambada.cost.prompts == 15


def test_a_game_generates_its_coalitions_together_as_each_alone(small: LoadedModel, data_dir: Path) -> None:
    masked = MaskedModel(small.model, small.layout, "sublayer")
    masks = np.array([[1] * 6, [1, 1, 1, 0, 1, 1], [1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0] * 6], dtype=bool)
    for value_fn in (
        Lambada(source="local", data_dir=data_dir, batch_size=2),
        GSM8K(split="test", source="local", data_dir=data_dir, shots=1, max_new_tokens=12, fewshot_sampler="first_n"),
    ):
        game = ModelGame(masked, value_fn, small.tokenizer, small.fingerprint)
        one_by_one = [game.statistics(mask[None])[0] for mask in masks]
        for alone, together in zip(one_by_one, game.statistics(masks), strict=True):
            assert np.array_equal(alone[-1], together[-1]), "a chunk (shared prefill) writes what each writes alone"
        ticks: list[int] = []
        together = value_fn.generate_coalitions(masked, masks, progress=lambda ticks=ticks: ticks.append(1))
        assert len(ticks) == len(masks) and len(together) == len(masks)
        for alone, shared in zip(one_by_one, together, strict=True):
            assert np.array_equal(alone[-1], shared[0])
            assert np.array_equal(value_fn.finalize(alone), value_fn.finalize(shared))
        assert value_fn.last_cost.prompts == len(value_fn.prompt_generation.prompts)


def test_prompts_are_lm_eval_s_gsm8k_format(data_dir: Path) -> None:
    value_fn = GSM8K(split="test", source="local", data_dir=data_dir, shots=2, fewshot_sampler="first_n", limit=1)
    (prompt,) = value_fn.prompts()
    assert prompt.startswith("Question: Tom has 0 apples and buys 2. How many?\nAnswer: He has 0 + 2 = ")
    assert prompt.count("\n\nQuestion: ") == 2 and prompt.endswith("How many?\nAnswer:")
    drawn = GSM8K(split="test", source="local", data_dir=data_dir, shots=2, limit=3).prompts()  # lm-eval's seeded draw
    assert (
        drawn == GSM8K(split="test", source="local", data_dir=data_dir, shots=2, limit=3).prompts()
        and len(set(drawn)) == 3
    )


def test_fingerprints_follow_what_the_text_depends_on(small: LoadedModel, data_dir: Path) -> None:
    def fingerprint(**settings: object) -> str:
        value_fn = Lambada(source="local", data_dir=data_dir, **settings)  # type: ignore[arg-type]
        value_fn.prepare(small.tokenizer)
        return value_fn.fingerprint()

    base = fingerprint()
    assert fingerprint(batch_size=1) == base and fingerprint(use_cache=False) == base
    assert fingerprint(max_new_tokens=4) != base and fingerprint(limit=3) != base and fingerprint(add_bos=True) != base
    with pytest.raises(ConfigError, match="prepare"):
        Lambada(source="local", data_dir=data_dir).fingerprint()


def test_a_game_mixing_generation_and_token_batches_equals_the_single_games(small: LoadedModel, data_dir: Path) -> None:
    masked = MaskedModel(small.model, small.layout, "block")
    masks = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=bool)
    parts: list[Callable[[], object]] = [
        lambda: LanguageModelingLoss(data_dir=data_dir, window=32, windows=2),
        lambda: Lambada(source="local", data_dir=data_dir, max_new_tokens=4),
        lambda: GSM8K(
            split="test", source="local", data_dir=data_dir, shots=0, max_new_tokens=6, metrics=("flexible-extract",)
        ),
    ]
    multi = MultiTask([make() for make in parts])  # type: ignore[misc]
    combined = ModelGame(masked, multi, small.tokenizer, small.fingerprint)
    assert generated_statistics(multi) == 2
    singles = [ModelGame(masked, make(), small.tokenizer, small.fingerprint)(masks) for make in parts]  # type: ignore[arg-type]
    np.testing.assert_array_equal(combined(masks), np.hstack(singles))
    assert combined.task_names == ("wikitext2.neg_loss", "lambada.acc", "gsm8k.flexible-extract")


def test_registry_and_bad_settings(small: LoadedModel, data_dir: Path) -> None:
    assert isinstance(make_value_fn("lambada", {"limit": 3}), Lambada)
    assert isinstance(make_value_fn("gsm8k", {"shots": 0}), GSM8K)
    with pytest.raises(ConfigError, match="unknown metric"):
        GSM8K(metrics=("accuracy",))
    with pytest.raises(ConfigError, match="fewshot sampler"):
        GSM8K(fewshot_sampler="random")
    with pytest.raises(ConfigError, match="unknown metric"):
        Lambada(metrics=("exact",))
    with pytest.raises(ConfigError, match="4 shots but the fewshot split has only 3"):
        GSM8K(split="test", source="local", data_dir=data_dir, shots=4).prompts()
    with pytest.raises(ConfigError, match="no token batches"):
        Lambada().score(0, None, None)  # type: ignore[arg-type]


class TwoStatistics(Lambada):
    """A value function that declares one generated statistic and returns two."""

    def generate_coalitions(self, masked: MaskedModel, coalitions, progress=None) -> list[list[np.ndarray]]:
        return [statistics * 2 for statistics in super().generate_coalitions(masked, coalitions, progress)]


def test_a_generator_returning_the_wrong_number_of_statistics_is_an_evaluation_error(
    small: LoadedModel, data_dir: Path
) -> None:
    masked = MaskedModel(small.model, small.layout, "block")
    game = ModelGame(masked, TwoStatistics(source="local", data_dir=data_dir, limit=1), small.tokenizer, "tiny")
    with pytest.raises(EvaluationError, match="returned 2 statistics, not the 1"):
        game(masked.full_mask())
