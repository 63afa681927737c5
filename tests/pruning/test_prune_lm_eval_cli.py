"""lm-eval's own CLI on a pruned tiny checkpoint gives what the product's value function gives the coalition.

The checkpoint is a tiny Gemma 2 (soft-capped logits, 8-token sliding windows, eager attention) with a block
and an attention removed, saved by :func:`save_pruned`; the task is a local YAML over the first rows of the
shared ARC-Easy test file. ``lm_eval --model hf`` runs in a subprocess, offline, and its metrics and
per-request log-likelihoods are compared with :class:`LMEvalTask` scoring the unpruned model under the
plan's mask through the engine (packed prefixes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.engine import BatchedEngine
from shapley_svc.model.loading import tiny_model
from shapley_svc.model.masked import MaskedModel
from shapley_svc.players import Player
from shapley_svc.pruning.apply import save_pruned
from shapley_svc.pruning.select import PruningPlan
from shapley_svc.values.lm_eval_bridge import LMEvalTask

pytest.importorskip("lm_eval", reason="the lm-eval CLI test needs the optional extra lm-eval[hf]")

pytestmark = pytest.mark.slow  # a subprocess that imports lm-eval: about 30 s on 2 busy cores
ARC_EASY = default_data_dir() / "arc_easy" / "test.jsonl"
LIMIT = 6
TASK = "pruned_arc_easy"
PLAN = PruningPlan.from_players([Player(1, "block"), Player(2, "attn")], 4)


def task_yaml(data_file: Path) -> str:
    """A local multiple-choice task over ARC-Easy rows of the shared data (question, choices, answer)."""
    return "\n".join(
        [
            f"task: {TASK}",
            "dataset_path: json",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {json.dumps(str(data_file))}",
            "test_split: test",
            "output_type: multiple_choice",
            'doc_to_text: "Question: {{question}}\\nAnswer:"',
            'doc_to_choice: "{{choices}}"',
            "doc_to_target: answer",
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "  - metric: acc_norm",
            "    aggregation: mean",
            "    higher_is_better: true",
            "metadata:",
            "  version: 1.0",
            "",
        ]
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The pruned checkpoint, its task and lm-eval's results and samples; HF_HOME in a temporary folder."""
    if not ARC_EASY.is_file():
        pytest.skip(f"the shared ARC-Easy file is not at {ARC_EASY} (set SHAPLEY_SVC_DATA_DIR)")
    root = tmp_path_factory.mktemp("lm_eval_cli")
    loaded = tiny_model("gemma2", num_layers=4, seed=2)
    save_pruned(loaded, PLAN, root / "pruned")
    (root / "tasks").mkdir()
    (root / "tasks" / f"{TASK}.yaml").write_text(task_yaml(ARC_EASY), encoding="utf-8")
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    home = {"HF_HOME": str(root / "hf_home"), "HF_DATASETS_CACHE": str(root / "hf_home" / "datasets")}
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={root / 'pruned'}"]
    command += ["--tasks", TASK, "--include_path", str(root / "tasks"), "--limit", str(LIMIT), "--device", "cpu"]
    command += ["--batch_size", "1", "--output_path", str(root / "results"), "--log_samples"]
    environment = os.environ | offline | home | {"OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, check=False)
    assert finished.returncode == 0, finished.stderr[-4000:]
    (results_file,) = (root / "results").rglob("results_*.json")
    (samples_file,) = (root / "results").rglob(f"samples_{TASK}_*.jsonl")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in home.items():
            patch.setenv(key, value)
        import datasets

        patch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(home["HF_DATASETS_CACHE"]))
        yield {
            "loaded": loaded,
            "task": root / "tasks" / f"{TASK}.yaml",
            "results": json.loads(results_file.read_text())["results"][TASK],
            "samples": [json.loads(line) for line in samples_file.read_text().splitlines()],
        }


def test_lm_eval_cli_on_the_pruned_checkpoint_equals_the_value_function(run: dict[str, Any]) -> None:
    loaded = run["loaded"]
    masked = MaskedModel(loaded.model, loaded.layout, "sublayer")
    value_fn = LMEvalTask(str(run["task"]), limit=LIMIT)
    batches = value_fn.prepare(loaded.tokenizer)
    assert value_fn.task_names == (f"{TASK}.acc", f"{TASK}.acc_norm")
    engine = BatchedEngine(masked)
    mask = PLAN.present.reshape(1, -1)
    statistics = [
        engine.evaluate(mask, batch, readout=lambda hidden, i=i: value_fn.score(i, hidden, masked.head))[0]
        for i, batch in enumerate(batches)
    ]
    values = value_fn.finalize(statistics)
    assert values.tolist() == [run["results"]["acc,none"], run["results"]["acc_norm,none"]]
    assert run["results"]["sample_len"] == LIMIT

    samples = sorted(run["samples"], key=lambda sample: sample["doc_id"])
    theirs = [float(response[0]) for sample in samples for response in sample["filtered_resps"]]
    ours = value_fn.responses(statistics)[:, 0]  # request order: documents, then their choices
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)  # sums over ~30 tokens of fp32 log-probabilities
