"""The portable model as ONNX: `model.onnx`, converted with jax2onnx and run with onnxruntime.

`convert` turns the same function as the portable model (`portable.probabilities_function`: uint8
images `[n, 28, 28, 1]` for any `n` -> the ten class probabilities `[n, 10]` float32, the
normalisation inside, the members' mean, flip TTA when recorded) into an ONNX graph with the weights
as initializers. `write` saves it as `model.onnx` beside `model.jaxexport` (its `model.json` serves
both); a model that does not convert is logged in one line and goes without. `load` runs it with
onnxruntime alone (no jax2onnx, no flax).

  from fmnist_jax import onnx_export
  model = onnx_export.load("checkpoints/pretrained/cnn")
  probabilities = model.probabilities(images)  # uint8 [n, 28, 28, 1] -> [n, 10]
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fmnist_jax import files, portable
from fmnist_jax.errors import UserError

if TYPE_CHECKING:
    from fmnist_jax.restore import Restored

log = logging.getLogger(__name__)
MODEL_FILE = "model.onnx"
OPSET = 23
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
INSTALL = "pip install -e '.[onnx]'"
PLUGINS = ("jax", "flax")  # the libraries whose jax2onnx converters these models need


def convertible(restored: Restored) -> Restored:
    """`restored` with what jax2onnx cannot trace replaced by its equal: the lstm's scan over the
    rows (flax's `nn.RNN`, whose carry shape fails with a symbolic batch size) unrolled."""
    from fmnist_jax.models.lstm import LSTM  # pylint: disable=import-outside-toplevel
    if isinstance(restored.model, LSTM):
        return dataclasses.replace(restored, model=restored.model.clone(scan=False))
    return restored


def convert(restored: Restored) -> bytes:
    """The serialized ONNX model of `restored`'s probabilities function, batch dimension `n`."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    # onnx_ir notes shapes it leaves untyped while serializing, and jax2onnx 0.13 logs tracebacks
    # of plugins for libraries this model does not use (dm_pix's, on jax 0.10): neither is a
    # problem of the model, and a conversion that fails raises
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.ERROR)
    try:
        from jax2onnx import to_onnx  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise UserError(f"converting to ONNX needs jax2onnx: {INSTALL}") from None
    _load_plugins()
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(portable.INPUT_SHAPE), jnp.uint8)
    with contextlib.redirect_stdout(io.StringIO()):  # jax2onnx 0.13's Conv plugin prints DEBUG
        proto = to_onnx(portable.probabilities_function(convertible(restored), unroll_members=True),
                        [spec], model_name=f"fmnist_{restored.meta['model']}", opset=OPSET,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    # the shapes noted on intermediate values are optional, and on jax 0.12 jax2onnx 0.13 notes the
    # flip TTA's concatenation as `n` images instead of `2n`, which onnxruntime then enforces: it
    # infers them itself
    del proto.graph.value_info[:]
    return proto.SerializeToString()


def _load_plugins() -> None:
    """Registers jax2onnx's converters of jax and flax only. By default its first conversion
    imports all 500 of its plugin modules, equinox's and its examples' too: 18 s on the 2-core
    machine under load, against 2 s for these, and the ONNX files come out byte for byte the
    same (docs/serving.md). Where jax2onnx's plugin registry differs from 0.13's, it is left to
    load everything."""
    from jax2onnx.plugins import plugin_system  # pylint: disable=import-outside-toplevel
    import_tree = getattr(plugin_system, "_import_tree", None)
    if import_tree is None or getattr(plugin_system, "_already_imported_plugins", True):
        return
    root = Path(plugin_system.__file__).parent
    for library in PLUGINS:
        import_tree(root / library, f"jax2onnx.plugins.{library}")
    plugin_system._already_imported_plugins = True  # pylint: disable=protected-access


def write(restored: Restored, folder: str | Path) -> list[Path]:
    """`model.onnx` of `restored` in `folder` (written beside itself and renamed); the paths
    written: none when the model does not convert (one line says why, and a stale file goes)."""
    path = Path(folder) / MODEL_FILE
    if importlib.util.find_spec("jax2onnx") is None:
        log.warning("%s not written: jax2onnx is not installed (%s)", path, INSTALL)
        return []
    try:
        content = convert(restored)
    except Exception as e:  # pylint: disable=broad-except  # any converter failure: no model.onnx
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        log.warning("%s not written: the %s model does not convert to ONNX (%s: %s)", path,
                    restored.meta["model"], type(e).__name__, reason[:200])
        path.unlink(missing_ok=True)
        return []
    files.write_atomically(path, content)
    return [path]


@dataclasses.dataclass(frozen=True)
class OnnxModel(portable.Described):
    """A loaded `model.onnx` in an onnxruntime session, with the release's `model.json`."""

    session: Any  # onnxruntime.InferenceSession
    metadata: dict[str, Any]

    @property
    def runtime(self) -> str:
        import onnxruntime  # pylint: disable=import-outside-toplevel
        return f"onnxruntime {onnxruntime.__version__}"

    @property
    def device(self) -> str:
        return f"cpu ({', '.join(self.session.get_providers())})"

    def probabilities(self, images: Any) -> np.ndarray:
        """uint8 `[n, 28, 28, 1]` -> the ten class probabilities `[n, 10]` float32."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(images, np.uint8)})[0]

    def batch_function(self, on_compile: Callable[[], None]) -> Callable[[np.ndarray], Any]:
        """The function a server calls on padded batches: the session itself (nothing compiles,
        so `on_compile` is never called)."""
        del on_compile
        return self.probabilities


def session(model: bytes | str | Path) -> Any:
    """An onnxruntime CPU session of a serialized model or a `.onnx` file, warnings silenced."""
    try:
        import onnxruntime  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise UserError(f"the ONNX runtime needs onnxruntime: {INSTALL}") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: not the graph optimizer's notes on initializers
    # idle threads sleep instead of spinning: spinning took 13 ms instead of 1.2 ms per image
    # with other processes on the cores (see docs/serving.md#onnx)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def load(path: str | Path) -> OnnxModel:
    """The ONNX model in `path`: a folder holding `model.onnx` and `model.json`, or that file."""
    model_path, metadata = portable.locate(path, MODEL_FILE, "ONNX model")
    return OnnxModel(session(model_path), metadata)


def from_restored(restored: Restored) -> OnnxModel:
    """`restored` converted in memory (for a workdir that has no `model.onnx`)."""
    return OnnxModel(session(convert(restored)), portable.metadata(restored))
