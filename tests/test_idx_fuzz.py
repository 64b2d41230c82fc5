"""The IDX reader on random bytes, truncations and corruptions: a clear `DataError` or valid data,
never any other exception."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fmnist_jax import idx
from fmnist_jax.errors import DataError

FIX = "the fix"
MAGICS = st.sampled_from([idx.IMAGES_MAGIC, idx.LABELS_MAGIC])
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


VALID_IMAGES = _idx_bytes(np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256)
VALID_FILES = st.sampled_from([VALID_IMAGES, gzip.compress(VALID_IMAGES, mtime=0)])


def read(path: Path, raw: bytes, magic: int) -> np.ndarray | None:
    """`read_idx` on a file holding `raw`: the array, or None after a DataError naming the file."""
    path.write_bytes(raw)
    try:
        array = idx.read_idx(path, magic, FIX)
    except DataError as e:
        assert str(path) in str(e) and str(e).endswith(f"; {FIX}") and "\n" not in str(e)
        return None
    assert array.dtype == np.uint8 and array.ndim == magic & 0xFF
    return array


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "file-idx.gz"


@SETTINGS
@given(raw=st.binary(max_size=4096), magic=MAGICS, gzipped=st.booleans())
@example(raw=struct.pack(">4I", idx.IMAGES_MAGIC, 1 << 31, 1 << 31, 4), magic=idx.IMAGES_MAGIC,
         gzipped=False)  # dimensions whose product overflows 64 bits to 0
@example(raw=b"\x1f\x8b", magic=idx.LABELS_MAGIC, gzipped=False)  # gzip magic, nothing after
def test_random_bytes_give_an_array_or_a_data_error(path, raw, magic, gzipped):
    read(path, gzip.compress(raw) if gzipped else raw, magic)


@SETTINGS
@given(valid=VALID_FILES, data=st.data())
def test_any_truncation_of_a_valid_file_is_a_data_error(path, valid, data):
    length = data.draw(st.integers(0, len(valid) - 1))
    assert read(path, valid[:length], idx.IMAGES_MAGIC) is None


@SETTINGS
@given(valid=VALID_FILES, data=st.data())
def test_corrupted_bytes_give_an_array_or_a_data_error(path, valid, data):
    raw = bytearray(valid)
    for position in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
        raw[position] = data.draw(st.integers(0, 255))
    read(path, bytes(raw), idx.IMAGES_MAGIC)


@SETTINGS
@given(images=st.integers(0, 4), labels=st.lists(st.integers(0, 255), max_size=6),
       side=st.sampled_from([28, 27]))
def test_a_split_is_valid_or_a_data_error(tmp_path, images, labels, side):
    images_path, labels_path = tmp_path / "images", tmp_path / "labels"
    images_path.write_bytes(_idx_bytes(np.zeros((images, side, side), np.uint8)))
    labels_path.write_bytes(_idx_bytes(np.array(labels, np.uint8)))
    try:
        x, y = idx.read_split(images_path, labels_path, FIX)
    except DataError as e:
        assert str(e).endswith(f"; {FIX}")
        assert side != 28 or images != len(labels) or max(labels) > 9
        return
    assert side == 28 and max(labels, default=0) <= 9
    assert x.shape == (images, 28, 28, 1) and y.dtype == np.int32 and y.tolist() == labels
