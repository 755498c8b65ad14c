"""Building model configs (nested dataclasses) from plain values, e.g. a preset's `[config]` table."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Config = TypeVar("Config", bound="DataclassInstance")


def merge_config(config: Config, values: dict[str, Any]) -> Config:
    """A copy of dataclass `config` with `values` applied recursively; unknown keys are an error.

    TOML has no tuples: a list given for a tuple field becomes a tuple, so configs stay hashable and comparable.
    """
    known = {f.name for f in fields(config)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown {type(config).__name__} field {key!r}; known: {', '.join(sorted(known))}")
        current = getattr(config, key)
        if is_dataclass(current) and not isinstance(current, type):
            value = merge_config(current, value)
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    return type(config)(**({f.name: getattr(config, f.name) for f in fields(config)} | changes))
