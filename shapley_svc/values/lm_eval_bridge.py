"""Any lm-eval task as a value function, and an lm-eval ``LM`` over the masked model.

:class:`LMEvalTask` builds an lm-eval task once (by registered name, or a local YAML task such as one reading
JSONL with ``dataset_path: json``), collects its loglikelihood requests with ``build_all_requests``, tokenises
them as lm-eval's ``TemplateLM`` does and packs each document's requests over their common token prefix.
Every coalition then re-scores the same token batches; the task's own ``process_results`` and aggregation
turn the per-request (log-likelihood, is-greedy) pairs into one value per metric. No task is rebuilt per call
and no bootstrap runs (the standard error is not needed for a value).

:class:`MaskedLM` is a ``TemplateLM`` over a :class:`~shapley_svc.model.masked.MaskedModel` under a fixed
mask, for ``lm_eval.simple_evaluate`` and for checking the value function against lm-eval's own loop.

lm-eval is an optional extra (``pip install 'shapley-svc[lm-eval]'``); it is imported only here.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from shapley_svc.data.mmlu import MMLUSubject
from shapley_svc.engine import TokenBatch
from shapley_svc.errors import ConfigError
from shapley_svc.model.masked import MaskedModel
from shapley_svc.values.base import digest, require_prepared
from shapley_svc.values.mmlu import description
from shapley_svc.values.multiple_choice import LoglikelihoodScoring, encode_texts, resolve_max_length

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LM_EVAL_INSTALL = "pip install 'lm-eval[hf]==0.4.13'"
_TASK_NAME_PATTERN = re.compile(r"^task:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)


def _lm_eval() -> Any:
    """The lm_eval package, or a ConfigError saying how to install it."""
    try:
        import lm_eval
    except ImportError as error:
        raise ConfigError(f"lm-eval tasks need the optional package lm-eval: {LM_EVAL_INSTALL}") from error
    return lm_eval


def load_task(task: str, include_path: Path | None = None, num_fewshot: int | None = None) -> Any:
    """An lm-eval task object by registered name, or from a YAML file path (its folder is the include path)."""
    candidate = Path(task)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"lm-eval task file {candidate} does not exist: give a YAML file or a task name")
        match = _TASK_NAME_PATTERN.search(candidate.read_text(encoding="utf-8"))
        if match is None:
            raise ConfigError(f"lm-eval task file {candidate} has no 'task: <name>' line")
        include_path, task = candidate.parent, match.group(1)
    # Scanning lm-eval's thousands of bundled task configs is slow: skip it for local tasks.
    manager = _task_manager(str(include_path) if include_path is not None else None, include_path is None)
    try:
        loaded = manager.load([task])
    except (KeyError, ValueError) as error:
        close = difflib.get_close_matches(task, list(manager.all_tasks), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = f" in {include_path}" if include_path is not None else ""
        raise ConfigError(f"lm-eval does not know the task {task!r}{where}{hint}") from error
    tasks = loaded["tasks"]
    if len(tasks) != 1:
        raise ConfigError(
            f"{task!r} is a group of {len(tasks)} lm-eval tasks ({', '.join(list(tasks)[:5])}...): give one task, "
            "and combine several with shapley_svc.values.multi.MultiTask"
        )
    task_object = next(iter(tasks.values()))
    if num_fewshot is not None:
        task_object.set_config(key="num_fewshot", value=num_fewshot)
    if hasattr(task_object, "set_fewshot_seed"):
        task_object.set_fewshot_seed(seed=1234)  # simple_evaluate's default fewshot seed
    return task_object


def registered_tasks(include_path: Path | None = None) -> frozenset[str]:
    """The single tasks lm-eval knows by name: its bundled ones, or with ``include_path`` only that folder's.

    Indexing parses the YAML files without resolving ``!function`` (nothing is imported); the index is read
    once per process.
    """
    folder = str(include_path) if include_path is not None else None
    return frozenset(_task_manager(folder, include_path is None).all_subtasks)


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None, include_defaults: bool) -> Any:
    """One lm-eval TaskManager per (include path, bundled tasks or not), reused within the process."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


@dataclass
class LMEvalTask(LoglikelihoodScoring):
    """An lm-eval task (name or YAML path) as a value function; one column per aggregated metric.

    Example: ``LMEvalTask("arc_easy", limit=50)`` or ``LMEvalTask("tasks/my_mmlu.yaml")``.
    """

    task: str
    include_path: Path | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    metrics: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._task: Any = None
        self._docs: list[tuple[Any, list[int]]] = []  # per document: doc, request indices in idx order
        self._metrics: tuple[str, ...] = tuple(self.metrics) if self.metrics is not None else ()

    @property
    def task_name(self) -> str:
        return self._task.task_name if self._task is not None else Path(self.task).stem

    @property
    def task_names(self) -> tuple[str, ...]:
        if not self._metrics:
            raise ConfigError("call prepare(tokenizer) first: the metrics come from the built lm-eval task")
        return tuple(f"{self.task_name}.{metric}" for metric in self._metrics)

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        """Build the task and its requests once, tokenise them (TemplateLM's split) and pack them per document."""
        self._task = load_task(self.task, self.include_path, self.num_fewshot)
        self._task.build_all_requests(limit=self.limit, rank=0, world_size=1)
        instances = list(self._task.instances)
        unsupported = sorted({i.request_type for i in instances if i.request_type != "loglikelihood"})
        if unsupported:
            raise ConfigError(
                f"lm-eval task {self.task_name!r} makes {', '.join(unsupported)} requests; only loglikelihood "
                "(multiple_choice or loglikelihood output types) is supported as a value function"
            )
        if not instances:
            raise ConfigError(f"lm-eval task {self.task_name!r} built no requests (limit={self.limit})")
        available = tuple(self._task.aggregation())
        if not self._metrics:
            self._metrics = available
        unknown = [metric for metric in self._metrics if metric not in available]
        if unknown:
            raise ConfigError(f"task {self.task_name!r} has no metric(s) {unknown}; it aggregates {available}")
        by_doc: dict[int, list[Any]] = {}
        for instance in instances:
            by_doc.setdefault(instance.doc_id, []).append(instance)
        pair_sets, ids, self._docs = [], [], []
        request = 0
        for doc_id in sorted(by_doc):
            members = sorted(by_doc[doc_id], key=lambda instance: instance.idx)
            pair_sets.append([tuple(instance.args) for instance in members])
            ids.append(f"{self.task_name}/doc{doc_id}")
            self._docs.append((members[0].doc, list(range(request, request + len(members)))))
            request += len(members)
        return self.pack_requests(tokenizer, pair_sets, ids)

    def fingerprint(self) -> str:
        require_prepared(self._tokens is not None)
        config = self._task.dump_config() if hasattr(self._task, "dump_config") else {}
        settings = {
            "kind": "lm_eval",
            "version": FORMAT_VERSION,
            "task": self.task_name,
            "config": json.dumps(config, sort_keys=True, default=str),
            "limit": self.limit,
            "metrics": self._metrics,
            "bos": self.add_bos,
        }
        return digest(settings, self._tokens)

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        per_doc = self.per_document(statistics)
        aggregation = self._task.aggregation()
        return np.array([float(aggregation[metric](per_doc[metric])) for metric in self._metrics])

    def per_document(self, statistics: list[np.ndarray]) -> dict[str, list[Any]]:
        """The task's ``process_results`` of each document, as lists per metric (document order)."""
        responses = self.responses(statistics)
        per_metric: dict[str, list[Any]] = {metric: [] for metric in self._metrics}
        for doc, requests in self._docs:
            results = [(float(responses[i, 0]), bool(responses[i, 1])) for i in requests]
            processed = self._task.process_results(doc, results)
            for metric in self._metrics:
                per_metric[metric].append(processed[metric])
        return per_metric


def masked_lm(
    masked: MaskedModel,
    tokenizer: PreTrainedTokenizerBase,
    mask: Sequence[bool] | None = None,
    add_bos: bool = False,
    max_length: int | None = None,
) -> Any:
    """A :class:`MaskedLM` (an lm-eval ``TemplateLM``); built by a function so lm-eval loads only when used."""
    _lm_eval()
    from lm_eval.api.model import TemplateLM

    class MaskedLM(TemplateLM):
        """lm-eval model over ``masked`` with only the players of ``mask`` present (batch size 1, no cache)."""

        def __init__(self) -> None:
            super().__init__()
            self.masked = masked
            self.tokenizer = tokenizer
            self.mask = masked.full_mask() if mask is None else masked.validate_mask(mask)
            self.add_bos = add_bos
            self.max_length = resolve_max_length(tokenizer, max_length)

        @property
        def eot_token_id(self) -> int:
            return int(tokenizer.eos_token_id)

        def tok_encode(self, string: str, add_special_tokens: bool | None = None) -> list[int]:
            add_bos_here = self.add_bos if add_special_tokens is None else add_special_tokens
            return encode_texts(tokenizer, [string], add_bos_here)[0]

        def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            pairs = [(context_ids, continuation_ids) for _, context_ids, continuation_ids in requests]
            results = plain_loglikelihoods(masked, self.mask, pairs, self.max_length)
            for (request_strings, _, _), result in zip(requests, results, strict=True):
                self.cache_hook.add_partial("loglikelihood", request_strings, result)
            return results

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            raise ConfigError("MaskedLM scores loglikelihood requests only; loglikelihood_rolling is not supported")

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            raise ConfigError("MaskedLM scores loglikelihood requests only; generation is not supported")

    return MaskedLM()


@torch.inference_mode()
def plain_loglikelihoods(
    masked: MaskedModel,
    mask: np.ndarray,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_length: int,
) -> list[tuple[float, bool]]:
    """(log p(continuation | context), all continuation tokens greedy) per (context, continuation) token pair.

    One plain forward per pair under ``mask``, keeping the last ``max_length`` input tokens (lm-eval's loop).
    """
    device = next(masked.model.parameters()).device
    results = []
    with masked.active(mask):
        for context_ids, continuation_ids in pairs:
            inputs = (list(context_ids) + list(continuation_ids))[-(max_length + 1) :][:-1]
            logits = masked.model(torch.tensor([inputs], device=device)).logits[0, -len(continuation_ids) :]
            logprobs = F.log_softmax(logits.float(), dim=-1)
            targets = torch.tensor(continuation_ids, device=device)
            total = float(logprobs.gather(1, targets[:, None]).sum())
            results.append((total, bool((logits.argmax(dim=-1) == targets).all())))
    return results


def write_mmlu_tasks(folder: Path, subjects: Sequence[MMLUSubject]) -> list[str]:
    """Write one local lm-eval YAML task per subject mirroring the bundled MMLU template, over JSONL files.

    Each task reads ``<subject>.test.jsonl`` / ``<subject>.dev.jsonl`` (``dataset_path: json``) with
    ``fewshot_config.sampler: first_n`` and ``num_fewshot`` = the subject's shots. Returns the task names.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for subject in subjects:
        name = f"local_mmlu_{subject.name}"
        for split, rows in (("test", subject.questions), ("dev", subject.shots)):
            lines = [
                json.dumps(
                    {
                        "id": row.id,
                        "subject": subject.name,
                        "question": row.question,
                        "choices": list(row.choices),
                        "answer": row.answer,
                    }
                )
                for row in rows
            ]
            (folder / f"{subject.name}.{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (folder / f"{name}.yaml").write_text(_mmlu_task_yaml(name, folder, subject), encoding="utf-8")
        names.append(name)
    return names


def _mmlu_task_yaml(name: str, folder: Path, subject: MMLUSubject) -> str:
    """The YAML of task ``name``: lm-eval's MMLU template over the subject's JSONL files in ``folder``."""
    return "\n".join(
        [
            f"task: {name}",
            "dataset_path: json",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {json.dumps(str(folder / f'{subject.name}.test.jsonl'))}",
            f"    dev: {json.dumps(str(folder / f'{subject.name}.dev.jsonl'))}",
            "test_split: test",
            "fewshot_split: dev",
            "fewshot_config:",
            "  sampler: first_n",
            f"num_fewshot: {len(subject.shots)}",
            "output_type: multiple_choice",
            f"description: {json.dumps(description(subject.name))}",
            'doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}'
            '\\nD. {{choices[3]}}\\nAnswer:"',
            'doc_to_choice: ["A", "B", "C", "D"]',
            "doc_to_target: answer",
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "metadata:",
            "  version: 1.0",
            "",
        ]
    )
