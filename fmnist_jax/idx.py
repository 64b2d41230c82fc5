"""Reading and writing the IDX files Fashion-MNIST ships in, with strict validation."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from fmnist_jax.errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
NUM_CLASSES = 10


def _payload(path: Path, fix: str) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic bytes."""
    if not path.is_file():
        raise DataError(f"missing data file {path}; {fix}")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a valid gzip file ({e}); {fix}") from None


def read_idx(path: str | Path, magic: int, fix: str) -> np.ndarray:
    """Parses one IDX file of unsigned bytes, checking its magic number and size."""
    path = Path(path)
    data = _payload(path, fix)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated ({len(data)} bytes, header needs {header}); {fix}")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(f"{path} has IDX magic number {found:#010x}, expected {magic:#010x}; {fix}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape)  # Python ints: a 64-bit product can wrap around
    if len(data) != expected:
        raise DataError(
            f"{path} holds {len(data)} bytes but its header {shape} needs {expected}; {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_split(images_path: str | Path, labels_path: str | Path, fix: str):
    """Images `[N, 28, 28, 1]` uint8 and labels `[N]` int32 from a pair of IDX files."""
    images = read_idx(images_path, IMAGES_MAGIC, fix)
    labels = read_idx(labels_path, LABELS_MAGIC, fix)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds images of {images.shape[1:]}, expected (28, 28); {fix}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            f"labels; {fix}")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{labels_path} has label {labels.max()}, outside 0..9; {fix}")
    return images[..., None], labels.astype(np.int32)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Writes uint8 `array` as an IDX file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
