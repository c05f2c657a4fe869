"""A pydantic validation error of the spec as one :class:`~flops_fit.core.errors.Problem`: the TOML line,
the dotted key, the bad value and what is expected."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from ..core.errors import Problem
from ..core.tomlpos import format_loc

__all__ = ["problem_of"]


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Known keys of the table that ``loc`` points into (for 'did you mean')."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _field_description(model: type[BaseModel], loc: tuple) -> str | None:
    current: Any = model
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        current = field.annotation
    return field.description if field else None


def problem_of(err: dict, model: type[BaseModel], source: str | None, lines: dict) -> Problem:
    """One pydantic error as a Problem: file, line, dotted key, the bad value, and the fix (a close
    key for an unknown one, the field's description otherwise)."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    key = format_loc(loc)
    line = _line_for(loc, lines)
    if err["type"] == "extra_forbidden":
        near = difflib.get_close_matches(str(loc[-1]), _fields_at(model, loc), n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(_fields_at(model, loc))}"
        return Problem(f"unknown key '{loc[-1]}'", key=key, file=source, line=line, hint=hint)
    if err["type"] == "missing":
        desc = _field_description(model, loc)
        return Problem("required key is missing", key=key, file=source, line=line,
                       hint=f"add it: {desc}" if desc else None)
    msg = err["msg"].removeprefix("Value error, ")
    desc = _field_description(model, loc)
    shown = err.get("input") is not None or err["type"] != "value_error"  # a missing key's check: no "(got None)"
    return Problem(msg, key=key, file=source, line=line, value=err.get("input"), has_value=shown,
                   hint=f"expected: {desc}" if desc else None)


def _line_for(loc: tuple, lines: dict) -> int | None:
    keys = tuple(p for p in loc if isinstance(p, str))
    while keys:
        if keys in lines:
            return lines[keys]
        keys = keys[:-1]
    return None
