"""The portable model: a workdir's inference function as a serialized `jax.export` artifact.

`export` turns a restored workdir or release into one function, uint8 images `[N, 28, 28, 1]` (any
N) -> the ten class probabilities `[N, 10]` float32, with the normalisation inside and the mean of
every member's probabilities (the ensemble of a multi-seed run), each averaged over the image and
its mirror when the run or release records flip test-time augmentation (`config.tta`), the logits
divided by the temperature of a calibrated release (`calibration.py`). The
weights are constants of the function, lowered for CPU and CUDA. `write` saves it as
`model.jaxexport` with `model.json` (class names, model, test accuracy, commit, seeds, tta,
temperature) beside it; `load` verifies the folder's manifest (`integrity.py`) and model.json's
schema, then reads both back with jax, numpy and json alone: no flax, no fmnist_jax model code, so
this module imports nothing else at its top.

  from fmnist_jax import portable
  model = portable.load("checkpoints/pretrained/cnn")
  probabilities = model(images)  # uint8 [N, 28, 28, 1] -> [N, 10]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import files, integrity
from fmnist_jax.errors import CheckpointError

if TYPE_CHECKING:
    from fmnist_jax.restore import Restored

MODEL_FILE = "model.jaxexport"
METADATA_FILE = "model.json"
PLATFORMS = ("cpu", "cuda")
INPUT_SHAPE = "n, 28, 28, 1"


def probabilities_function(restored: Restored, unroll_members: bool = False):
    """`f(images uint8 [N, 28, 28, 1]) -> [N, 10]` float32: the members' mean probabilities, with
    `restored`'s weights as constants; with flip TTA (`train.flip_tta`), each member averages an
    image and its mirror; a calibrated release divides each member's logits by its temperature.
    The members run in a `lax.map`, or with `unroll_members` one after another in the graph (no
    loop: what jax2onnx 0.13 converts on jax 0.12, whose scan it cannot read)."""
    from fmnist_jax import train as train_lib  # pylint: disable=import-outside-toplevel
    stats, tta, temperature = restored.meta["data"], restored.tta, restored.temperature

    def member(weights, images):
        forward = train_lib.member_forward(restored.model, *weights, stats["mean"], stats["std"],
                                           tta)
        return jax.nn.softmax(forward(images).astype(jnp.float32) / temperature)

    def probabilities(images: jax.Array) -> jax.Array:
        weights = (restored.params, restored.batch_stats)
        if unroll_members:
            count = jax.tree.leaves(weights)[0].shape[0]
            return sum(member(jax.tree.map(lambda x, k=k: x[k], weights), images)
                       for k in range(count)) / count
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
            "calibrated": restored.temperature != 1, "temperature": restored.temperature,
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


class Described:
    """A loaded model file with its `model.json` (`metadata`): what the runtimes share."""

    metadata: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])


@dataclasses.dataclass(frozen=True)
class Portable(Described):
    """A loaded portable model: call it on uint8 `[N, 28, 28, 1]` for probabilities `[N, 10]`."""

    exported: jax.export.Exported
    metadata: dict[str, Any]

    @property
    def runtime(self) -> str:
        return f"jax {jax.__version__}"

    @property
    def device(self) -> str:
        return f"{jax.devices()[0].device_kind} ({jax.default_backend()})"

    def __call__(self, images: Any) -> jax.Array:
        return self.exported.call(jnp.asarray(images, jnp.uint8))

    def probabilities(self, images: Any) -> np.ndarray:
        return np.asarray(self(images))

    def batch_function(self, on_compile: Callable[[], None]) -> Callable[[np.ndarray], Any]:
        """The function a server calls on padded batches: jitted, `on_compile` called on every
        trace (a new batch size)."""

        def traced(images):
            on_compile()
            return self.exported.call(images)

        return jax.jit(traced)


def locate(path: str | Path, model_file: str, kind: str) -> tuple[Path, dict[str, Any]]:
    """The `model_file` in `path` (a folder holding it, or that file itself) and its
    `model.json`, or a CheckpointError naming the `kind` of model missing and the fix."""
    path = Path(path)
    model_path = path / model_file if path.is_dir() else path
    metadata_path = model_path.with_suffix(".json")
    if not (model_path.is_file() and metadata_path.is_file()):
        raise CheckpointError(f"{path} holds no {kind} ({model_file} with {METADATA_FILE}); "
                              f"write one with scripts/export.py --workdir=DIR --portable-only")
    integrity.verify(model_path.parent, [model_path.name, metadata_path.name])
    return model_path, integrity.check_schema(metadata_path, METADATA_FILE)


def load(path: str | Path) -> Portable:
    """The portable model in `path`: a folder holding `model.jaxexport`, or that file itself."""
    model_path, metadata = locate(path, MODEL_FILE, "portable model")
    return Portable(jax.export.deserialize(bytearray(model_path.read_bytes())), metadata)


def from_restored(restored: Restored) -> Portable:
    """`restored` exported in memory (for a workdir that has no `model.jaxexport`)."""
    return Portable(export(restored), metadata(restored))
