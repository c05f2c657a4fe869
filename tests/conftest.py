from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread a worker (and for what it starts): no oversubscription
    os.environ["OMP_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOY_SPEC = '''name = "{name}"

[model]
target = "tests.toy:{model}"
size_param = "width"
sizes = {sizes}
kwargs = {{ in_dim = 8{extra_kwargs} }}

[data]
target = "tests.toy:regression"
kwargs = {{ n = 1024 }}
eval_batches = 2

[loss]
target = "tests.toy:mse"

[sweep]
budgets = {budgets}

[train]
batch_size = 16
learning_rate = {lr}
{train}
[analysis]
bootstrap = 20
figures = {figures}
{analysis}
'''


def write_toy_spec(folder: Path, name: str = "toy", model: str = "MLP", sizes=(4, 8, 16, 32), budgets=(1e6, 3e6),
                   train: str = "", analysis: str = "", extra_kwargs: str = "", lr: float = 1e-2,
                   figures: tuple = ()) -> Path:
    """A toy spec; ``figures``: the report's figure formats (none by default: rendering them is
    most of a toy report's time, and only the tests of the figures look at them)."""
    path = folder / f"{name}.toml"
    path.write_text(TOY_SPEC.format(name=name, model=model, sizes=list(sizes), budgets=list(budgets), train=train,
                                    analysis=analysis, extra_kwargs=extra_kwargs, lr=lr,
                                    figures=json.dumps(list(figures))))
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Work in tmp_path (runs/ lands there) with the repo importable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return tmp_path


#: The longest tests (over a minute on one core), started first so that the others fill the
#: remaining workers around them instead of one of them ending the run alone.
LONGEST = ("test_the_mup_gpt_passes", "test_a_branched_regression_sweep", "test_a_job_past_its_timeout",
           "test_find_optimal_launches_workers")


def pytest_collection_modifyitems(config, items):
    """Tests that start several processes (torchrun's default port, gloo groups) run one at a time,
    on one xdist worker (``--dist loadgroup``); the longest tests go first."""
    for item in items:
        if item.get_closest_marker("multiprocess"):
            item.add_marker(pytest.mark.xdist_group("multiprocess"))
    items.sort(key=lambda item: not item.name.startswith(LONGEST))


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node Slurm 22.05 cluster (``tests/slurm_cluster.py``) for the session, when
    ``FLOPS_FIT_SLURM`` is set (``.ci/run`` installs the packages and sets it to ``require``: a
    cluster that cannot start is then a failure, not a skip).  Stopped by PID at the end."""
    from tests.slurm_cluster import ClusterUnavailable, SlurmCluster

    wanted = os.environ.get("FLOPS_FIT_SLURM", "")
    if not wanted:
        pytest.skip("a real Slurm cluster: install Slurm's Debian packages and set FLOPS_FIT_SLURM=1 (.ci/run does)")
    try:
        cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as exc:
        if wanted == "require":
            pytest.fail(f"Slurm did not start: {exc}")
        pytest.skip(f"Slurm cannot start here: {exc}")
    saved = {k: os.environ.get(k) for k in cluster.env}
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
