"""Canonical JSON and content hashes.

Identity in flops-fit is ``sha256(canonical_json(payload))``.  The encoder is strict: it
accepts only dicts with string keys, lists/tuples, strings, booleans, ``None``, integers
and finite floats, and raises ``TypeError`` naming the offending path for anything else
(a set, a Path, an object), so that nothing non-deterministic reaches a hash.

Numbers are normalised so that the spelling in TOML does not matter: a float with an
integral value below 2**53 is written as an integer (``32.0`` and ``32`` hash the same),
other floats with ``repr`` (shortest round-trip form).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

__all__ = ["HASH_VERSION", "canonical_json", "content_hash", "normalize"]

#: Bump when the meaning of a hashed field changes, so old store entries are not reused.
HASH_VERSION = 1


def normalize(value: Any, path: str = "$") -> Any:
    """Return ``value`` as plain JSON types with normalised numbers; reject anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path}: non-finite float {value!r} cannot be hashed")
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: dict key {key!r} is not a string")
            out[key] = normalize(item, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [normalize(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{path}: {type(value).__name__} value {value!r} cannot be hashed")


def canonical_json(value: Any) -> str:
    """Deterministic JSON text: sorted keys, no spaces, normalised numbers."""
    return json.dumps(normalize(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(value: Any, length: int = 12) -> str:
    """First ``length`` hex digits of the sha256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]
