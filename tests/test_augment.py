"""On-device augmentation: shapes, dtype, identity when off, determinism, what each op does."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import augment

from conftest import synthetic_split

IMAGES = jnp.asarray(synthetic_split(16).images)


class AugmentTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_shape_dtype_and_determinism(self):
        fn = self.variant(lambda k, x: augment.augment(k, x, translate=2, flip=True, erase=6))
        a, b = fn(jax.random.key(0), IMAGES), fn(jax.random.key(0), IMAGES)
        chex.assert_shape(a, IMAGES.shape)
        chex.assert_type(a, jnp.uint8)
        chex.assert_trees_all_equal(a, b)
        assert not np.array_equal(a, fn(jax.random.key(1), IMAGES))


def test_identity_when_disabled():
    chex.assert_trees_all_equal(augment.augment(jax.random.key(0), IMAGES), IMAGES)


def test_flip_really_flips():
    flipped = augment.random_flip(jax.random.key(0), IMAGES)
    for original, out in zip(np.asarray(IMAGES), np.asarray(flipped)):
        assert np.array_equal(out, original) or np.array_equal(out, original[:, ::-1])
    assert any(not np.array_equal(o, x) for o, x in zip(np.asarray(flipped), np.asarray(IMAGES)))


def test_translation_shifts_content_within_the_padding():
    image = jnp.zeros((1, 28, 28, 1), jnp.uint8).at[0, 14, 14, 0].set(255)
    for seed in range(10):
        out = np.asarray(augment.random_translate(jax.random.key(seed), image, 2))[0, ..., 0]
        (row,), (col,) = np.nonzero(out)
        assert abs(row - 14) <= 2 and abs(col - 14) <= 2


def test_erase_zeroes_at_most_a_square():
    bright = jnp.full((8, 28, 28, 1), 200, jnp.uint8)
    out = np.asarray(augment.random_erase(jax.random.key(0), bright, 6))
    zeros = (out == 0).reshape(8, -1).sum(1)
    assert zeros.max() <= 36 and zeros.min() > 0


def _dot(row: int, col: int) -> jax.Array:
    return jnp.zeros((1, 28, 28, 1), jnp.uint8).at[0, row, col, 0].set(255)


def _centroid(image: np.ndarray) -> np.ndarray:
    weights = image[..., 0].astype(np.float64)
    rows, cols = np.indices(weights.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()


class RotateAndZoomTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_shape_dtype_and_determinism(self):
        fn = self.variant(lambda k, x: augment.augment(k, x, rotate=20.0, zoom=0.15))
        a, b = fn(jax.random.key(0), IMAGES), fn(jax.random.key(0), IMAGES)
        chex.assert_shape(a, IMAGES.shape)
        chex.assert_type(a, jnp.uint8)
        chex.assert_trees_all_equal(a, b)
        assert not np.array_equal(a, fn(jax.random.key(1), IMAGES))
        assert not np.array_equal(a, IMAGES)

    @chex.variants(with_jit=True, without_jit=True)
    def test_vmaps_over_members(self):
        keys = jax.random.split(jax.random.key(0), 2)
        fn = self.variant(jax.vmap(lambda k: augment.random_rotate_and_zoom(k, IMAGES, 20.0, 0.1)))
        out = fn(keys)
        chex.assert_shape(out, (2, *IMAGES.shape))
        chex.assert_trees_all_equal(out[1], augment.random_rotate_and_zoom(keys[1], IMAGES, 20.0,
                                                                           0.1))


def test_rotate_and_zoom_of_strength_zero_is_the_identity():
    out = augment.random_rotate_and_zoom(jax.random.key(0), IMAGES, 0.0, 0.0)
    chex.assert_trees_all_equal(out, IMAGES)
    chex.assert_trees_all_equal(augment.augment(jax.random.key(0), IMAGES, rotate=0.0, zoom=0.0),
                                IMAGES)


def test_other_augmentations_draw_as_before_rotation_and_zoom_existed():
    key = jax.random.key(3)
    k_translate, k_flip, _ = jax.random.split(key, 3)
    expected = augment.random_flip(k_flip, augment.random_translate(k_translate, IMAGES, 2))
    chex.assert_trees_all_equal(augment.augment(key, IMAGES, translate=2, flip=True), expected)


def test_a_quarter_turn_moves_a_pixel_as_the_rotation_matrix_says():
    # (5, 14) - centre (13.5, 13.5) = (-8.5, 0.5); R(90) = [[0, -1], [1, 0]] -> (-0.5, -8.5)
    out = augment.rotate_and_zoom(_dot(5, 14), jnp.array([90.0]), jnp.array([1.0]))
    expected = np.zeros((28, 28), np.uint8)
    expected[13, 5] = 255
    np.testing.assert_array_equal(np.asarray(out)[0, ..., 0], expected)


def test_a_sampled_rotation_lands_a_pixel_within_one_pixel_of_the_matrix():
    images = jnp.concatenate([_dot(6, 18)] * 8)
    key = jax.random.key(5)
    out = np.asarray(augment.random_rotate_and_zoom(key, images, 40.0, 0.0))
    angles, scales = augment.rotation_and_zoom_draws(key, 8, 40.0, 0.0)
    assert np.ptp(np.asarray(angles)) > 10 and np.all(np.asarray(scales) == 1.0)
    centre = np.array([13.5, 13.5])
    for image, angle in zip(out, np.deg2rad(np.asarray(angles, np.float64))):
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        expected = centre + rotation @ (np.array([6.0, 18.0]) - centre)
        assert np.linalg.norm(_centroid(image) - expected) <= 1.0, (np.rad2deg(angle), expected)


@pytest.mark.parametrize("scale", [0.8, 1.25])
def test_zoom_scales_the_area_of_a_centred_square(scale):
    square = jnp.zeros((1, 28, 28, 1), jnp.uint8).at[0, 9:19, 9:19, 0].set(200)
    out = np.asarray(augment.rotate_and_zoom(square, jnp.array([0.0]), jnp.array([scale])))
    area = out.astype(np.float64).sum() / 200
    assert area == pytest.approx(100 * scale**2, rel=0.05)
    np.testing.assert_allclose(_centroid(out[0]), [13.5, 13.5], atol=1e-6)


def test_rotation_keeps_values_in_range_without_wrapping():
    bright = jnp.full((4, 28, 28, 1), 255, jnp.uint8)
    out = np.asarray(augment.rotate_and_zoom(bright, jnp.array([10.0, 33.0, 45.0, -60.0]),
                                             jnp.array([1.0, 1.1, 0.9, 1.0])))
    assert out.dtype == np.uint8 and out.max() == 255
    assert np.all(out[:, 10:18, 10:18] == 255)  # the inside: no overflow to 0
    assert np.all(out[2, 0, :3] == 0)  # a corner shrunk away is black
