"""Shared fixtures: tiny synthetic datasets and the path of the real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fmnist_jax import data, idx

ROOT = Path(__file__).resolve().parent.parent
PRETRAINED = ROOT / "checkpoints" / "pretrained"  # the shipped releases: read only


def synthetic_split(n: int, seed: int = 0) -> data.Split:
    """`n` random images whose labels are learnable: each class brightens its own rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
    for c in range(10):
        images[labels == c, 2 * c:2 * c + 3] += 150
    return data.Split(images, labels)


def write_idx_folder(folder: Path, train: data.Split, test: data.Split) -> Path:
    """The four official file names in `folder`, holding `train` and `test`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images_name, labels_name) in data.FILES.items():
        s = train if split == "train" else test
        idx.write_idx(folder / images_name, s.images[..., 0])
        idx.write_idx(folder / labels_name, s.labels.astype(np.uint8))
    return folder


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A folder of IDX files with 600 learnable training images and 200 test images."""
    return write_idx_folder(tmp_path_factory.mktemp("idx"), synthetic_split(600),
                            synthetic_split(200, seed=1))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The Debian package's folder; CI installs it, so its absence is a failure, not a skip."""
    assert data.has_idx_files(data.DEBIAN_DIR), (
        f"{data.DEBIAN_DIR} is missing: apt-get install -y dataset-fashion-mnist")
    return data.DEBIAN_DIR

