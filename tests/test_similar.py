"""Similar items: the penultimate-layer embedding, cosine neighbours, the cache, precision@k."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import PRETRAINED
from fmnist_jax import data, restore, similar
from fmnist_jax.models import create_model
from subprocess_runs import run
from test_explain import TINY, random_images


@pytest.mark.parametrize("name", TINY)
def test_the_embedding_is_what_the_classifier_reads(name):
    """The classifier (the last Dense, `Dense_0` at the top) applied to the embedding gives the
    model's logits."""
    model = create_model(TINY[name])
    x = jnp.asarray(random_images(3), jnp.float32) / 255.0
    variables = model.init(jax.random.key(0), x, train=False)
    embedding = similar.PenultimateLayer(model).apply(variables, x, train=False)
    chex.assert_rank(embedding, 2)
    chex.assert_tree_all_finite(embedding)
    head = variables["params"]["Dense_0"]
    chex.assert_trees_all_close(embedding @ head["kernel"] + head["bias"],
                                model.apply(variables, x, train=False), rtol=1e-5, atol=1e-5)


def test_nearest_and_precision_on_known_vectors():
    index = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    found, distances = similar.nearest(np.array([[3.0, 0.1]]), index, 3)
    np.testing.assert_array_equal(found, [[0, 2, 1]])
    assert 0 < distances[0, 0] < distances[0, 1] < distances[0, 2]
    labels = np.array([0, 1, 1, 0])
    assert similar.precision_at_k(labels[np.array([[0, 1], [2, 1]])], np.array([0, 1])) == 0.75


def test_the_principal_components_come_first():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 5)) * np.array([10.0, 0.1, 3.0, 0.1, 0.1])
    projected = similar.project_2d(points)
    chex.assert_shape(projected, (500, 2))
    np.testing.assert_allclose(projected.std(0), [10.0, 3.0], rtol=0.1)


@pytest.fixture(scope="module")
def shipped_mlp(real_data_dir):
    return restore.load_workdir(PRETRAINED / "mlp", data_dir=real_data_dir)


def test_a_training_image_is_its_own_nearest_neighbour(shipped_mlp, real_data_dir):
    images = data.load_idx_folder(real_data_dir)["test"].images[:300]
    index = similar.embed(shipped_mlp, images)
    chex.assert_shape(index, (300, None))
    chex.assert_tree_all_finite(index)
    found, distances = similar.nearest(index[:20], index, 4)
    np.testing.assert_array_equal(found[:, 0], np.arange(20))
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-5)


def test_training_embeddings_are_computed_once_per_checkpoint(shipped_mlp, tmp_path, monkeypatch):
    embeddings, train = similar.cached_training_embeddings(shipped_mlp, tmp_path)
    assert len(embeddings) == len(train.labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-member0.json", "train-member0.npy"]

    def no_second_pass(*_):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(similar, "embed", no_second_pass)
    again, _ = similar.cached_training_embeddings(shipped_mlp, tmp_path)
    np.testing.assert_array_equal(again, embeddings)


@pytest.mark.e2e
def test_similar_script_writes_the_grid_and_json(real_data_dir, tmp_path):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    test = data.load_idx_folder(real_data_dir)["test"]
    Image.fromarray(test.images[0, ..., 0]).save(tmp_path / "boot.png")
    out = tmp_path / "found"
    result = run("similar", f"--workdir={PRETRAINED / 'mlp'}", str(tmp_path / "boot.png"),
                 "-k", "4", f"--output={out}", f"--cache-dir={tmp_path / 'cache'}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "found.png").is_file()
    assert "boot.png: Ankle boot" in result.stdout
