"""Dataclass fields with help text, and ``key=value`` assignments to them (``--set``)."""

from __future__ import annotations

import dataclasses
from dataclasses import field

from .io import DTIError


def option(default, help: str):
    """A dataclass field with its help text (listed by ``--help``)."""
    return field(default=default, metadata={"help": help})


def apply_assignments(obj, assignments: list[str]):
    """A copy of dataclass ``obj`` with ``key=value`` strings applied; unknown keys are refused."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    values = dataclasses.asdict(obj)
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise DTIError(f"--set expects key=value, got {item!r}")
        if key not in fields:
            raise DTIError(f"unknown key {key!r} in --set; valid keys: {', '.join(sorted(fields))}")
        values[key] = _convert(key, fields[key].type, raw.strip())
    return type(obj)(**values)


def _convert(key: str, type_name: str, raw: str):
    try:
        if type_name.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError:
        raise DTIError(f"--set {key}={raw}: expected a value of type {type_name.split(' ')[0]}") from None
    return raw
