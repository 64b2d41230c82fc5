"""Shared fixtures: tiny synthetic datasets, the path of the real one, and tiny trained workdirs."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import jax
import numpy as np
import pytest

import subprocess_runs
from fmnist_jax import data, idx

ROOT = Path(__file__).resolve().parent.parent
PRETRAINED = ROOT / "checkpoints" / "pretrained"  # the shipped releases: read only


def synthetic_split(n: int, seed: int = 0) -> data.Split:
    """`n` random images whose labels are learnable: each class brightens its own rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
    for c in range(10):
        images[labels == c, 2 * c:2 * c + 3] += 150
    return data.Split(images, labels)


def write_idx_folder(folder: Path, train: data.Split, test: data.Split) -> Path:
    """The four official file names in `folder`, holding `train` and `test`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images_name, labels_name) in data.FILES.items():
        s = train if split == "train" else test
        idx.write_idx(folder / images_name, s.images[..., 0])
        idx.write_idx(folder / labels_name, s.labels.astype(np.uint8))
    return folder


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A folder of IDX files with 600 learnable training images and 200 test images."""
    return write_idx_folder(tmp_path_factory.mktemp("idx"), synthetic_split(600),
                            synthetic_split(200, seed=1))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The Debian package's folder; CI installs it, so its absence is a failure, not a skip."""
    assert data.has_idx_files(data.DEBIAN_DIR), (
        f"{data.DEBIAN_DIR} is missing: apt-get install -y dataset-fashion-mnist")
    return data.DEBIAN_DIR


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, real_data_dir) -> Callable[[int], Path]:
    """`tiny_workdir(seeds)`: the mlp workdir of one epoch of `SMALL_RUN` with that many seeds,
    trained once per session (per xdist worker) for every end-to-end test that reads one. Tests
    may add evaluations or a portable model to it; one that changes or snapshots it copies it."""
    root = tmp_path_factory.mktemp("tiny")

    @functools.cache
    def trained(seeds: int = 1) -> Path:
        workdir = root / f"mlp-{seeds}"
        result = subprocess_runs.run_main("train", *subprocess_runs.SMALL_RUN, "--epochs=1",
                                          f"--seeds={seeds}", f"--workdir={workdir}", "--quiet")
        assert result.returncode == 0, result.stderr[-3000:]
        return workdir
    return trained


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures are set up: whether it (and they) may run scripts."""
    subprocess_runs.E2E_ALLOWED = item.get_closest_marker("e2e") is not None


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("dist", "no") == "loadgroup" and not _loadgroup_groups():
        raise pytest.UsageError(f"pytest {pytest.__version__} with pytest-xdist "
                                f"{version('pytest-xdist')}: --dist=loadgroup does not group "
                                f"(pytest-dev/pytest-xdist#1386); pip install 'pytest<9.2'")
    # Tracing and compiling make objects by the million: at the default thresholds (700, 10, 10)
    # the collector took 8% of the unit tests' time, at these 2-3% (docs/testing.md).
    gc.set_threshold(50_000, 20, 20)
    # pytest-xdist declares it only when it runs (-n); --strict-markers refuses it otherwise
    config.addinivalue_line("markers", "xdist_group(name): tests that run on one xdist worker")
    # CPU only, as the scripts run (subprocess_runs.script_env): runs of a command's main in this
    # process compare bitwise with the scripts' runs.
    jax.config.update("jax_platforms", "cpu")
    # In-process compiles share the scripts' persistent compilation cache
    # (subprocess_runs.COMPILATION_CACHE), so that a rerun skips them as the scripts' runs do; set
    # before collection, since jax decides on its first compile whether it uses a cache at all.
    # Safe for bitwise comparisons: a cached program is the same program.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(subprocess_runs.COMPILATION_CACHE))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def _loadgroup_groups() -> bool:
    """Whether pytest still reads the node id that pytest-xdist's loadgroup rewrites."""
    item = type("Probe", (), {"nodeid": pytest.Item.nodeid, "_nodeid": "t@group"})()
    try:
        return item.nodeid == "t@group"
    except AttributeError:  # pytest 9.2 reads `_id`
        return False


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks it adds
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of a module that share a module-scoped fixture (a server, a trained workdir, a
    fitted detector) run on one xdist worker (`--dist=loadgroup`, tasks.py), so that it is built
    once, not once per worker; every other test goes wherever a worker is free. End-to-end
    tests first (a stable sort): the short unit tests then fill the workers' last minutes."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)
    for item in items:
        definitions = getattr(item, "_fixtureinfo", None)
        if definitions is None:
            continue
        if any(d.scope == "module" for defs in definitions.name2fixturedefs.values()
               for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))

