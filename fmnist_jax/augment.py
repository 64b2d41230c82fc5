"""On-device augmentation of uint8 image batches `[B, 28, 28, 1]`, inside the compiled step.

Every random choice comes from the key passed in, so a seed still fixes the run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_translate(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Pads by `padding` zeros on each side and crops back at a random offset per image."""
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)
    crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, image.shape[-1]))
    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def random_erase(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """Cutout: zeroes a `size` x `size` square at a random centre per image (clipped at edges)."""
    b, h, w, _ = images.shape
    centres = jax.random.randint(key, (b, 2), 0, jnp.array([h, w]))
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    top = centres[:, 0, None, None] - size // 2
    left = centres[:, 1, None, None] - size // 2
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return jnp.where(inside[..., None], jnp.zeros_like(images), images)


def augment(key: jax.Array, images: jax.Array, *, translate: int = 0, flip: bool = False,
            erase: int = 0) -> jax.Array:
    """The configured augmentations in order translate, flip, erase; the identity when all off."""
    k_translate, k_flip, k_erase = jax.random.split(key, 3)
    if translate:
        images = random_translate(k_translate, images, translate)
    if flip:
        images = random_flip(k_flip, images)
    if erase:
        images = random_erase(k_erase, images, erase)
    return images
