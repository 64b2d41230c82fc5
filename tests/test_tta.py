"""Test-time augmentation by horizontal flip: the averaged probabilities, in the prediction path
that evaluation, prediction and releases share, and recorded by a release."""

from __future__ import annotations

import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import subprocess_runs
from conftest import PRETRAINED, synthetic_split
from fmnist_jax import config as config_lib
from fmnist_jax import evaluation, restore, run
from fmnist_jax import train as train_lib
from fmnist_jax.errors import CheckpointError
from fmnist_jax.models import create_model

IMAGES = jnp.asarray(synthetic_split(7).images)  # 7: not a whole number of evaluation batches
MEAN, STD = 0.286, 0.353
RELEASES = PRETRAINED


def softmax_of(forward, images):
    return jax.nn.softmax(forward(images).astype(jnp.float32))


class FlipTTATest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_the_mean_of_the_probabilities_on_the_images_and_their_mirrors(self):
        w = jax.random.normal(jax.random.key(0), (28 * 28, 10))
        forward = lambda x: (x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0) @ w
        averaged = self.variant(train_lib.flip_tta(forward))(IMAGES)
        chex.assert_shape(averaged, (7, 10))
        expected = (softmax_of(forward, IMAGES) + softmax_of(forward, IMAGES[:, :, ::-1])) / 2
        chex.assert_trees_all_close(jax.nn.softmax(averaged), expected, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(jnp.exp(averaged), expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(expected, softmax_of(forward, IMAGES), atol=1e-3)  # flip matters


def _stacked(model: nn.Module, members: int):
    def one(key):
        variables = model.init(key, jnp.zeros((1, 28, 28, 1)), train=False)
        return variables["params"], variables.get("batch_stats", {})
    return jax.vmap(one)(jax.random.split(jax.random.key(1), members))


def test_make_predict_with_tta_averages_each_member_over_image_and_mirror():
    model = create_model({"name": "mlp", "hidden": (32,)})
    params, batch_stats = _stacked(model, 2)
    plain = train_lib.make_predict(model, MEAN, STD, batch_size=4)
    tta = train_lib.make_predict(model, MEAN, STD, batch_size=4, tta=True)
    out = tta(params, batch_stats, IMAGES)
    chex.assert_shape(out, (2, 7, 10))
    chex.assert_tree_all_finite(out)
    expected = (jax.nn.softmax(plain(params, batch_stats, IMAGES))
                + jax.nn.softmax(plain(params, batch_stats, IMAGES[:, :, ::-1]))) / 2
    chex.assert_trees_all_close(jax.nn.softmax(out), expected, rtol=1e-5, atol=1e-6)


class MirrorSymmetric(nn.Module):
    """Flip-invariant by construction: a Dense layer on the image plus its mirror."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        symmetric = x + x[:, :, ::-1]
        return nn.Dense(10)(symmetric.reshape(x.shape[0], -1))


def test_a_flip_invariant_model_predicts_the_same_with_tta():
    model = MirrorSymmetric()
    params, batch_stats = _stacked(model, 1)
    plain = train_lib.make_predict(model, MEAN, STD, batch_size=4)(params, batch_stats, IMAGES)
    tta = train_lib.make_predict(model, MEAN, STD, batch_size=4, tta=True)(
        params, batch_stats, IMAGES)
    chex.assert_trees_all_close(jax.nn.softmax(tta), jax.nn.softmax(plain), rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_a_release_records_tta_and_evaluation_follows_it(tmp_path, tiny_workdir):
    workdir, out = tiny_workdir(1), tmp_path / "release"
    exported = subprocess_runs.run("export", f"--workdir={workdir}", f"--out={out}", "--tta")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "with flip TTA" in exported.stdout
    record = json.loads((out / "release.json").read_text())
    summary = json.loads((workdir / "summary.json").read_text())
    assert record["tta"] is True
    assert json.loads((out / "config.json").read_text())["config"]["tta"] is True
    assert record["run_test_accuracy"] == summary["test_accuracy"]

    default = evaluation.evaluate(restore.load_workdir(out))
    assert default.restored.tta
    accuracy = float((default.probabilities.argmax(-1) == default.labels).mean())
    assert accuracy == pytest.approx(record["test_accuracy"][0], abs=1e-9)
    without = evaluation.evaluate(restore.load_workdir(out, tta=False))
    assert float((without.probabilities.argmax(-1) == without.labels).mean()) == pytest.approx(
        summary["test_accuracy"][0], abs=1e-9)
    assert not np.allclose(default.member_probabilities, without.member_probabilities)

    # the command's main in this process: its metrics.json is checked, not its process
    evaluated = subprocess_runs.run_main("evaluate", f"--workdir={out}", "--no-tta",
                                         "--no-explain", f"--output-dir={tmp_path / 'eval'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["tta"] is False
    assert metrics["accuracy"] == pytest.approx(summary["test_accuracy"][0], abs=1e-9)


@pytest.mark.parametrize("path", sorted(RELEASES.glob("*/config.json")),
                         ids=lambda p: p.parent.name)
def test_a_run_stored_before_tta_rotation_and_zoom_resumes_with_them_off(path):
    stored = json.loads(path.read_text())["config"]  # as stored before the fields existed:
    stored.pop("tta", None)
    stored["augment"] = {k: v for k, v in stored["augment"].items() if k not in ("rotate", "zoom")}
    config = ml_collections.ConfigDict(config_lib.with_defaults(stored))
    assert not config.tta and config.augment.rotate == 0 and config.augment.zoom == 0
    run.check_resumable(stored, config, path.parent)
    for field, value in (("tta", True), ("augment.rotate", 10.0), ("augment.zoom", 0.1)):
        changed = ml_collections.ConfigDict(config_lib.with_defaults(stored))
        config_lib.apply_override(changed, field, str(value))
        with pytest.raises(CheckpointError, match=field):
            run.check_resumable(stored, changed, path.parent)
