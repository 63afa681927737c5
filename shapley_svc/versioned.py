"""Versioned JSON, one way: every document shapley-svc writes and reads back goes through here.

A document is a JSON object with a version field (and, for some, a ``format`` name); it is validated by a
pydantic model at the edge and turned into plain numpy / dataclass objects inside. A document of a newer
version is refused rather than misread, and every problem is one :class:`~shapley_svc.errors.DataError`
naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shapley_svc.errors import DataError

ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_document(
    text: str | bytes,
    what: str,
    *,
    version: int,
    version_key: str = "format_version",
    format_name: str | None = None,
) -> dict[str, Any]:
    """The JSON object in ``text``, its format and version checked (at most ``version``, at least 1)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"the {what} is not valid JSON ({error}): pass a file written by shapley-svc") from error
    if not isinstance(document, dict):
        raise DataError(f"the {what} must be a JSON object, got {type(document).__name__}")
    check_header(document, what, version=version, version_key=version_key, format_name=format_name)
    return document


def check_header(
    document: dict[str, Any],
    what: str,
    *,
    version: int,
    version_key: str = "format_version",
    format_name: str | None = None,
) -> None:
    """Refuse a document of another format, or of a version this code does not read."""
    if format_name is not None and document.get("format") != format_name:
        raise DataError(f"not a {what}: the 'format' field must be {format_name!r}")
    found = document.get(version_key)
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise DataError(f"the {what} has {version_key} {found!r}; expected an integer from 1 to {version}")
    if found > version:
        raise DataError(
            f"the {what} has {version_key} {found}, newer than the version {version} this shapley-svc reads: "
            "upgrade shapley-svc to read it"
        )


def validate_document(model: type[ModelT], document: dict[str, Any], what: str) -> ModelT:
    """``document`` validated by ``model``; one DataError listing each bad field."""
    try:
        return model.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(_describe(issue["loc"], issue["msg"]) for issue in error.errors())
        raise DataError(f"invalid {what}: {problems}") from error


def read_document(
    model: type[ModelT],
    text: str | bytes,
    what: str,
    *,
    version: int,
    version_key: str = "format_version",
    format_name: str | None = None,
) -> ModelT:
    """The document in ``text``, its header checked (:func:`parse_document`), validated by ``model``."""
    document = parse_document(text, what, version=version, version_key=version_key, format_name=format_name)
    return validate_document(model, document, what)


def read_text(path: Path, what: str) -> str:
    """The text of the file at ``path``; a DataError naming the path if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"cannot read {what} file {str(path)!r} ({error.strerror}): check the path") from error


def write_text(path: Path, text: str, what: str) -> None:
    """Write ``text`` (and a final newline) to ``path``, creating its folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    except OSError as error:
        raise DataError(f"cannot write {what} file {str(path)!r} ({error.strerror}): check the path") from error


def _describe(location: tuple[int | str, ...], message: str) -> str:
    """One pydantic issue as ``field: message``, without pydantic's ``Value error,`` prefix."""
    message = message.removeprefix("Value error, ")
    return f"{'.'.join(str(part) for part in location)}: {message}" if location else message
