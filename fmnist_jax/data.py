"""Fashion-MNIST from the first source found, a seeded train/validation split, and its statistics.

Sources, first found wins: an explicit folder (the four IDX files, or a tfds data dir); a prepared
tfds `fashion_mnist` in the tfds data dir; the Debian package's folder; tfds's download manager,
when the network answers. Every source yields the same uint8 arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_jax import idx
from fmnist_jax.errors import ConfigError, DataError

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
HOW_TO_GET = ("get the data offline with `apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu) "
              "or pass --data-dir=FOLDER holding the four official IDX .gz files")
NETWORK_TIMEOUT_S = 5.0
PIXEL_CHUNK = 1 << 20  # pixels counted at a time by pixel_stats (an 8 MB int64 temporary)


@dataclasses.dataclass(frozen=True)
class Split:
    """Images `[N, 28, 28, 1]` uint8 and labels `[N]` int32."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The train/validation/test splits with the training statistics used to normalise."""

    train: Split
    val: Split
    test: Split
    mean: float
    std: float
    source: str
    class_names: tuple[str, ...] = CLASS_NAMES


def _find_idx_file(folder: Path, name: str) -> Path:
    """`name` or its gunzipped twin inside `folder` (the .gz name when neither exists)."""
    plain = folder / name.removesuffix(".gz")
    return plain if plain.is_file() and not (folder / name).is_file() else folder / name


def has_idx_files(folder: Path) -> bool:
    return all(_find_idx_file(folder, name).is_file() for pair in FILES.values() for name in pair)


def load_idx_folder(folder: str | Path) -> dict[str, Split]:
    """Both splits from a folder of the four official IDX files (.gz or not). Parsed once per
    process while the files stay the same (a command that reads two splits, or a test session,
    decompresses them once); the arrays are read-only, since every caller shares them."""
    paths = tuple(_find_idx_file(Path(folder), name) for pair in FILES.values() for name in pair)
    stamps = tuple((p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
                   for p in paths)
    return dict(_parsed_idx_files(paths, stamps))


@functools.lru_cache(maxsize=2)
def _parsed_idx_files(paths: tuple[Path, ...], _stamps: tuple) -> dict[str, Split]:
    """`load_idx_folder`'s splits from the images and labels files of each split in turn; a
    changed file (another inode, size or modification time) changes `_stamps`, so is reread."""
    fix = (f"replace the file (e.g. `apt-get install --reinstall dataset-fashion-mnist`) "
           f"or point --data-dir at a folder with the four official files")
    splits = {}
    for split, images, labels in zip(FILES, paths[::2], paths[1::2]):
        x, y = idx.read_split(images, labels, fix)
        x.setflags(write=False)
        y.setflags(write=False)
        splits[split] = Split(x, y)
    return splits


def _tfds_data_dir(data_dir: str | Path | None) -> str:
    """The tfds data dir: the argument, else $TFDS_DATA_DIR, else tfds's default."""
    return str(data_dir or os.environ.get("TFDS_DATA_DIR")
               or Path("~/tensorflow_datasets").expanduser())


def tfds_prepared(data_dir: str | Path | None) -> bool:
    """Whether a prepared tfds `fashion_mnist` lies in `data_dir` (or the default tfds data dir)."""
    root = _tfds_data_dir(data_dir)
    if not (Path(root) / "fashion_mnist").is_dir():
        return False
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    return tfds.builder("fashion_mnist", data_dir=root).is_prepared()


def tfds_datasets(data_dir: Path) -> list[str]:
    """The prepared tfds datasets in `data_dir`: `NAME/[CONFIG/]VERSION/dataset_info.json`."""
    infos = [*data_dir.glob("*/*/dataset_info.json"), *data_dir.glob("*/*/*/dataset_info.json")]
    return sorted({p.relative_to(data_dir).parts[0] for p in infos})


def load_tfds(data_dir: str | Path | None = None) -> dict[str, Split]:
    """Both splits through `tfds.data_source` from a prepared tfds data dir (no TensorFlow needed)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    splits = {}
    for split in FILES:
        source = tfds.data_source("fashion_mnist", split=split, data_dir=_tfds_data_dir(data_dir),
                                  download=False)
        examples = [source[i] for i in range(len(source))]
        images = np.stack([np.asarray(e["image"], np.uint8).reshape(28, 28, 1) for e in examples])
        labels = np.array([e["label"] for e in examples], np.int32)
        splits[split] = Split(images, labels)
    return splits


def network_reachable(url: str = DOWNLOAD_URL, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """A quick TCP probe of the download host, so an offline machine fails in seconds."""
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout):
            return True
    except OSError:
        return False


def download(data_dir: str | Path | None = None) -> dict[str, Split]:
    """Fetches the four official files with tfds's download manager, then parses them."""
    if not network_reachable():
        raise DataError(f"no local copy of Fashion-MNIST found and {DOWNLOAD_URL} is unreachable; "
                        + HOW_TO_GET)
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    manager = tfds.download.DownloadManager(
        download_dir=Path(_tfds_data_dir(data_dir)) / "downloads" / "fashion_mnist_idx")
    folder = Path(manager.download_dir) / "idx"
    folder.mkdir(parents=True, exist_ok=True)
    urls = {name: urllib.parse.urljoin(DOWNLOAD_URL, name) for pair in FILES.values() for name in pair}
    for name, path in manager.download(urls).items():
        target = folder / name
        if not target.exists():
            target.symlink_to(Path(path).resolve())
    return load_idx_folder(folder)


def load_raw(data_dir: str | Path | None = None) -> tuple[dict[str, Split], str]:
    """The train and test splits from the first source found, and a name for that source."""
    if data_dir:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise DataError(f"--data-dir {folder} does not exist; " + HOW_TO_GET)
        if has_idx_files(folder):
            return load_idx_folder(folder), f"idx:{folder}"
        names = [name for pair in FILES.values() for name in pair]
        missing = [name for name in names if not _find_idx_file(folder, name).is_file()]
        if len(missing) < len(names):
            raise DataError(f"--data-dir {folder} lacks {', '.join(missing)} of the four "
                            f"Fashion-MNIST IDX files; " + HOW_TO_GET)
        if tfds_prepared(folder):
            return load_tfds(folder), f"tfds:{folder}"
        others = tfds_datasets(folder)
        if others:
            raise DataError(f"--data-dir {folder} is a tfds data dir of {', '.join(others)}, "
                            f"with no prepared fashion_mnist; " + HOW_TO_GET)
        raise DataError(
            f"--data-dir {folder} holds neither the four Fashion-MNIST IDX files "
            f"({', '.join(n for p in FILES.values() for n in p)}) nor a prepared tfds fashion_mnist; "
            + HOW_TO_GET)
    if tfds_prepared(None):
        return load_tfds(None), f"tfds:{_tfds_data_dir(None)}"
    if DEBIAN_DIR.is_dir():
        return load_idx_folder(DEBIAN_DIR), f"idx:{DEBIAN_DIR}"
    return download(None), f"download:{DOWNLOAD_URL}"


def split_train_val(train: Split, val_fraction: float, seed: int, train_limit: int = 0,
                    ) -> tuple[Split, Split]:
    """A seeded random split of the training images into train and validation parts; with
    `train_limit` > 0, the train part's first that many images only (copied alone)."""
    order = np.random.default_rng(seed).permutation(len(train))
    num_val = int(round(len(train) * val_fraction))
    kept = np.sort(order[num_val:])
    if train_limit > len(kept):
        raise ConfigError(f"train_limit {train_limit} exceeds the {len(kept)} training images "
                          f"left after the validation split; lower --train-limit, or 0 for all")
    return train.take(kept[:train_limit or None]), train.take(np.sort(order[:num_val]))


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the uint8 pixels scaled to [0, 1], from their histogram
    (exact integer sums: 0.1 s for the 54,000 training images, where a float64 copy took 1.6 s).
    Counted a chunk at a time: `bincount` widens its input to int64, which for the whole split
    at once is a 340 MB temporary (freshly touched memory costs up to seconds on a VM)."""
    pixels = np.asarray(images, np.uint8).ravel()
    counts = sum((np.bincount(pixels[i:i + PIXEL_CHUNK], minlength=256)
                  for i in range(0, len(pixels), PIXEL_CHUNK)), np.zeros(256, np.int64))
    values = np.arange(256, dtype=np.int64)
    n, total, squares = int(counts.sum()), int(counts @ values), int(counts @ values**2)
    spread = n * squares - total * total  # n^2 times the variance, exactly (Python integers)
    return total / n / 255.0, float(np.sqrt(spread)) / n / 255.0


def load_for_config(config: Any) -> Dataset:
    """The dataset exactly as a run of `config` (an ml_collections config) draws it: same
    source, validation fraction, split seed and training limit."""
    return load(config.data.dir or None, config.data.val_fraction, config.data.split_seed,
                config.data.train_limit)


def load(data_dir: str | Path | None = None, val_fraction: float = 0.1, split_seed: int = 0,
         train_limit: int = 0) -> Dataset:
    """The dataset, split and described; `train_limit` > 0 keeps only that many training images."""
    raw, source = load_raw(data_dir)
    train, val = split_train_val(raw["train"], val_fraction, split_seed, train_limit)
    mean, std = pixel_stats(train.images)
    return Dataset(train=train, val=val, test=raw["test"], mean=mean, std=std, source=source)
