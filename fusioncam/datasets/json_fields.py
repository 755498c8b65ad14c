"""JSON files and typed fields with errors that name the file, the record and the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "an object"}


class DatasetError(ValueError):
    """A dataset or results file that is missing, not JSON, or not in the published layout."""


def load_json(path: Path, what: str) -> Any:
    """The parsed contents of `path`; `what` ("VQA questions") says in the error which file was expected."""
    if not path.is_file():
        raise DatasetError(f"{what} file not found: {path}")
    try:
        with path.open(encoding="utf-8") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not a JSON file ({error})") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error.strerror or error})") from None


def require(record: object, key: str, kind: type[T], where: str) -> T:
    """`record[key]`, which must be of type `kind`; `where` ("file.json, annotation 3") locates the record.

    A JSON `true` is not accepted as an integer, although Python's bool is one."""
    if not isinstance(record, Mapping):
        raise DatasetError(f"{where}: expected an object, found {_json_type(record)}")
    if key not in record:
        raise DatasetError(f"{where}: '{key}' is missing")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DatasetError(f"{where}: '{key}' must be {_TYPE_NAMES.get(kind, kind.__name__)}, found {value!r}")
    return value


def optional(record: Mapping[str, Any], key: str, kind: type[T], where: str) -> T | None:
    """`record[key]` when present (and then of type `kind`), else None."""
    return require(record, key, kind, where) if key in record else None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)
