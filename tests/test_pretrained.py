"""The shipped pretrained checkpoints: each loads, classifies a known test image, and reproduces
the test accuracy its release records, on the real test split (no training here)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import PRETRAINED
from fmnist_jax import data, evaluation, portable, release, restore

SHIPPED = sorted(p for p in PRETRAINED.iterdir() if p.is_dir()) if PRETRAINED.is_dir() else []
SIZE_LIMIT = 40 * 2**20  # all releases together (model.onnx and ood.jaxexport each hold the weights again)


def test_the_releases_are_small_and_complete():
    assert SHIPPED, f"no pretrained checkpoints in {PRETRAINED}"
    assert sum(release.size_bytes(p) for p in SHIPPED) < SIZE_LIMIT
    for path in SHIPPED:
        record = json.loads((path / "release.json").read_text())
        assert record["model"] == path.name
        for field in ("train_command", "export_command", "commit", "seeds", "device",
                      "train_seconds", "test_accuracy"):
            assert record[field], f"{path}: release.json lacks {field}"


@pytest.mark.e2e
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_a_release_predicts_the_test_split_as_recorded(path, real_data_dir):
    test = data.load_idx_folder(real_data_dir)["test"]
    restored = restore.load_workdir(path)
    probabilities = restored.probabilities(test.images[:1])  # the first test image: an ankle boot
    assert test.labels[0] == restored.class_names.index("Ankle boot")
    assert probabilities[0, 0].argmax() == test.labels[0]
    result = evaluation.evaluate(restored)
    accuracy = float((result.probabilities.argmax(-1) == result.labels).mean())
    record = json.loads((path / "release.json").read_text())
    np.testing.assert_allclose(accuracy, np.mean(record["test_accuracy"]), atol=1e-9)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_a_release_carries_its_portable_model(path, real_data_dir):
    images = data.load_idx_folder(real_data_dir)["test"].images[:64]
    model = portable.load(path)
    restored = restore.load_workdir(path)
    assert model.class_names == restored.class_names and model.metadata["model"] == path.name
    np.testing.assert_allclose(np.asarray(model(images)), restored.probabilities(images).mean(0),
                               atol=2e-6)
