"""Out-of-distribution flag: does an input look like Fashion-MNIST at all?

Four numbers per image (`components`), from one pass of the model's first member (of those
`restore.select` chose):

- `mahalanobis`: the squared Mahalanobis distance of the penultimate embedding (`similar.py`'s,
  scaled to unit length as its cosine similarity does) to the nearest class mean, with one
  covariance shared by the classes (Lee et al. 2018), both fit on training images;
- `energy`: minus the logsumexp of the logits (Liu et al. 2020);
- `neg_max_probability`: minus the largest softmax probability (Hendrycks & Gimpel 2017);
- `ink`: the share of pixels brighter than `INK_LEVEL`.

A `Detector` turns them into one `ood_score` (higher: less like Fashion-MNIST) by the method that
`benchmarks/ood_methods.py` chose by measurement, `METHOD`: the larger of the Mahalanobis distance
and the energy, each standardised on the validation split, with an ink veto (an image with less
ink than any training image had, e.g. a blank one, is out of distribution whatever its score). The
threshold is fit on the validation split so that at least `ACCEPT` of it is accepted.

A release ships the detector as two files that `write` puts beside the portable model:
`ood.jaxexport` (uint8 `[n, 28, 28, 1]` -> components `[n, 4]`, the weights, class means and
precision as constants; jax alone runs it) and `ood.json` (method, standardisation, veto,
threshold, validation acceptance). `load` reads them back; a folder without them has no detector,
and its results say `"in_distribution": null, "ood_score": null`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import files, integrity, portable

if TYPE_CHECKING:
    from fmnist_jax.restore import Restored

log = logging.getLogger(__name__)

MODEL_FILE = "ood.jaxexport"
PARAMETERS_FILE = "ood.json"
COMPONENTS = ("mahalanobis", "energy", "neg_max_probability", "ink")
INK_LEVEL = 32  # a pixel with ink: brighter than 1/8 of full scale
FIT_IMAGES = 20_000  # training images the class means and covariance are fit on
ACCEPT = 0.95  # the share of the validation split accepted
CHUNK = 1000  # images per compiled call when fitting
RIDGE = 1e-3  # added to the covariance's diagonal, relative to its mean variance


def _standard(c: dict[str, np.ndarray], p: dict[str, Any], name: str) -> np.ndarray:
    return (c[name] - p["center"][name]) / p["scale"][name]


# Every method measured: its score from the components and the fitted parameters.
METHODS: dict[str, Callable[[dict[str, np.ndarray], dict[str, Any]], np.ndarray]] = {
    "max_probability": lambda c, p: c["neg_max_probability"],
    "energy": lambda c, p: c["energy"],
    "mahalanobis": lambda c, p: c["mahalanobis"],
    "mahalanobis+energy": lambda c, p: (_standard(c, p, "mahalanobis")
                                        + _standard(c, p, "energy")),
    "max(mahalanobis, energy)": lambda c, p: np.maximum(_standard(c, p, "mahalanobis"),
                                                        _standard(c, p, "energy")),
}
METHOD, VETO = "mahalanobis+energy", True


def components_function(restored: Restored, means: np.ndarray, cholesky: np.ndarray
                        ) -> Callable[[jax.Array], jax.Array]:
    """`f(images uint8 [N, 28, 28, 1]) -> [N, 4]` float32 (`COMPONENTS`) of the first member of
    `restored`, with the class means `[C, D]` and the Cholesky factor `[D, D]` of the precision as
    constants."""
    from fmnist_jax import restore, similar  # pylint: disable=import-outside-toplevel
    from fmnist_jax import train as train_lib  # pylint: disable=import-outside-toplevel
    stats = restored.meta["data"]
    variables = restore.select(restored, member=0).variables
    projected_means = jnp.asarray(means @ cholesky, jnp.float32)
    factor = jnp.asarray(cholesky, jnp.float32)

    def components(images: jax.Array) -> jax.Array:
        x = train_lib.normalize(images, stats["mean"], stats["std"])
        embedding, logits = similar.embedding_and_logits(restored.model, variables, x)
        logits = logits.astype(jnp.float32)
        embedding = embedding.astype(jnp.float32)
        unit = embedding / jnp.maximum(jnp.linalg.norm(embedding, axis=-1, keepdims=True), 1e-12)
        projected = unit @ factor
        distances = ((projected[:, None] - projected_means[None]) ** 2).sum(-1).min(-1)
        energy = -jax.nn.logsumexp(logits, axis=-1)
        neg_max = -jax.nn.softmax(logits).max(-1)
        ink = (images > INK_LEVEL).mean(axis=(1, 2, 3)).astype(jnp.float32)
        return jnp.stack([distances, energy, neg_max, ink], -1)

    return components


def class_statistics(embeddings: np.ndarray, labels: np.ndarray, classes: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Class means `[C, D]` and a Cholesky factor `L` of the shared precision (`P = L L^T`)."""
    embeddings = embeddings.astype(np.float64)
    means = np.stack([embeddings[labels == c].mean(0) for c in range(classes)])
    centred = embeddings - means[labels]
    covariance = centred.T @ centred / len(embeddings)
    covariance += RIDGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    return means, np.linalg.cholesky(np.linalg.inv(covariance))


def as_dict(components: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.asarray(components[:, i], np.float64) for i, name in enumerate(COMPONENTS)}


@dataclasses.dataclass(frozen=True)
class Detector:
    """The components function and the parameters of `ood.json`."""

    components: Callable[[Any], Any]  # uint8 [N, 28, 28, 1] -> [N, 4]
    parameters: dict[str, Any]

    def vetoed(self, c: dict[str, np.ndarray]) -> np.ndarray:
        """Images with less ink than any training image (never, without the veto)."""
        p = self.parameters
        return c["ink"] < p["ink_min"] if p["veto"] else np.zeros(len(c["ink"]), bool)

    def score(self, c: dict[str, np.ndarray]) -> np.ndarray:
        return METHODS[self.parameters["method"]](c, self.parameters)

    def ranking(self, c: dict[str, np.ndarray]) -> np.ndarray:
        """The score with vetoed images above all others (for AUROC and the threshold)."""
        return np.where(self.vetoed(c), np.inf, self.score(c))

    def flag(self, components: np.ndarray) -> list[dict[str, Any]]:
        """Per image `{"in_distribution": bool, "ood_score": float}` from its components."""
        c = as_dict(np.asarray(components))
        score = self.score(c)
        accepted = (score <= self.parameters["threshold"]) & ~self.vetoed(c)
        return [{"in_distribution": bool(a), "ood_score": round(float(s), 4)}
                for a, s in zip(accepted, score)]


def no_flag(count: int) -> list[dict[str, Any]]:
    """What a model without a detector says of `count` images."""
    return [{"in_distribution": None, "ood_score": None}] * count


def run_chunked(function: Callable, images: np.ndarray) -> np.ndarray:
    """`function` over `images` in compiled chunks of `CHUNK` (the last one padded)."""
    out = []
    for start in range(0, len(images), CHUNK):
        chunk = images[start:start + CHUNK]
        padded = np.zeros((CHUNK, *chunk.shape[1:]), np.uint8)
        padded[:len(chunk)] = chunk
        out.append(np.asarray(function(padded))[:len(chunk)])
    return np.concatenate(out)


def calibrate(function: Callable, parameters: dict[str, Any], val: dict[str, np.ndarray],
              method: str, veto: bool) -> dict[str, Any]:
    """`parameters` for `method` (with or without the ink veto): the threshold that accepts
    `ACCEPT` of the validation components `val`, and the share it accepts."""
    parameters = dict(parameters, method=method, veto=veto)
    detector = Detector(function, parameters)
    parameters["threshold"] = float(np.quantile(detector.ranking(val), ACCEPT, method="higher"))
    flags = detector.flag(np.stack([val[k] for k in COMPONENTS], -1))
    parameters["validation_accepted"] = float(np.mean([f["in_distribution"] for f in flags]))
    return parameters


def fit(restored: Restored, seed: int = 0) -> tuple[Callable, dict[str, Any], dict]:
    """The jitted components function, `ood.json`'s parameters (`METHOD`) and the validation
    split's components of `restored`; fit on up to `FIT_IMAGES` training images (means,
    covariance, ink floor) and the validation split (standardisation, threshold)."""
    from fmnist_jax import evaluation, similar  # pylint: disable=import-outside-toplevel
    train = similar.training_split(restored)
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[:FIT_IMAGES])
    means, cholesky = class_statistics(similar.unit(similar.embed(restored, train.images[pick])),
                                       train.labels[pick], len(restored.class_names))
    function = jax.jit(components_function(restored, means, cholesky))
    val = as_dict(run_chunked(function, evaluation.load_split(restored.config, "val").images))
    ink = (train.images > INK_LEVEL).mean(axis=(1, 2, 3))
    parameters: dict[str, Any] = {
        "ink_level": INK_LEVEL, "ink_min": float(ink.min()),
        "center": {k: float(v.mean()) for k, v in val.items()},
        "scale": {k: float(v.std()) for k, v in val.items()}, "fit_images": len(pick),
        "validation_images": len(val["ink"]), "components": list(COMPONENTS)}
    return function, calibrate(function, parameters, val, METHOD, VETO), val


def write(restored: Restored, folder: str | Path) -> list[Path]:
    """`ood.jaxexport` and `ood.json` of `restored` in `folder` (each written beside itself and
    renamed); the paths. Without the data to fit on, nothing is written (a warning)."""
    from fmnist_jax.errors import DataError  # pylint: disable=import-outside-toplevel
    folder = Path(folder)
    try:
        function, parameters, _ = fit(restored)
    except DataError as e:
        log.warning("no out-of-distribution detector written (%s)", e)
        return []
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(portable.INPUT_SHAPE), jnp.uint8)
    exported = jax.export.export(function, platforms=portable.PLATFORMS)(spec)
    paths = [folder / MODEL_FILE, folder / PARAMETERS_FILE]
    # pylint: disable-next=protected-access
    files.write_atomically(paths[0], bytes(exported.serialize()))
    # pylint: disable-next=protected-access
    files.write_atomically(paths[1], (json.dumps(parameters, indent=2) + "\n").encode())
    return paths


def load(path: str | Path) -> Detector | None:
    """The detector a release or workdir ships: `path` is its folder or a model file in it; None
    when it has none."""
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    if not folder.is_dir() or not (folder / MODEL_FILE).is_file():
        return None
    integrity.verify(folder, [MODEL_FILE, PARAMETERS_FILE])  # the files read, as portable.load
    exported = jax.export.deserialize(bytearray((folder / MODEL_FILE).read_bytes()))
    parameters = json.loads((folder / PARAMETERS_FILE).read_text())
    return Detector(lambda images: exported.call(jnp.asarray(images, jnp.uint8)), parameters)


def outlier_sets(test_images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs that are not Fashion-MNIST, uint8 `[N, 28, 28, 1]`: scikit-learn's 8x8 digits
    scaled to 28x28, blank images (black, white, 1x1 and 300x200 through `images.to_model_input`),
    uniform noise, inverted test images, and crops of scikit-learn's two sample photos made into
    model inputs as predict.py makes a photo. Needs scikit-learn (the test extra)."""
    # pylint: disable-next=import-outside-toplevel
    from sklearn.datasets import load_digits, load_sample_images
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from fmnist_jax import images  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(seed)
    digits = [np.asarray(Image.fromarray((d * 255 / 16).astype(np.uint8)).resize(
        (28, 28), Image.Resampling.BILINEAR)) for d in load_digits().images]
    blanks = [np.zeros((28, 28)), np.full((28, 28), 255.0), np.full((1, 1), 128.0),
              np.full((200, 300), 255.0)]
    photos = []
    for photo in load_sample_images().images:
        gray = photo.mean(-1)
        for _ in range(100):
            size = int(rng.integers(48, 256))
            top, left = (int(rng.integers(0, n - size)) for n in gray.shape)
            photos.append(images.to_model_input(gray[top:top + size, left:left + size]))
    return {"digits": np.stack(digits)[..., None],
            "blank": np.stack([images.to_model_input(b) for b in blanks]),
            "noise": rng.integers(0, 256, (200, 28, 28, 1)).astype(np.uint8),
            "inverted": 255 - test_images[:1000], "photo crops": np.stack(photos)}
