"""Data sources, IDX parsing, the split and the statistics."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fmnist_jax import data, idx
from fmnist_jax.errors import ConfigError, DataError

from conftest import synthetic_split, write_idx_folder


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for name in ("a.gz", "a"):
        idx.write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(idx.read_idx(tmp_path / name, idx.IMAGES_MAGIC, "fix"), array)


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:-5], "needs"),
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number"),
    (lambda b: b[:6], "truncated"),
])
def test_idx_rejects_corrupt_files(tmp_path, corrupt, message):
    path = tmp_path / "x"
    idx.write_idx(path, np.zeros((3, 28, 28), np.uint8))
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError, match=message):
        idx.read_idx(path, idx.IMAGES_MAGIC, "fix")


def test_idx_rejects_bad_gzip_and_labels(tmp_path):
    folder = write_idx_folder(tmp_path, synthetic_split(20), synthetic_split(10))
    gz = folder / data.FILES["train"][0]
    gz.write_bytes(gz.read_bytes()[:100])
    with pytest.raises(DataError, match="not a valid gzip"):
        data.load_idx_folder(folder)
    write_idx_folder(folder, synthetic_split(20), synthetic_split(10))
    idx.write_idx(folder / data.FILES["test"][1], np.full(10, 12, np.uint8))
    with pytest.raises(DataError, match="outside 0..9"):
        data.load_idx_folder(folder)


def test_tfds_and_idx_sources_give_identical_arrays(tmp_path):
    """tfds's arrays (mocked) written as IDX files read back bit for bit through the IDX path."""
    with tfds.testing.mock_data(num_examples=12):
        from_tfds = data.load_tfds()
    folder = write_idx_folder(tmp_path, from_tfds["train"], from_tfds["test"])
    from_idx, source = data.load_raw(folder)
    assert source == f"idx:{folder}"
    for split in ("train", "test"):
        assert from_tfds[split].images.dtype == from_idx[split].images.dtype == np.uint8
        assert from_tfds[split].labels.dtype == from_idx[split].labels.dtype == np.int32
        np.testing.assert_array_equal(from_tfds[split].images, from_idx[split].images)
        np.testing.assert_array_equal(from_tfds[split].labels, from_idx[split].labels)
        assert from_idx[split].images.shape == (12, 28, 28, 1)


def test_split_is_seeded_disjoint_and_complete(synthetic_data_dir):
    a = data.load(synthetic_data_dir, val_fraction=0.25, split_seed=3)
    b = data.load(synthetic_data_dir, val_fraction=0.25, split_seed=3)
    c = data.load(synthetic_data_dir, val_fraction=0.25, split_seed=4)
    assert (len(a.train), len(a.val), len(a.test)) == (450, 150, 200)
    np.testing.assert_array_equal(a.val.images, b.val.images)
    assert not np.array_equal(a.val.images, c.val.images)
    raw = data.load_idx_folder(synthetic_data_dir)["train"]
    together = np.concatenate([a.train.images, a.val.images]).reshape(600, -1)
    assert len(np.unique(together, axis=0)) == len(np.unique(raw.images.reshape(600, -1), axis=0))


def test_statistics_are_computed_from_the_training_part(synthetic_data_dir):
    d = data.load(synthetic_data_dir, train_limit=100)
    assert len(d.train) == 100
    pixels = d.train.images.astype(np.float64) / 255
    assert d.mean == pytest.approx(pixels.mean()) and d.std == pytest.approx(pixels.std())


def test_real_data_statistics(real_data_dir):
    d = data.load(real_data_dir)
    assert (len(d.train), len(d.val), len(d.test)) == (54000, 6000, 10000)
    assert d.mean == pytest.approx(0.2860, abs=2e-3) and d.std == pytest.approx(0.3530, abs=2e-3)
    assert np.bincount(d.test.labels).tolist() == [1000] * 10


def test_data_dir_of_another_kind_is_refused(tmp_path):
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    with pytest.raises(DataError, match="neither the four Fashion-MNIST IDX files"):
        data.load_raw(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        data.load_raw(tmp_path / "nowhere")


def test_offline_download_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "network_reachable", lambda *a, **k: False)
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        data.download(tmp_path)


def test_a_training_limit_keeps_the_first_images_of_the_full_training_part(synthetic_data_dir):
    full = data.load(synthetic_data_dir, val_fraction=0.25, split_seed=3)
    limited = data.load(synthetic_data_dir, val_fraction=0.25, split_seed=3, train_limit=100)
    np.testing.assert_array_equal(limited.train.images, full.train.images[:100])
    np.testing.assert_array_equal(limited.train.labels, full.train.labels[:100])
    np.testing.assert_array_equal(limited.val.images, full.val.images)
    with pytest.raises(ConfigError, match="train_limit 451 exceeds the 450 training images"):
        data.load(synthetic_data_dir, val_fraction=0.25, train_limit=451)


def test_a_folder_is_parsed_once_until_a_file_changes(tmp_path):
    write_idx_folder(tmp_path, synthetic_split(30, seed=1), synthetic_split(10, seed=2))
    first = data.load_idx_folder(tmp_path)
    assert data.load_idx_folder(tmp_path)["train"].images is first["train"].images  # cached
    for split in first.values():  # shared by every caller: nobody may write into them
        with pytest.raises(ValueError, match="read-only"):
            split.images[0, 0, 0, 0] = 1
        with pytest.raises(ValueError, match="read-only"):
            split.labels[0] = 1
    replacement = synthetic_split(40, seed=3)  # another size: a changed file, whatever the clock
    write_idx_folder(tmp_path, replacement, synthetic_split(10, seed=2))
    again = data.load_idx_folder(tmp_path)["train"]
    np.testing.assert_array_equal(again.images, replacement.images)
    (tmp_path / data.FILES["test"][1]).write_bytes(b"not an IDX file")
    with pytest.raises(DataError, match=data.FILES["test"][1]):
        data.load_idx_folder(tmp_path)


@pytest.mark.parametrize("chunk", [1000, data.PIXEL_CHUNK])  # several chunks, and one
@pytest.mark.parametrize("low, high", [(0, 256), (7, 8), (250, 256)])
def test_pixel_stats_from_the_histogram_equal_the_float_computation(low, high, chunk, monkeypatch):
    monkeypatch.setattr(data, "PIXEL_CHUNK", chunk)
    images = np.random.default_rng(low).integers(low, high, (300, 28, 28, 1), dtype=np.uint8)
    scaled = images.astype(np.float64) / 255.0
    mean, std = data.pixel_stats(images)
    assert mean == pytest.approx(scaled.mean(), rel=1e-12, abs=1e-15)
    assert std == pytest.approx(scaled.std(), rel=1e-9, abs=1e-15)
