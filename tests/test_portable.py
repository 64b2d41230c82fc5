"""The portable model (`fmnist_jax/portable.py`): the exported function equals the workdir's model
on real test images for any number of images, an ensemble's is the members' mean, it is lowered for
CPU and CUDA, and it loads and runs in a process where flax cannot be imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from conftest import ROOT
from fmnist_jax import data, integrity, portable, restore
from fmnist_jax.errors import CheckpointError
from subprocess_runs import run

RELEASE = ROOT / "checkpoints" / "pretrained" / "lstm"  # the smallest shipped release


def _ok(result):
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def test_images(real_data_dir) -> data.Split:
    return data.load_idx_folder(real_data_dir)["test"].take(slice(0, 17))


@pytest.fixture(scope="module")
def ensemble_workdir(tiny_workdir) -> Path:
    """The shared two-seed mlp workdir, with its portable model."""
    workdir = tiny_workdir(2)
    _ok(run("export", f"--workdir={workdir}", "--portable-only"))
    return workdir


@pytest.mark.e2e
@pytest.mark.parametrize("n", [1, 3, 17])
def test_the_ensemble_export_equals_the_members_mean(ensemble_workdir, test_images, n):
    restored = restore.load_workdir(ensemble_workdir)
    assert len(restored.seeds) == 2
    model = portable.load(ensemble_workdir)
    images = test_images.images[:n]
    probabilities = np.asarray(model(images))
    chex.assert_shape(probabilities, (n, 10))
    chex.assert_trees_all_close(probabilities, restored.probabilities(images).mean(0), atol=2e-6)
    members = restored.probabilities(images)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # the mean is not one member's
    assert model.metadata["predictor"] == "ensemble" and model.metadata["seeds"] == [0, 1]


def test_the_export_is_lowered_for_cpu_and_cuda_and_polymorphic_in_n(test_images):
    exported = portable.export(restore.load_workdir(RELEASE))
    assert exported.platforms == ("cpu", "cuda")
    assert str(exported.in_avals[0].shape[0]) == "n"
    assert exported.in_avals[0].dtype == np.uint8
    restored = jax.export.deserialize(exported.serialize())
    for n in (1, 5):
        chex.assert_shape(restored.call(test_images.images[:n]), (n, 10))


def test_a_model_recording_flip_tta_exports_it(test_images):
    restored = restore.load_workdir(RELEASE)
    restored.meta.pop("calibration", None)  # uncalibrated: TTA is the mean of two probabilities
    images = test_images.images[:3]
    plain = portable.probabilities_function(restored)
    expected = (plain(images) + plain(images[:, :, ::-1])) / 2
    restored.config.tta = True
    assert portable.metadata(restored)["tta"] == "flip"
    chex.assert_trees_all_close(portable.export(restored).call(images), expected, atol=1e-6)
    assert not np.allclose(expected, plain(images), atol=1e-4)


LOAD_WITHOUT_FLAX = textwrap.dedent("""
    import importlib.abc, json, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("flax", "optax", "orbax", "ml_collections"):
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, Blocker())
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from fmnist_jax import portable
    try:
        import flax
    except ImportError:
        pass
    else:
        raise SystemExit("flax was importable")
    model = portable.load(sys.argv[2])
    images = np.load(sys.argv[3])
    print(json.dumps({"probabilities": np.asarray(model(images)).tolist(),
                      "modules": sorted(m for m in sys.modules if m.startswith("fmnist_jax"))}))
""")


@pytest.mark.e2e
def test_the_export_loads_and_runs_without_flax(tmp_path, test_images):
    release = shutil.copytree(RELEASE, tmp_path / "release")
    (release / "checkpoints").rename(tmp_path / "moved-away")  # the weights it must not need
    images_path = tmp_path / "images.npy"
    np.save(images_path, test_images.images[:3])
    result = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_FLAX, str(ROOT), str(release),
                             str(images_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["modules"] == ["fmnist_jax", "fmnist_jax.errors", "fmnist_jax.files",
                              "fmnist_jax.integrity",
                              "fmnist_jax.portable"]
    expected = restore.load_workdir(RELEASE).probabilities(test_images.images[:3]).mean(0)
    chex.assert_trees_all_close(np.array(out["probabilities"]), expected, atol=2e-6)


def test_a_folder_without_an_export_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="--portable-only"):
        portable.load(tmp_path)


def test_writing_leaves_no_temporary_files(tmp_path):
    release = shutil.copytree(RELEASE, tmp_path / "release")
    for name in (portable.MODEL_FILE, portable.METADATA_FILE):
        (release / name).unlink()
    integrity.record(release)  # a release written without them
    written = portable.write(restore.load_workdir(release), release)
    assert sorted(p.name for p in written) == sorted([portable.MODEL_FILE, portable.METADATA_FILE])
    assert not [p for p in release.iterdir() if p.name.startswith(".")]
    metadata = json.loads((release / portable.METADATA_FILE).read_text())
    record = json.loads((release / "release.json").read_text())
    assert metadata["test_accuracy"] == pytest.approx(np.mean(record["test_accuracy"]))
    assert metadata["commit"] == record["commit"] and metadata["model"] == "lstm"
