"""JSON Schema of the spec, generated from the pydantic models.

TOML has no null, so ``anyOf [X, null]`` branches are collapsed to ``X``; the result uses
plain draft-07 keywords (``definitions``, ``$ref``) so editors (Taplo, Even Better TOML)
and ``jsonschema`` validate specs with it.
"""

from __future__ import annotations

from typing import Any

from .spec import SpecModel

__all__ = ["spec_schema"]


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        if "anyOf" in node:
            branches = [b for b in node["anyOf"] if b.get("type") != "null"]
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if len(branches) == 1:
                merged = {**_strip(branches[0]), **_strip(rest)}
                merged.pop("default", None) if rest.get("default") is None and "default" in rest else None
                return merged
            node = {**rest, "anyOf": branches}
        out = {}
        for k, v in node.items():
            if k == "default" and v is None:
                continue
            if k == "$defs":
                out["definitions"] = _strip(v)
            elif k == "$ref" and isinstance(v, str):
                out[k] = v.replace("#/$defs/", "#/definitions/")
            elif k == "prefixItems":
                out["items"] = _strip(v)
            else:
                out[k] = _strip(v)
        return out
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def spec_schema() -> dict:
    schema = SpecModel.model_json_schema(mode="validation")
    schema = _strip(schema)
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "flops-fit spec"
    return schema
