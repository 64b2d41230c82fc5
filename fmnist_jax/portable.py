"""The portable model: a workdir's inference function as a serialized `jax.export` artifact.

`export` turns a restored workdir or release into one function, uint8 images `[N, 28, 28, 1]` (any
N) -> the ten class probabilities `[N, 10]` float32, with the normalisation inside and the mean of
every member's probabilities (the ensemble of a multi-seed run), each averaged over the image and
its mirror when the run or release records flip test-time augmentation (`config.tta`). The
weights are constants of the function, lowered for CPU and CUDA. `write` saves it as
`model.jaxexport` with `model.json` (class names, model, test accuracy, commit, seeds, tta) beside
it; `load` reads both back with jax, numpy and json alone: no flax, no fmnist_jax model code, so
this module imports nothing else at its top.

  from fmnist_jax import portable
  model = portable.load("checkpoints/pretrained/cnn")
  probabilities = model(images)  # uint8 [N, 28, 28, 1] -> [N, 10]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import files
from fmnist_jax.errors import CheckpointError

if TYPE_CHECKING:
    from fmnist_jax.evaluation import Restored

MODEL_FILE = "model.jaxexport"
METADATA_FILE = "model.json"
PLATFORMS = ("cpu", "cuda")
INPUT_SHAPE = "n, 28, 28, 1"


def probabilities_function(restored: Restored):
    """`f(images uint8 [N, 28, 28, 1]) -> [N, 10]` float32: the members' mean probabilities, with
    `restored`'s weights as constants; with flip TTA (`train.flip_tta`), each member averages an
    image and its mirror."""
    from fmnist_jax import train as train_lib  # pylint: disable=import-outside-toplevel
    stats, tta = restored.meta["data"], restored.tta

    def member(weights, images):
        params, batch_stats = weights

        def forward(x):
            return restored.model.apply({"params": params, "batch_stats": batch_stats},
                                        train_lib.normalize(x, stats["mean"], stats["std"]),
                                        train=False)

        if tta:
            forward = train_lib.flip_tta(forward)
        return jax.nn.softmax(forward(images).astype(jnp.float32))

    def probabilities(images: jax.Array) -> jax.Array:
        weights = (restored.params, restored.batch_stats)
        return jax.lax.map(lambda w: member(w, images), weights).mean(0)

    return probabilities


def export(restored: Restored, platforms: tuple[str, ...] = PLATFORMS) -> jax.export.Exported:
    """`probabilities_function` exported for `platforms`, polymorphic in the number of images."""
    shape = jax.export.symbolic_shape(INPUT_SHAPE)
    spec = jax.ShapeDtypeStruct(shape, jnp.uint8)
    return jax.export.export(jax.jit(probabilities_function(restored)),
                             platforms=platforms)(spec)


def metadata(restored: Restored) -> dict[str, Any]:
    """What a user of the portable model needs to know besides the function itself."""
    workdir = restored.workdir
    summary_path, release_path = workdir / "summary.json", workdir / "release.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    record = json.loads(release_path.read_text()) if release_path.is_file() else {}
    accuracy = summary.get("ensemble", {}).get("test_accuracy", summary.get("test_accuracy"))
    if isinstance(accuracy, list):
        accuracy = float(np.mean(accuracy))
    return {"model": restored.meta["model"], "class_names": restored.class_names,
            "seeds": restored.seeds, "predictor": "ensemble" if len(restored.seeds) > 1
            else "model", "test_accuracy": accuracy, "tta": "flip" if restored.tta else None,
            "commit": record.get("commit") or restored.meta["environment"].get("commit"),
            "step": restored.step, "input": {"shape": INPUT_SHAPE, "dtype": "uint8"},
            "output": "class probabilities [n, 10] float32", "platforms": list(PLATFORMS),
            "jax_version": jax.__version__}


def write(restored: Restored, folder: str | Path) -> list[Path]:
    """`model.jaxexport` and `model.json` of `restored` in `folder`; the paths written."""
    folder = Path(folder)
    paths = [folder / MODEL_FILE, folder / METADATA_FILE]
    serialized = export(restored).serialize()
    files.write_atomically(paths[0], bytes(serialized))
    files.write_atomically(paths[1], (json.dumps(metadata(restored), indent=2) + "\n").encode())
    return paths


@dataclasses.dataclass(frozen=True)
class Portable:
    """A loaded portable model: call it on uint8 `[N, 28, 28, 1]` for probabilities `[N, 10]`."""

    exported: jax.export.Exported
    metadata: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    def __call__(self, images: Any) -> jax.Array:
        return self.exported.call(jnp.asarray(images, jnp.uint8))


def has_export(folder: str | Path) -> bool:
    return (Path(folder) / MODEL_FILE).is_file()


def load(path: str | Path) -> Portable:
    """The portable model in `path`: a folder holding `model.jaxexport`, or that file itself."""
    path = Path(path)
    model_path = path / MODEL_FILE if path.is_dir() else path
    metadata_path = model_path.with_suffix(".json")
    if not (model_path.is_file() and metadata_path.is_file()):
        raise CheckpointError(f"{path} holds no portable model ({MODEL_FILE} with "
                              f"{METADATA_FILE}); write one with scripts/export.py "
                              f"--workdir=DIR --portable-only")
    exported = jax.export.deserialize(bytearray(model_path.read_bytes()))
    return Portable(exported, json.loads(metadata_path.read_text()))
