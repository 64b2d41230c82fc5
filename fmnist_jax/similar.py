"""Similar items: the training images nearest to a query in the model's penultimate-layer
embedding (cosine similarity), the embeddings of the training split cached beside the evaluation,
precision@k (the share of same-class neighbours) and a 2-D map of an embedding.

The embedding is the input of the model's last `nn.Dense` (the classifier), read through
`nn.intercept_methods`, so every model works unchanged. A workdir with several members is
embedded through the first of those a reader chose (`restore.select`); the cache is kept per member.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from fmnist_jax import data, evaluation, files, locking, plots, restore
from fmnist_jax import train as train_lib
from fmnist_jax.errors import UserError

CACHE = "eval-embeddings"
CHUNK = 1024  # queries per similarity block (a block of 1024 x 54,000 floats is 221 MB)


def embedding_and_logits(model: nn.Module, variables: Any, x: jax.Array, *,
                         train: bool = False) -> tuple[jax.Array, jax.Array]:
    """The classifier's input `[B, D]` (the embedding) and the logits `[B, C]` of normalised `x`."""
    seen = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            seen["input"] = args[0]  # the last Dense called is the classifier
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        logits = model.apply(variables, x, train=train)
    return seen["input"].reshape(x.shape[0], -1), logits


@dataclasses.dataclass(frozen=True)
class PenultimateLayer:
    """Quacks like the model for `train.make_predict`: `apply` returns the classifier's input."""

    model: nn.Module

    def apply(self, variables: Any, x: jax.Array, *, train: bool) -> jax.Array:
        return embedding_and_logits(self.model, variables, x, train=train)[0]


def embed(restored: restore.Restored, images: np.ndarray) -> np.ndarray:
    """The embeddings `[N, D]` (float32) of uint8 images `[N, 28, 28, 1]` by the first member of
    `restored` (choose another with `restore.select` first)."""
    first = restore.select(restored, member=0)
    stats = first.meta["data"]
    predict = train_lib.make_predict(
        PenultimateLayer(first.model), stats["mean"], stats["std"],
        first.config.eval_batch_size, train_lib.members_one_at_a_time(first.model))
    return np.asarray(predict(first.params, first.batch_stats, images)[0])


def training_split(restored: restore.Restored) -> data.Split:
    """The training split exactly as the run drew it."""
    return data.load_for_config(restored.config).train


def cached_training_embeddings(restored: restore.Restored, cache_dir: Path | None = None,
                               ) -> tuple[np.ndarray, data.Split]:
    """The training split's embeddings (`embed`: by the first member of `restored`), computed
    once per checkpoint step, weights choice and member and kept in `cache_dir` (default
    `WORKDIR/eval-embeddings/`, `train-member<K>.npy`), and the split."""
    cache_dir = Path(cache_dir or restored.workdir / CACHE)
    member = restored.members[0]
    key = {"step": restored.step, "checkpoint": restored.checkpoint, "member": member}
    train = training_split(restored)
    array = cache_dir / f"train-member{member}.npy"
    record = array.with_suffix(".json")
    if record.is_file() and array.is_file():
        try:
            if json.loads(record.read_text()) == key:
                embeddings = np.load(array)
                if embeddings.shape[0] == len(train.labels):
                    return embeddings, train
        except (ValueError, OSError, EOFError) as e:  # a damaged cache (truncated, garbled)
            print(f"the cached embeddings in {cache_dir} cannot be read ({e}); computing them "
                  f"again", file=sys.stderr)
    with locking.exclusive(cache_dir):  # one process at a time writes the cache
        embeddings = embed(restored, train.images)
        cache_dir.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, embeddings)
        files.write_atomically(array, buffer.getvalue())  # never a half-written cache
        record.write_text(json.dumps(key) + "\n")
    return embeddings, train


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest(queries: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` rows of `index` nearest to each query by cosine: indices and cosine distances
    (1 - similarity) `[Q, k]`, nearest first; blocks of `CHUNK` queries."""
    index = unit(index)
    found, distances = [], []
    for start in range(0, len(queries), CHUNK):
        similarity = unit(queries[start:start + CHUNK]) @ index.T
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarity, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        found.append(top)
        distances.append(1.0 - np.take_along_axis(similarity, top, 1))
    return np.concatenate(found), np.concatenate(distances)


def precision_at_k(neighbour_labels: np.ndarray, labels: np.ndarray) -> float:
    """The share of neighbours (`[Q, k]` labels) of each query's class, over all queries."""
    return float((neighbour_labels == labels[:, None]).mean())


def project_2d(embeddings: np.ndarray) -> np.ndarray:
    """The first two principal components `[N, 2]` (SVD of the centred embeddings)."""
    centred = embeddings - embeddings.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def embedding_map(restored: restore.Restored, images: np.ndarray, labels: np.ndarray,
                  title: str, out: Path) -> Path:
    """`out/embedding_map.png`: the split's embeddings in 2-D (PCA), coloured by true class."""
    points = project_2d(embed(restored, images))
    out.mkdir(parents=True, exist_ok=True)
    return plots.save(plots.embedding_figure(points, labels, restored.class_names, title),
                      out / "embedding_map.png")


def check_k(restored: restore.Restored, k: int) -> None:
    """Refuses asking for more neighbours than the run's training split has images."""
    size = restored.meta["data"]["train_size"]
    if k > size:
        raise UserError(f"-k={k} asks for more neighbours than the {size} training images of "
                        f"{restored.workdir}; give -k from 1 to {size}")


def search(restored: restore.Restored, queries: np.ndarray, names: Sequence[str], k: int,
           cache_dir: Path | None = None) -> tuple[list[dict[str, Any]], data.Split, np.ndarray]:
    """Per query: its k nearest training images (index, class, cosine distance); the training
    split, and the neighbours' indices `[Q, k]`."""
    index, train = cached_training_embeddings(restored, cache_dir)
    found, distances = nearest(embed(restored, queries), index, k)
    classes = restored.class_names
    results = [{"query": name, "neighbours": [
        {"train_index": int(i), "class": classes[train.labels[i]], "cosine_distance": float(d)}
        for i, d in zip(row, dist)]} for name, row, dist in zip(names, found, distances)]
    return results, train, found


def precision_at_k_on_test(restored: restore.Restored, k: int,
                           cache_dir: Path | None = None) -> float:
    """precision@k of the test split's images among the training images."""
    index, train = cached_training_embeddings(restored, cache_dir)
    test = evaluation.load_split(restored.config, "test")
    found, _ = nearest(embed(restored, test.images), index, k)
    return precision_at_k(train.labels[found], test.labels)
