"""Line numbers of TOML keys, for error messages (tomllib keeps no positions).

A light scanner: it follows ``[table]`` / ``[[array]]`` headers and ``key = value`` lines
(dotted keys and quoted keys included) and maps each key path to its line.  Values that
span lines (arrays, multi-line strings) are attributed to the line of their key.
"""

from __future__ import annotations

import re

__all__ = ["key_lines", "format_loc"]

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _parts(dotted: str) -> tuple[str, ...]:
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)", dotted)
    return tuple(a or b or c for a, b, c in parts)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map key paths such as ``("sweep", "budgets")`` to 1-based line numbers."""
    table: tuple[str, ...] = ()
    found: dict[tuple[str, ...], int] = {}
    depth = 0  # bracket depth of a multi-line value: keys inside it are not top level
    for number, line in enumerate(text.splitlines(), start=1):
        if depth == 0:
            header = _HEADER.match(line)
            if header:
                table = _parts(header.group(1))
                found.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                path = table + _parts(key.group(1))
                found.setdefault(path, number)
                rest = line[key.end():]
                for inner in re.finditer(r"([A-Za-z0-9_-]+)\s*=", rest):  # inline tables
                    found.setdefault(path + (inner.group(1),), number)
                line = rest
        stripped = re.sub(r"\"[^\"]*\"|'[^']*'|#.*$", "", line)
        opened = stripped.count("[") + stripped.count("{")
        depth = max(0, depth + opened - stripped.count("]") - stripped.count("}"))
    return found


def format_loc(loc: tuple) -> str:
    """``("sweep", "budgets", 1)`` -> ``"sweep.budgets[1]"``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text
