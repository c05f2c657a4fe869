"""Spec loading, validation (every invalid fixture names its key), schema and round-trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import tomllib

from flops_fit import Spec, SpecError
from flops_fit.spec.schema import spec_schema

ROOT = Path(__file__).resolve().parent.parent
INVALID = sorted((ROOT / "tests/fixtures/invalid").glob("*.toml"))
SHIPPED = sorted([*ROOT.glob("specs/*.toml"), *ROOT.glob("examples/**/*.toml"), *(ROOT / "tests/fixtures/valid").glob("*.toml")])


def _expect(path: Path) -> tuple[str, str]:
    text = path.read_text()
    key = re.search(r"^# expect-key: (.*)$", text, re.M).group(1).strip()
    needle = re.search(r"^# expect-text: (.*)$", text, re.M).group(1).strip()
    return key, needle


def test_enough_invalid_fixtures():
    assert len(INVALID) >= 25


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_spec_names_key(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    key, needle = _expect(path)
    with pytest.raises(SpecError) as info:
        Spec.load(path).check()
    problems = info.value.problems
    text = "\n".join(p.format() for p in problems)
    matching = [p for p in problems if (p.key or "") == key]
    assert matching, f"no problem names {key!r}:\n{text}"
    assert any(needle in p.format() for p in matching), text
    assert all(p.file and p.file.endswith(path.name) for p in matching)


def test_all_problems_reported_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[model]\ntarget = "tests.toy:MLP"\nsize_param = "width"\nsizes = [4, -8]\n'
                    '[data]\ntarget = "tests.toy:regression"\n[loss]\ntarget = "tests.toy:mse"\n'
                    '[sweep]\nbudgets = [1e6, -1]\n[train]\nbatchsize = 3\nprecision = "fp8"\n')
    with pytest.raises(SpecError) as info:
        Spec.load(path)
    found = {(p.key, p.line) for p in info.value.problems}
    assert {("model.sizes[1]", 5), ("sweep.budgets[1]", 11), ("train.batchsize", 13), ("train.precision", 14)} <= found


def test_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\n[model\n')
    with pytest.raises(SpecError) as info:
        Spec.load(path)
    p = info.value.problems[0]
    assert p.line == 2 and p.column is not None and "TOML syntax" in p.message


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_shipped_spec_valid_against_pydantic_and_schema(path):
    text = path.read_text()
    assert text.startswith("#:schema "), "every shipped spec starts with a #:schema line"
    jsonschema.validate(tomllib.loads(text), spec_schema())
    Spec.load(path)


def test_committed_schema_is_fresh():
    committed = json.loads((ROOT / "schemas/spec.schema.json").read_text())
    assert committed == spec_schema(), "run `flops-fit schema` and commit schemas/spec.schema.json"


def test_schema_rejects_what_pydantic_rejects():
    schema = spec_schema()
    data = tomllib.loads((ROOT / "tests/fixtures/valid/toy.toml").read_text())
    data["train"]["precision"] = "fp8"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)
    assert "null" not in json.dumps(schema)


def test_save_round_trip(tmp_path):
    spec = Spec.load(ROOT / "tests/fixtures/valid/toy.toml")
    again = Spec.load(spec.save(tmp_path / "copy.toml"))
    assert again.model_dump(exclude={"source"}) == spec.model_dump(exclude={"source"})


def test_defaults_and_import_path_forms():
    spec = Spec.from_dict({"name": "d", "model": {"target": "tests.toy.MLP", "size_param": "width", "sizes": [2, 4]},
                           "data": {"target": "tests.toy:regression"}, "loss": {"target": "tests.toy:mse"},
                           "sweep": {"budgets": [1e6]}})
    assert spec.train.precision == "fp32" and spec.flops.rule == "6N" and spec.analysis.approaches == ["isoflop", "parametric"]
    assert spec.cost.gpu == "H100"
    from flops_fit.core.imports import resolve
    from tests.toy import MLP

    assert resolve("tests.toy.MLP") is MLP and resolve("tests.toy:MLP") is MLP


def test_validate_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in INVALID:
        with pytest.raises(SpecError):
            Spec.load(path).check()
    Spec.load(ROOT / "tests/fixtures/valid/toy.toml").check()
    assert list(tmp_path.iterdir()) == []


def test_source_is_not_a_toml_key(tmp_path):
    """The file a spec came from is kept beside the model, not as a key a user could set."""
    text = (ROOT / "tests/fixtures/valid/toy.toml").read_text()
    path = tmp_path / "s.toml"
    path.write_text(text.replace('name = "toy"', 'name = "toy"\nsource = "elsewhere.toml"'))
    with pytest.raises(SpecError) as info:
        Spec.load(path)
    assert [p.key for p in info.value.problems] == ["source"]
    spec = Spec.load(ROOT / "tests/fixtures/valid/toy.toml")
    assert spec.source.endswith("toy.toml") and "source" not in spec.to_toml_dict()
    copy = spec.model_copy(update={"name": "other"})
    assert copy.source == spec.source and "source" not in spec_schema()["properties"]
