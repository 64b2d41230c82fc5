"""The runtime of an exported model, chosen by name: `jax` runs `model.jaxexport` (portable.py),
`onnx` runs `model.onnx` with onnxruntime (onnx_export.py). Both give the same interface: `metadata`,
`class_names`, `runtime`, `probabilities(images)` and `batch_function(on_compile)` (what a server
calls on padded batches), so the server and predict.py serve either without a second code path."""

from __future__ import annotations

from pathlib import Path

from fmnist_jax import onnx_export, portable
from fmnist_jax.errors import UserError

# runtime -> (its model file, loading that file or a folder holding it, converting a `Restored`)
RUNTIMES = {"jax": (portable.MODEL_FILE, portable.load, portable.from_restored),
            "onnx": (onnx_export.MODEL_FILE, onnx_export.load, onnx_export.from_restored)}
Model = portable.Portable | onnx_export.OnnxModel


def load(path: str | Path, runtime: str = "jax") -> Model:
    """The model of a release or workdir folder in `runtime` (exported in memory when the folder
    has no such file), or of an exported model file of that runtime."""
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    path = Path(path)
    file_name, loader, from_restored = RUNTIMES[runtime]
    if path.is_file():
        if path.suffix != Path(file_name).suffix:
            raise UserError(f"{path} is not a {file_name} file: the {runtime} runtime reads "
                            f"{file_name}, or a release or workdir folder")
        return loader(path)
    if (path / file_name).is_file():
        return loader(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such workdir, release or exported model; give a folder that "
                        f"scripts/train.py or scripts/export.py wrote")
    from fmnist_jax import restore  # pylint: disable=import-outside-toplevel
    return from_restored(restore.select(restore.load_workdir(path)))
