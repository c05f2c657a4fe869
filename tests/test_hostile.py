"""Hostile and degenerate input: each a clean one-line error (exit 1), a usage error (exit 2) or a note."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from flops_fit.cli import app
from tests.conftest import ROOT, write_toy_spec

runner = CliRunner()


def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.stderr and res.exception is None or isinstance(res.exception, SystemExit), res.stderr
    return res


def _spec(tmp_path, **kw):
    path = write_toy_spec(tmp_path, **kw)
    text = path.read_text().replace("tests.toy", "mymod")
    (tmp_path / "mymod.py").write_text((ROOT / "tests/toy.py").read_text())
    return path, text


def test_bad_spec_files_are_one_line_errors(tmp_path):
    path, text = _spec(tmp_path)
    cases = {
        "binary": (b"\xff\xfe\x00\x01binary", "not UTF-8 text (byte 0xff at offset 0)"),
        "inf kwarg": (text.replace("in_dim = 8", "in_dim = 8, dropout = inf").encode(), "model.kwargs: dropout is inf"),
        "nan data kwarg": (text.replace("n = 1024", "n = 1024, seed = nan").encode(), "data.kwargs: seed is nan"),
        "nan float key": (text.replace("learning_rate = 0.01", "learning_rate = nan").encode(),
                          "train.learning_rate: Input should be a finite number"),
        "long name": (text.replace('name = "toy"', 'name = "' + "a" * 300 + '"').encode(), "at most 100 characters"),
        "exit at import": (text.replace('target = "mymod:MLP"', 'target = "exiting:MLP"').encode(), "called sys.exit(3)"),
    }
    (tmp_path / "exiting.py").write_text("import sys\nsys.exit(3)\n")
    for name, (content, message) in cases.items():
        path.write_bytes(content)
        res = _run("validate", path)
        assert res.exit_code == 1 and message in res.stderr, (name, res.stderr)
        assert res.stderr.count("error:") == 1, (name, res.stderr)


def test_json_stays_clean_when_user_code_prints_at_import(tmp_path):
    path, text = _spec(tmp_path, analysis="", train="")
    (tmp_path / "noisy.py").write_text("print('noise at import')\nfrom mymod import *\n")
    path.write_text(text.replace('target = "mymod:MLP"', 'target = "noisy:MLP"') + "\n[estimate]\ncalibrate = false\n")
    res = _run("estimate", path, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["flop_rule"] == "6N" and "noise at import" in res.stderr


def _law_csv(path, bom=False):
    n = np.logspace(5, 8, 12)
    rows = "params,tokens,loss\n" + "".join(f"{a},{20 * a},{2 + 100 / a**0.3 + 100 / (20 * a)**0.3}\n" for a in n)
    path.write_text(rows, encoding="utf-8-sig" if bom else "utf-8")
    return path


def test_bad_csv_and_options(tmp_path):
    (tmp_path / "bin.csv").write_bytes(b"\x00\xff\xfe\x01")
    res = _run("fit", tmp_path / "bin.csv")
    assert res.exit_code == 1 and "not UTF-8 text" in res.stderr
    bom = _run("fit", _law_csv(tmp_path / "bom.csv", bom=True), "--bootstrap", "0")
    assert bom.exit_code == 0, bom.stderr  # a spreadsheet's byte-order mark is not part of the first column's name
    good = _law_csv(tmp_path / "p.csv")
    for bad in ("-5", "nan", "inf"):
        res = _run("fit", good, "--predict", bad)
        assert res.exit_code == 2 and "not a positive, finite number of FLOPs" in res.output, res.output
    assert _run("fit", good, "--bootstrap", "-1").exit_code == 2
    (tmp_path / "file.txt").write_text("x")
    res = _run("fit", good, "--report", tmp_path / "file.txt", "--bootstrap", "0")
    assert res.exit_code == 1 and "--report: is a file" in res.stderr


@pytest.mark.parametrize("rows, note", [
    ("1e6,2e7,3.0\n" * 8, "7 of 8 points repeat another point's"),
    ("".join(f"{n},{20 * n},3.0\n" for n in np.logspace(5, 8, 12)), "the loss is 3 at every point"),
])
def test_degenerate_data_get_a_note(tmp_path, rows, note):
    csv = tmp_path / "d.csv"
    csv.write_text("params,tokens,loss\n" + rows)
    res = _run("fit", csv, "--bootstrap", "0", "--json")
    assert any(note in n for n in json.loads(res.stdout)["notes"]), res.stdout


def test_store_faults_are_one_line_errors(tmp_path, monkeypatch):
    import errno

    from flops_fit import Spec

    monkeypatch.chdir(tmp_path)
    path, text = _spec(tmp_path, sizes=(4, 8), budgets=(1e6,))
    path.write_text(text)
    (tmp_path / "runs").write_text("a file where the runs folder goes")
    res = _run("validate", path)
    assert res.exit_code == 1 and "runs_dir: runs is a file, not a folder" in res.stderr, res.stderr
    (tmp_path / "runs").unlink()
    real_access = __import__("os").access
    monkeypatch.setattr("flops_fit.plan.validate.os.access", lambda p, mode: False if str(p) == "." else real_access(p, mode))
    res = _run("validate", path)
    assert res.exit_code == 1 and "is not writable by this user" in res.stderr, res.stderr
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    exp = Spec.load(path).plan().experiments[0]
    (tmp_path / "runs/toy/experiments").mkdir(parents=True)
    (tmp_path / "runs/toy/experiments" / exp.id).write_text("a file where the experiment's folder (its lease) goes")
    res = _run("run", path)
    assert res.exit_code == 1 and res.stderr.count("error:") == 1 and exp.id in res.stderr, res.stderr
    (tmp_path / "runs/toy/experiments" / exp.id).unlink()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs/toy/plan.json"))
    monkeypatch.setattr("flops_fit.store.store.atomic_write_text", full)
    res = _run("run", path)
    assert res.exit_code == 1 and "No space left on device" in res.stderr and res.stderr.count("error:") == 1


def test_the_report_is_collected_under_the_store_lock(in_tmp, monkeypatch):
    from flops_fit import Spec
    from flops_fit.store.store import Store

    held = []
    collect = Store.collect

    def watched(self, experiments):
        from filelock import FileLock, Timeout

        probe = FileLock(str(self.root / "report.lock"))  # another handle: blocked while the run holds it
        try:
            probe.acquire(timeout=0)
            probe.release()
            held.append(False)
        except Timeout:
            held.append(True)
        return collect(self, experiments)
    monkeypatch.setattr(Store, "collect", watched)
    Spec.load(write_toy_spec(in_tmp, sizes=(4, 8, 16), budgets=(1e6, 2e6, 4e6))).run()
    assert held and held[-1]  # a concurrent run's results written before it are in this report
