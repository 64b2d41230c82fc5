"""Explanations: shapes and finiteness of every attribution, Grad-CAM against a hand computation,
integrated gradients' completeness, and the sanity checks on the shipped cnn."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import PRETRAINED
from fmnist_jax import data, explain, restore
from fmnist_jax.models import create_model
from fmnist_jax.train import normalize
from subprocess_runs import run_main

TINY = {
    "mlp": {"name": "mlp", "hidden": (16,)},
    "cnn": {"name": "cnn", "conv_features": (4, 8), "dense_features": (16,)},
    "lstm": {"name": "lstm", "hidden": (8,)},
    "resnet": {"name": "resnet", "stage_features": (4, 8), "blocks_per_stage": 1},
}


def tiny_explainer(name: str, seed: int = 0) -> explain.Explainer:
    model = create_model(TINY[name])
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)), train=False)
    return explain.Explainer(model, {"batch_stats": {}, **variables}, 0.286, 0.353, 4)


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1)).astype(np.uint8)


@pytest.mark.parametrize("name", TINY)
def test_every_method_gives_finite_maps_of_the_image_size(name):
    explainer = tiny_explainer(name)
    expected = ["grad_cam", "integrated_gradients"] if name in ("cnn", "resnet") \
        else ["integrated_gradients"]
    assert explainer.methods == expected
    images = random_images(6)  # two batches of 4, the second ragged
    for method in explainer.methods:
        maps = explainer.attributions(method, images, np.arange(6) % 10)
        chex.assert_shape(maps, (6, 28, 28))
        chex.assert_tree_all_finite(maps)
        assert np.abs(maps).max() > 0, method


def test_grad_cam_of_a_one_stage_cnn_matches_a_hand_computation():
    """conv 3x3 (2 filters, no BatchNorm) + ReLU + 2x2 max-pool, then one Dense: the gradient of a
    logit with respect to the pooled activations A is that class's Dense column, so the map is
    ReLU(sum_k mean(W[..., k, c]) A[..., k])."""
    model = create_model({"name": "cnn", "conv_features": (2,), "dense_features": (),
                          "use_batch_norm": False})
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 28, 28, 1)), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    params = jax.tree.map(np.asarray, variables["params"])
    kernel, bias = params["ConvBlock_0"]["Conv_0"]["kernel"], params["ConvBlock_0"]["Conv_0"]["bias"]
    padded = np.pad(np.asarray(x)[..., 0], ((0, 0), (1, 1), (1, 1)))
    conv = sum(padded[:, i:i + 28, j:j + 28, None] * kernel[i, j, 0] for i in range(3)
               for j in range(3)) + bias
    pooled = np.maximum(conv, 0).reshape(3, 14, 2, 14, 2, 2).max(axis=(2, 4))  # [3, 14, 14, 2]
    classes = np.array([0, 3, 9])
    dense = params["Dense_0"]["kernel"].reshape(14, 14, 2, 10)
    weights = dense[..., classes].mean(axis=(0, 1)).T  # [3, 2]
    expected = np.maximum(np.einsum("bhwk,bk->bhw", pooled, weights), 0)
    path = explain.last_stage(model, variables)
    assert path == ("ConvBlock_0",)
    maps = jax.jit(explain.grad_cam, static_argnums=(0, 4))(model, variables, x,
                                                           jnp.asarray(classes), path)
    chex.assert_trees_all_close(maps, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_integrated_gradients_sum_to_the_logit_difference(name):
    explainer = tiny_explainer(name)
    x = normalize(jnp.asarray(random_images(2)), explainer.mean, explainer.std)
    black = normalize(jnp.zeros((1, 28, 28, 1), jnp.uint8), explainer.mean, explainer.std)
    targets = jnp.array([2, 7])
    maps = explain.integrated_gradients(explainer.model, explainer.variables, x, black, targets,
                                        steps=256)

    def logits(z):
        return explainer.model.apply(explainer.variables, z, train=False)

    difference = logits(x)[jnp.arange(2), targets] - logits(jnp.broadcast_to(black, x.shape))[
        jnp.arange(2), targets]
    chex.assert_trees_all_close(maps.sum((1, 2)), difference, rtol=0.02, atol=1e-3)


def test_rank_correlation_is_one_for_a_monotone_copy_and_zero_for_a_constant_map():
    a = np.random.default_rng(0).normal(size=(2, 28, 28))
    np.testing.assert_allclose(explain.rank_correlation(a, np.exp(a)), [1.0, 1.0])
    np.testing.assert_allclose(explain.rank_correlation(a, np.zeros_like(a)), [0.0, 0.0])


@pytest.fixture(scope="module")
def shipped_cnn(real_data_dir):
    restored = restore.load_workdir(PRETRAINED / "cnn")
    return explain.Explainer.from_restored(restored), data.load_idx_folder(real_data_dir)["test"]


def test_maps_of_the_trained_cnn_differ_from_those_of_random_weights(shipped_cnn):
    """Adebayo et al.'s model-randomisation check: the maps must depend on the learned weights."""
    explainer, test = shipped_cnn
    images, labels = test.images[:16], test.labels[:16]
    for method in explainer.methods:
        trained = explainer.attributions(method, images, labels)
        again = explainer.attributions(method, images, labels)
        random = explainer.attributions(method, images, labels, explainer.random_variables(0))
        assert explain.rank_correlation(trained, again).min() > 0.999
        assert explain.rank_correlation(trained, random).mean() < 0.3, method


def test_deleting_attributed_pixels_first_lowers_the_probability_faster(shipped_cnn):
    explainer, test = shipped_cnn
    numbers = explain.sanity_checks(explainer, test.images[100:164])
    random_auc = numbers["random_order"]["auc"]
    for method in explainer.methods:
        curve = numbers[method]["deletion_curve"]
        assert len(curve) == explain.DELETION_STEPS + 1
        assert curve[0] > 0.8  # the predicted class at the start, nothing deleted
        assert numbers[method]["deletion_auc"] < random_auc, method


@pytest.mark.e2e
def test_predict_explain_writes_heat_maps(real_data_dir, tmp_path):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    test = data.load_idx_folder(real_data_dir)["test"]
    for i in range(2):
        Image.fromarray(test.images[i, ..., 0]).save(tmp_path / f"item{i}.png")
    out = tmp_path / "maps"
    # the command's main in this process: what it writes is checked, not its process
    result = run_main("predict", f"--workdir={PRETRAINED / 'cnn'}", f"--explain={out}",
                      str(tmp_path / "item0.png"), str(tmp_path / "item1.png"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["explain_grad_cam.png",
                                                     "explain_integrated_gradients.png"]
