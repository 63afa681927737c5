"""MMLU 5-shot on the demo model: agreement with lm-eval's HF backend, speed against it, prefix-reuse speedup.

Pinned sample: the first 20 test questions of five subjects with each subject's first 5 dev rows as shots.
Ours: the MMLU value function through the batched engine (full model, one mask); lm-eval: ``HFLM`` (fp32,
batch size 1, default BOS handling) scoring the requests of local YAML tasks that mirror the bundled MMLU
template over the same questions. Model load, prompt building and task building are outside the timings;
both sides run with the same number of torch threads. Prints JSON on its last line.

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

import numpy as np
import torch

PINNED_SUBJECTS = ("abstract_algebra", "marketing", "college_biology", "high_school_geography", "world_religions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-subject", type=int, default=20)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="shapley-svc-tasks-bench-"))
    os.environ["HF_HOME"] = str(work / "hf")  # lm-eval's JSON loader writes a cache there

    from shapley_svc.data.mmlu import load_mmlu
    from shapley_svc.model.loading import load_model
    from shapley_svc.model.masked import MaskedModel
    from shapley_svc.values.base import ModelGame
    from shapley_svc.values.lm_eval_bridge import load_task, write_mmlu_tasks
    from shapley_svc.values.mmlu import MMLU, evaluate_questions

    loaded = load_model("demo", dtype="float32")
    masked = MaskedModel(loaded.model, loaded.layout, "block")
    full = masked.full_mask()[None]

    subjects = [
        replace(subject, questions=subject.questions[: args.per_subject])
        for subject in load_mmlu(subjects=PINNED_SUBJECTS, shots=args.shots, data_dir=args.data_dir)
    ]
    names = write_mmlu_tasks(work / "tasks", subjects)
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1)

    def our_game(subject: str, reuse: bool) -> tuple[MMLU, ModelGame]:
        value_fn = MMLU(
            subjects=(subject,),
            per_subject=args.per_subject,
            shots=args.shots,
            data_dir=args.data_dir,
            metrics=("p_correct", "accuracy"),
            reuse_prefix=reuse,
        )
        return value_fn, ModelGame(masked, value_fn, loaded.tokenizer, loaded.fingerprint)

    # The machine may be shared: the three timed runs alternate subject by subject, so that load changes
    # hit all of them alike. Prompt building, engine preparation and task building are not timed.
    seconds = {"ours": 0.0, "ours_without_reuse": 0.0, "lm_eval": 0.0}
    value_fns, all_instances, values, unpacked_values, responses = [], [], [], [], []
    for subject, name in zip([subject.name for subject in subjects], names, strict=True):
        value_fn, game = our_game(subject, reuse=True)
        _, game_without_reuse = our_game(subject, reuse=False)
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
        value_fns.append(value_fn)
        all_instances.extend(instances)

    # Agreement on the full pinned sample (one value function over all subjects, as a user would run it).
    value_fn = MMLU(subjects=PINNED_SUBJECTS, per_subject=args.per_subject, shots=args.shots, data_dir=args.data_dir)
    results = evaluate_questions(masked, value_fn, loaded.tokenizer)
    questions = len(value_fn.questions)
    lm_eval_scores = np.array([response[0] for response in responses]).reshape(-1, 4)
    instances = all_instances
    ours_seconds, unpacked_seconds, lm_eval_seconds = (
        seconds["ours"],
        seconds["ours_without_reuse"],
        seconds["lm_eval"],
    )
    values, unpacked_values = np.array(values), np.array(unpacked_values)
    contexts_equal = all(
        instances[4 * index].args[0] == question.context for index, question in enumerate(value_fn.questions)
    )
    agreement = float((lm_eval_scores.argmax(axis=1) == results.predictions).mean())
    accuracy, accuracy_stderr = results.accuracy()
    smooth, smooth_stderr = results.smooth()
    report = {
        "questions": questions,
        "threads": args.threads,
        "dtype": "float32",
        "prompts_identical": contexts_equal,
        "lm_eval_agreement": agreement,
        "max_abs_loglikelihood_diff": float(np.abs(lm_eval_scores - results.letter_scores).max()),
        "ours_questions_per_s": questions / ours_seconds,
        "ours_without_reuse_questions_per_s": questions / unpacked_seconds,
        "lm_eval_questions_per_s": questions / lm_eval_seconds,
        "mmlu_speed_over_lm_eval": lm_eval_seconds / ours_seconds,
        "prefix_reuse_speedup": unpacked_seconds / ours_seconds,
        "reuse_values_max_diff": float(np.abs(values - unpacked_values).max()),
        "p_correct": smooth,
        "p_correct_stderr": smooth_stderr,
        "accuracy": accuracy,
        "accuracy_stderr": accuracy_stderr,
        "lm_eval_accuracy": float(
            (lm_eval_scores.argmax(axis=1) == np.array([q.answer for q in value_fn.questions])).mean()
        ),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
