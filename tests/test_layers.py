"""Imports point one way: leaves < spec < plan < validate < store < execute < analysis < report < api < cli."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "flops_fit"
ORDER = ["_version", "frozen", "errors", "files", "hashing", "imports", "tomlpos", "flops", "components", "launcher_spec", "spec_problems", "spec", "schema", "job",
         "records", "sizing", "plan",
         "validate", "lease", "store", "execute", "eventlog", "launch", "dispatch", "placement", "status", "estimate", "analysis", "runs_table", "plots", "verdict", "report", "compare", "confirmation", "confirm", "transfer", "progress", "render", "api", "cli_common", "cli", "entry", "__main__"]


def _layer(module: str) -> int:
    return ORDER.index(module.split(".")[0])


def _imports(path: Path) -> set[str]:
    rel = path.relative_to(PKG).with_suffix("")
    package = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join([*base, node.module] if node.module else base)
            if target:
                found.add(target)
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flops_fit."):
            found.add(node.module.removeprefix("flops_fit."))
    return found


def test_imports_point_one_way():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # the package facade re-exports the top
        me = _layer(str(rel.with_suffix("")).replace("/", "."))
        for target in _imports(path):
            if _layer(target) > me:
                bad.append(f"{rel} imports {target}")
    assert not bad, bad


def test_the_analysis_reads_records_without_the_training_side():
    """Fitting a CSV or a store's records loads neither torch nor the store, executor or leases."""
    import subprocess
    import sys

    code = ("import sys, flops_fit.analysis, flops_fit.report, flops_fit.records; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('flops_fit.store', "
            "'flops_fit.execute', 'flops_fit.lease', 'flops_fit.plan'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout
