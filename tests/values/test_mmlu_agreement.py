"""Slow: on the pinned MMLU sample the demo model's letter log-likelihoods and predictions equal lm-eval's HFLM.

Pinned sample (issue 5): the first 20 test questions of five subjects, each subject's first 5 dev rows as shots.
lm-eval runs its own HF backend (fp32, batch size 1, default BOS handling) on local YAML tasks that mirror
the bundled MMLU template over the same questions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from shapley_svc.data.mmlu import load_mmlu
from shapley_svc.model.loading import LoadedModel
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values.mmlu import MMLU, evaluate_questions

PINNED_SUBJECTS = ("abstract_algebra", "marketing", "college_biology", "high_school_geography", "world_religions")

pytestmark = pytest.mark.slow


@pytest.fixture()
def isolated_hf_home(tmp_path: Path) -> Iterator[Path]:
    """lm-eval's JSON loader caches under HF_HOME: point it at a temporary folder."""
    pytest.importorskip("lm_eval", reason="needs the optional extra lm-eval[hf]")
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(tmp_path / "hf"))
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
        yield tmp_path


def test_pinned_sample_agrees_with_lm_eval_hflm(demo_fp32: LoadedModel, isolated_hf_home: Path) -> None:
    from lm_eval.models.huggingface import HFLM

    from shapley_svc.values.lm_eval_bridge import load_task
    from shapley_svc.values.lm_eval_local import write_mmlu_tasks

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine two threads per process run many times slower
    try:
        masked = MaskedModel(demo_fp32.model, demo_fp32.layout, "block")
        value_fn = MMLU(subjects=PINNED_SUBJECTS, split="test", per_subject=20, shots=5)
        ours = evaluate_questions(masked, value_fn, demo_fp32.tokenizer)
        subjects = [replace(s, questions=s.questions[:20]) for s in load_mmlu(subjects=PINNED_SUBJECTS, shots=5)]
        folder = isolated_hf_home / "tasks"
        instances = []
        for name in write_mmlu_tasks(folder, subjects):
            task = load_task(name, include_path=folder)
            task.build_all_requests(limit=None, rank=0, world_size=1)
            instances.extend(sorted(task.instances, key=lambda instance: (instance.doc_id, instance.idx)))
        hflm = HFLM(pretrained=demo_fp32.model, tokenizer=demo_fp32.tokenizer, batch_size=1)
        reference = np.array([ll for ll, _ in hflm.loglikelihood(instances, disable_tqdm=True)]).reshape(-1, 4)
    finally:
        torch.set_num_threads(threads)
    assert len(value_fn.questions) == 100
    assert [instances[4 * i].args[0] for i in range(100)] == [q.context for q in value_fn.questions]
    assert ours.predictions.tolist() == reference.argmax(axis=1).tolist()
    np.testing.assert_allclose(ours.letter_scores, reference, rtol=0, atol=1e-4)
