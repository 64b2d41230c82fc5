"""On-device augmentation: shapes, dtype, identity when off, determinism, what each op does."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

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
