"""The spec's value types and their checks: import paths, sizes, kwargs without NaN, sorted
distinct lists, tracker names (``known_trackers``: accelerate's, with "did you mean")."""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, WithJsonSchema

from ..core.frozen import Frozen
from ..core.imports import IMPORT_PATH_RE

__all__ = ["ImportPath", "Kwargs", "SizeValue", "known_trackers"]


def _check_import_path(value: str) -> str:
    if not IMPORT_PATH_RE.match(value):
        raise ValueError("expected an import path like 'package.module:name' or 'package.module.name'")
    return value


def _positive(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a number")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("expected a positive, finite number")
    return value


SizeValue = Annotated[Any, BeforeValidator(_positive),
                      WithJsonSchema({"type": "number", "exclusiveMinimum": 0})]


def _sorted_distinct(values: list, what: str) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must be distinct")
    return sorted(values)


def known_trackers() -> list[str]:
    """The tracker names the installed accelerate accepts in ``log_with`` (imported only when one is
    named)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def _tracker_name(name: str) -> str:
    known = known_trackers()
    if name not in known:
        near = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"{name!r} is not a tracker accelerate knows" + hint
                         + f" (known: {', '.join(known)})")
    return name


ImportPath = Annotated[str, Field(min_length=1, json_schema_extra={"pattern": IMPORT_PATH_RE.pattern})]


def _finite_kwargs(value: Any, path: str = "") -> Any:
    """Keyword arguments are hashed into experiment ids: inf and NaN have no stable meaning there."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path or 'value'} is {value}: use a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite_kwargs(v, f"{path}.{k}" if path else str(k))
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _finite_kwargs(v, f"{path}[{i}]")
    return value


Kwargs = Annotated[dict[str, Any], AfterValidator(_finite_kwargs)]


class _Frozen(Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, populate_by_name=True,
                              allow_inf_nan=False)
