"""On-device augmentation of uint8 image batches `[B, 28, 28, 1]`, inside the compiled step.

Every random choice comes from the key passed in, so a seed still fixes the run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy import ndimage


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


def rotate_and_zoom(images: jax.Array, angles: jax.Array, scales: jax.Array) -> jax.Array:
    """Each image rotated by `angles[i]` (degrees) and scaled by `scales[i]` about its centre,
    resampled bilinearly; what comes from outside the image is black.

    The content at (row, col) moves to `centre + scale * R @ ((row, col) - centre)`, with
    `R = [[cos a, -sin a], [sin a, cos a]]` acting on (row, col): a positive angle turns the
    picture counter-clockwise as displayed (rows downwards).
    """
    _, h, w, _ = images.shape
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")).reshape(2, -1)

    def one(image, angle, scale):
        radians = jnp.deg2rad(angle)
        cos, sin = jnp.cos(radians), jnp.sin(radians)
        inverse = jnp.array([[cos, sin], [-sin, cos]]) / scale  # R^-1 / scale
        source = inverse @ (grid - centre[:, None]) + centre[:, None]
        sample = lambda channel: ndimage.map_coordinates(channel, list(source), order=1,
                                                         mode="constant", cval=0.0)
        out = jax.vmap(sample, in_axes=-1, out_axes=-1)(image.astype(jnp.float32))
        return jnp.clip(jnp.round(out), 0, 255).reshape(image.shape).astype(images.dtype)

    return jax.vmap(one)(images, angles, scales)


def rotation_and_zoom_draws(key: jax.Array, num_images: int, degrees: float,
                            zoom: float) -> tuple[jax.Array, jax.Array]:
    """Per image, an angle uniform in [-degrees, degrees] and a scale uniform in [1 - zoom,
    1 + zoom]."""
    k_angle, k_scale = jax.random.split(key)
    angles = jax.random.uniform(k_angle, (num_images,), minval=-degrees, maxval=degrees)
    scales = jax.random.uniform(k_scale, (num_images,), minval=1.0 - zoom, maxval=1.0 + zoom)
    return angles, scales


def random_rotate_and_zoom(key: jax.Array, images: jax.Array, degrees: float,
                           zoom: float) -> jax.Array:
    """`rotate_and_zoom` by the angles and scales of `rotation_and_zoom_draws`."""
    return rotate_and_zoom(images, *rotation_and_zoom_draws(key, images.shape[0], degrees, zoom))


def augment(key: jax.Array, images: jax.Array, *, translate: int = 0, flip: bool = False,
            erase: int = 0, rotate: float = 0.0, zoom: float = 0.0) -> jax.Array:
    """The configured augmentations in order rotate and zoom, translate, flip, erase; the
    identity when all off. Rotation and zoom draw from a key folded from `key`, so the other
    three draw what they drew before those existed."""
    k_translate, k_flip, k_erase = jax.random.split(key, 3)
    if rotate or zoom:
        images = random_rotate_and_zoom(jax.random.fold_in(key, 3), images, rotate, zoom)
    if translate:
        images = random_translate(k_translate, images, translate)
    if flip:
        images = random_flip(k_flip, images)
    if erase:
        images = random_erase(k_erase, images, erase)
    return images
