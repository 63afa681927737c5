"""Any lm-eval task as a value function, for all three request types, and an lm-eval ``LM`` over the masked model.

:class:`LMEvalTask` builds an lm-eval task once (by registered name, or a local YAML task such as one reading
JSONL with ``dataset_path: json``) and collects its requests with ``build_all_requests``:

- ``loglikelihood`` (multiple choice included): tokenised as lm-eval's ``TemplateLM`` does (an empty context
  becomes the prefix token) and packed per document over the requests' common token prefix;
- ``loglikelihood_rolling``: lm-eval's disjoint rolling windows of ``max_length`` tokens, packed per document;
- ``generate_until``: no token batches; under each coalition the model generates greedily with the KV cache
  (:class:`~shapley_svc.values.generative.PromptGeneration`), with lm-eval's stop sequences (plus the EOS
  text), ``max_gen_toks`` and post-processing.

Every coalition then gets lm-eval's own post-processing: the responses go into the task's instances, the
task's filters run (``apply_filters``), ``process_results`` scores each document per filter and the task's
aggregations reduce them, as lm-eval's evaluator does. One column per (metric, filter): ``task.metric`` for
the default filter ``none``, ``task.metric,filter`` otherwise (lm-eval's key). No task is rebuilt per call
and no bootstrap runs (a standard error is not needed for a value).

:func:`masked_lm` gives a :class:`~shapley_svc.values.lm_eval_model.MaskedLM` (an lm-eval ``TemplateLM``)
over a masked model under a fixed mask, for ``lm_eval.simple_evaluate`` and for checking the value function
against lm-eval's own loop. Local YAML tasks over the offline data: :mod:`shapley_svc.values.lm_eval_local`.

lm-eval is an optional extra (``pip install 'shapley-svc[lm-eval]'``); it is imported only here and there.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from shapley_svc.engine import BatchedEngine, TokenBatch
from shapley_svc.engine.packing import ScoredSequence, pack_scored
from shapley_svc.errors import ConfigError, DataError
from shapley_svc.model.masked import MaskedModel
from shapley_svc.types import Coalitions
from shapley_svc.values.base import digest, require_prepared
from shapley_svc.values.generative import PromptGeneration
from shapley_svc.values.items import ItemValues
from shapley_svc.values.lm_eval_local import write_mmlu_tasks
from shapley_svc.values.multiple_choice import (
    LoglikelihoodScoring,
    encode_pairs,
    encode_texts,
    gather_choice_statistics,
    pad_token_id,
    resolve_max_length,
    score_choices,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
LM_EVAL_INSTALL = "pip install 'lm-eval[hf]==0.4.13'"
REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")
NO_FILTER = "none"
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


# ----------------------------------------------------------------------------------------------- requests as tokens


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token an empty context (and a rolling window's start) conditions on: BOS, else EOS (lm-eval's HF)."""
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ConfigError("the tokenizer has neither a BOS nor an EOS token to condition an empty context on")


def encode_requests(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], add_bos: bool
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per (context, continuation), as ``TemplateLM.loglikelihood`` encodes them.

    An empty context becomes the prefix token (or the continuation's first token, when that is the prefix).
    """
    encoded: list[tuple[list[int], list[int]]] = [([], [])] * len(pairs)
    full = [index for index, (context, _) in enumerate(pairs) if context]
    for index, pair in zip(full, encode_pairs(tokenizer, [pairs[i] for i in full], add_bos), strict=True):
        encoded[index] = pair
    prefix = prefix_token_id(tokenizer) if len(full) < len(pairs) else 0
    for index, (context, continuation) in enumerate(pairs):
        if not context:
            ids = encode_texts(tokenizer, [continuation], False)[0]
            encoded[index] = ([prefix], ids) if not ids or ids[0] != prefix else (ids[:1], ids[1:])
    return encoded


def scored_sequence(context: Sequence[int], continuation: Sequence[int], max_length: int, where: str) -> ScoredSequence:
    """The model reads the last ``max_length`` tokens of context + continuation but its last; the
    continuation's tokens are scored (lm-eval's HF backend truncates the same way)."""
    whole = (list(context) + list(continuation))[-(max_length + 1) :]
    if not continuation or len(continuation) > len(whole) - 1:
        raise DataError(
            f"{where}: a continuation of {len(continuation)} tokens cannot be scored within max_length "
            f"{max_length} (it needs at least one token of context); raise max_length or leave the request out"
        )
    tokens = whole[:-1]
    return ScoredSequence(tokens, np.arange(len(tokens) - len(continuation), len(tokens)), list(continuation))


def _grouped_by_context(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[int]]:
    """Indices of ``pairs`` grouped by identical context (first-seen order), so a context is packed once."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (context, _) in enumerate(pairs):
        groups.setdefault(tuple(context), []).append(index)
    return list(groups.values())


@torch.inference_mode()
def packed_loglikelihoods(
    masked: MaskedModel,
    mask: np.ndarray,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_length: int,
    *,
    max_row_tokens: int = 2048,
    max_batch_tokens: int = 8192,
) -> list[tuple[float, bool]]:
    """(log p(continuation | context), all continuation tokens greedy) per (context, continuation) token pair.

    Pairs sharing a context are packed over it and scored through the batched engine under ``mask``; the
    numbers are those of :func:`plain_loglikelihoods` up to float rounding.
    """
    if not pairs:
        return []
    groups = _grouped_by_context(pairs)
    sequences = [
        [scored_sequence(*pairs[index], max_length, f"request {index}") for index in group] for group in groups
    ]
    batches, readouts = pack_scored(
        sequences, reuse_prefix=True, max_row_tokens=max_row_tokens, max_batch_tokens=max_batch_tokens, pad_id=0
    )
    engine = BatchedEngine(masked)
    device = next(masked.model.parameters()).device
    statistics = [
        engine.evaluate(mask[None], batch.to(device), readout=lambda h, r=readout: score_choices(r, h, masked.head))[0]
        for batch, readout in zip(batches, readouts, strict=True)
    ]
    by_owner = gather_choice_statistics(statistics, len(pairs))
    order = [index for group in groups for index in group]  # owner k is request order[k]
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for owner, index in enumerate(order):
        results[index] = (float(by_owner[owner, 0]), bool(by_owner[owner, 1]))
    return results


@torch.inference_mode()
def plain_loglikelihoods(
    masked: MaskedModel,
    mask: np.ndarray,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_length: int,
) -> list[tuple[float, bool]]:
    """The same as :func:`packed_loglikelihoods` with one plain forward per pair under ``mask`` (lm-eval's loop)."""
    device = next(masked.model.parameters()).device
    results = []
    with masked.active(mask):
        for index, (context_ids, continuation_ids) in enumerate(pairs):
            sequence = scored_sequence(context_ids, continuation_ids, max_length, f"request {index}")
            logits = masked.model(torch.tensor([list(sequence.tokens)], device=device)).logits[0]
            logits = logits[-len(continuation_ids) :]
            logprobs = F.log_softmax(logits.float(), dim=-1)
            targets = torch.tensor(continuation_ids, device=device)
            total = float(logprobs.gather(1, targets[:, None]).sum())
            results.append((total, bool((logits.argmax(dim=-1) == targets).all())))
    return results


# ----------------------------------------------------------------------------------------------- value function


def column_name(metric: str, filter_key: str) -> str:
    """A task column's metric part: ``metric`` for the default filter, else lm-eval's ``metric,filter``."""
    return metric if filter_key == NO_FILTER else f"{metric},{filter_key}"


@dataclass
class LMEvalTask(LoglikelihoodScoring):
    """An lm-eval task (name or YAML path) as a value function; one column per aggregated metric and filter.

    Example: ``LMEvalTask("arc_easy", limit=50)``, ``LMEvalTask("tasks/my_gsm8k.yaml", max_gen_toks=128)``.
    ``metrics`` pick columns by lm-eval's key (``acc``, ``exact_match,strict-match``); ``batch_size``,
    ``max_gen_toks`` (the cap where a request sets none) and ``use_cache`` apply to ``generate_until`` tasks.
    """

    task: str
    include_path: Path | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    metrics: tuple[str, ...] | None = None
    batch_size: int = 16
    max_gen_toks: int = 256
    use_cache: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._task: Any = None
        self._instances: list[Any] = []  # by (doc_id, idx)
        self._docs: list[tuple[Any, list[Any]]] = []  # per document: doc, its instances in idx order
        self._request_type: str | None = None
        self._windows: list[int] = []  # rolling: scored sequences per instance
        self._generation: PromptGeneration | None = None
        self._columns: list[tuple[str, str]] = []  # (metric, filter key)

    @property
    def task_name(self) -> str:
        return self._task.task_name if self._task is not None else Path(self.task).stem

    @property
    def task_names(self) -> tuple[str, ...]:
        if not self._columns:
            raise ConfigError("call prepare(tokenizer) first: the metrics come from the built lm-eval task")
        return tuple(f"{self.task_name}.{column_name(metric, key)}" for metric, key in self._columns)

    @property
    def request_type(self) -> str:
        """The task's request type (after prepare): loglikelihood, loglikelihood_rolling or generate_until."""
        require_prepared(self._request_type is not None)
        return self._request_type  # type: ignore[return-value]

    @property
    def generated_statistics(self) -> int:
        return 1 if self._request_type == "generate_until" else 0

    def prepare(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        """Build the task and its requests once; tokenise and pack them, or ready their prompts for generation."""
        self._build(tokenizer)
        if self._request_type == "generate_until":
            self._generation = self._prompt_generation(tokenizer)
            self._tokens = torch.tensor([t for prompt in self._generation.prompts for t in prompt], dtype=torch.long)
            return []
        return self._pack(tokenizer)

    def _build(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._task = load_task(self.task, self.include_path, self.num_fewshot)
        self._task.build_all_requests(limit=self.limit, rank=0, world_size=1)
        self._instances = sorted(self._task.instances, key=lambda instance: (instance.doc_id, instance.idx))
        if not self._instances:
            raise ConfigError(f"lm-eval task {self.task_name!r} built no requests (limit={self.limit})")
        types = sorted({instance.request_type for instance in self._instances})
        if len(types) != 1 or types[0] not in REQUEST_TYPES:
            raise ConfigError(
                f"lm-eval task {self.task_name!r} makes {', '.join(types)} requests; a value function takes one "
                f"of {', '.join(REQUEST_TYPES)} per task"
            )
        self._request_type = types[0]
        by_doc: dict[int, list[Any]] = defaultdict(list)
        for instance in self._instances:
            by_doc[instance.doc_id].append(instance)
        self._docs = [(members[0].doc, members) for members in by_doc.values()]
        self._columns = self._chosen_columns()

    def _chosen_columns(self) -> list[tuple[str, str]]:
        """(metric, filter) of each column: every aggregated metric under every filter, or those asked for."""
        filters = [ensemble.name for ensemble in getattr(self._task, "_filters", [])] or [NO_FILTER]
        available = [(metric, key) for key in filters for metric in self._task.aggregation()]
        if self.metrics is None:
            return available
        by_name = {column_name(metric, key): (metric, key) for metric, key in available}
        by_name |= {f"{metric},{key}": (metric, key) for metric, key in available}
        unknown = [name for name in self.metrics if name not in by_name]
        if unknown or not self.metrics:
            raise ConfigError(
                f"task {self.task_name!r} has no metric(s) {unknown or '(none given)'}; it reports "
                f"{', '.join(column_name(*column) for column in available)}"
            )
        return [by_name[name] for name in self.metrics]

    def _pack(self, tokenizer: PreTrainedTokenizerBase) -> list[TokenBatch]:
        """Token batches of every request (loglikelihood) or rolling window, packed per document."""
        max_length = resolve_max_length(tokenizer, self.max_length)
        if self._request_type == "loglikelihood":
            pairs = encode_requests(tokenizer, [tuple(i.args) for i in self._instances], self.add_bos)
            per_instance = [[pair] for pair in pairs]
        else:
            from shapley_svc.values.lm_eval_model import rolling_windows

            texts = encode_texts(tokenizer, [instance.args[0] for instance in self._instances], self.add_bos)
            per_instance = [rolling_windows(ids, prefix_token_id(tokenizer), max_length) for ids in texts]
        self._windows = [len(windows) for windows in per_instance]
        where = [f"{self.task_name}/doc{instance.doc_id}" for instance in self._instances]
        sequences = [
            [scored_sequence(*pair, max_length, label) for pair in windows]
            for windows, label in zip(per_instance, where, strict=True)
        ]
        position = {id(instance): index for index, instance in enumerate(self._instances)}
        groups = [  # one group per document: its requests' sequences in idx order
            [sequence for instance in members for sequence in sequences[position[id(instance)]]]
            for _, members in self._docs
        ]
        self._tokens = torch.tensor([t for group in groups for s in group for t in s.tokens], dtype=torch.long)
        batches, self._readouts = pack_scored(
            groups,
            reuse_prefix=self.reuse_prefix,
            max_row_tokens=max(self.max_row_tokens, max_length),
            max_batch_tokens=self.max_batch_tokens,
            pad_id=pad_token_id(tokenizer),
        )
        self._request_count = sum(len(group) for group in groups)
        return batches

    def _prompt_generation(self, tokenizer: PreTrainedTokenizerBase) -> PromptGeneration:
        from shapley_svc.values.lm_eval_model import stop_rule

        eos_text = tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=False)
        return PromptGeneration(
            tokenizer,
            encode_texts(tokenizer, [instance.args[0] for instance in self._instances], self.add_bos),
            [stop_rule(instance.args[1], eos_text, self.max_gen_toks) for instance in self._instances],
            batch_size=self.batch_size,
            use_cache=self.use_cache,
            max_length=resolve_max_length(tokenizer, self.max_length),
            label=self.task_name,
        )

    def generate(self, masked: MaskedModel) -> list[np.ndarray]:
        """The new tokens of every ``generate_until`` request under the active mask (one statistic)."""
        if self._generation is None:
            raise ConfigError(f"lm-eval task {self.task_name!r} does not generate (or prepare was not called)")
        return [self._generation.run(masked)]

    def generate_coalitions(
        self, masked: MaskedModel, coalitions: Coalitions, progress: Callable[[], object] | None = None
    ) -> list[list[np.ndarray]]:
        """Per coalition, what :meth:`generate` returns under it, the prompts' prefill shared between coalitions."""
        if self._generation is None:
            raise ConfigError(f"lm-eval task {self.task_name!r} does not generate (or prepare was not called)")
        return [[tokens] for tokens in self._generation.run_coalitions(masked, coalitions, progress)]

    @property
    def last_cost(self) -> Any:
        """The latest coalition's generation cost (``generate_until`` tasks; zero otherwise)."""
        from shapley_svc.engine.generation import GenerationCost

        return self._generation.last_cost if self._generation is not None else GenerationCost()

    def fingerprint(self) -> str:
        require_prepared(self._tokens is not None)
        config = self._task.dump_config() if hasattr(self._task, "dump_config") else {}
        settings = {
            "kind": "lm_eval",
            "version": FORMAT_VERSION,
            "task": self.task_name,
            "config": json.dumps(config, sort_keys=True, default=str),
            "limit": self.limit,
            "columns": self._columns,
            "bos": self.add_bos,
            "request_type": self._request_type,
            "rules": [] if self._generation is None else [repr(rule) for rule in dict.fromkeys(self._generation.rules)],
        }
        return digest(settings, self._tokens)

    def lm_eval_responses(self, statistics: list[np.ndarray]) -> list[Any]:
        """One lm-eval response per instance (instance order): (ll, greedy), a summed ll, or the text.

        ``responses`` (inherited) stays the float[scored sequences, 2] array of the token batches.
        """
        if self._request_type == "generate_until":
            if self._generation is None or len(statistics) != 1:
                raise ConfigError("pass the one statistic generate() returned, after prepare(tokenizer)")
            return list(self._generation.texts(statistics[0]))
        scored = super().responses(statistics)
        if self._request_type == "loglikelihood":
            return [(float(ll), bool(greedy)) for ll, greedy in scored]
        ends = np.cumsum(self._windows)
        return [float(scored[end - count : end, 0].sum()) for count, end in zip(self._windows, ends, strict=True)]

    def finalize(self, statistics: list[np.ndarray]) -> np.ndarray:
        per_doc = self.per_document(statistics)
        aggregation = self._task.aggregation()
        return np.array(
            [
                float(aggregation.get(metric, np.mean)(per_doc[column_name(metric, key)]))
                for metric, key in self._columns
            ]
        )

    def item_count(self) -> int:
        """The documents prepared."""
        return len(self._docs)

    def item_values(self, statistics: list[np.ndarray]) -> ItemValues:
        """Each document's ``process_results`` value per column, equally weighted; only when every column's
        metric aggregates by the mean (else a ConfigError naming the column)."""
        from lm_eval.api.metrics import mean

        aggregation = self._task.aggregation()
        for metric, key in self._columns:
            if aggregation.get(metric, np.mean) not in (mean, np.mean):
                raise ConfigError(
                    f"{self.task_name}.{column_name(metric, key)} aggregates by "
                    f"{getattr(aggregation[metric], '__name__', aggregation[metric])}, not the mean: it has no "
                    "per-item values"
                )
        per_doc = self.per_document(statistics)
        return ItemValues.unweighted(
            [np.asarray(per_doc[column_name(metric, key)], dtype=np.float64) for metric, key in self._columns]
        )

    def per_document(self, statistics: list[np.ndarray]) -> dict[str, list[Any]]:
        """Each column's ``process_results`` value of every document (document order), after the task's filters."""
        repeats = int(getattr(self._task.config, "repeats", 1) or 1)
        for instance, response in zip(self._instances, self.lm_eval_responses(statistics), strict=True):
            instance.resps = [response] * repeats
            instance.filtered_resps = {}
        self._task.apply_filters()
        per_column: dict[str, list[Any]] = {column_name(metric, key): [] for metric, key in self._columns}
        for key in dict.fromkeys(key for _, key in self._columns):
            for doc, members in self._docs:
                processed = self._task.process_results(doc, [instance.filtered_resps[key] for instance in members])
                for metric, value in processed.items():
                    if column_name(metric, key) in per_column:
                        per_column[column_name(metric, key)].append(value)
        return per_column


def masked_lm(
    masked: MaskedModel, tokenizer: PreTrainedTokenizerBase, mask: Sequence[bool] | None = None, **options: Any
) -> Any:
    """A :class:`~shapley_svc.values.lm_eval_model.MaskedLM` (an lm-eval ``TemplateLM``); lm-eval loads only here.

    ``options`` are MaskedLM's: ``add_bos``, ``max_length``; ``batch_size``, ``max_gen_toks`` and ``use_cache``
    for generation; ``packed=False`` scores loglikelihood requests one plain forward each (lm-eval's own loop).
    """
    _lm_eval()
    from shapley_svc.values.lm_eval_model import MaskedLM

    return MaskedLM(masked, tokenizer, mask, **options)


__all__ = [
    "LMEvalTask",
    "load_task",
    "masked_lm",
    "packed_loglikelihoods",
    "plain_loglikelihoods",
    "registered_tasks",
    "write_mmlu_tasks",
]
