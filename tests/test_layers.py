"""Imports point one way: core < spec < plan < store < execute < analysis < report < verbs < api < cli."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "flops_fit"
ORDER = ["_version",
         "core.frozen", "core.errors", "core.files", "core.hashing", "core.imports", "core.tomlpos",
         "core.eventlog", "core",
         "spec.components", "spec.launcher", "spec.problems", "spec.types", "spec.sections", "spec.spec", "spec.schema", "spec",
         "plan.job", "plan.flops", "plan.sizing", "plan.plan", "plan.forward", "plan.validate", "plan",
         "store.records", "store.lease", "store.store", "store",
         "execute", "analysis",
         "report.runs_table", "report.plots", "report.verdict", "report.report", "report.progress",
         "report.render", "report",
         "verbs.status", "verbs.estimate", "verbs.compare", "verbs.confirmation", "verbs.confirm",
         "verbs.transfer_outputs", "verbs.transfer", "verbs",
         "api", "cli_common", "cli", "entry", "__main__"]


def _layer(module: str) -> int:
    """A module's place: its own entry (``plan.sizing``), else its stage folder's (``execute.*``,
    ``analysis.*``, and a package's ``__init__``)."""
    parts = module.removesuffix(".__init__").split(".")
    name = ".".join(parts[:2])
    return ORDER.index(name if name in ORDER else parts[0])


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

    code = ("import sys, flops_fit.analysis, flops_fit.report.report, flops_fit.store.records; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('flops_fit.store.store', "
            "'flops_fit.execute', 'flops_fit.store.lease', 'flops_fit.plan.plan'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout
