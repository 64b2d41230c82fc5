"""compare.py's paired differences, from prediction files written as evaluate.py writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fmnist_jax import comparison, evaluation
from fmnist_jax.errors import UserError

N = 10_000
NAMES = [f"class{c}" for c in range(10)]


def _probabilities(predicted: np.ndarray) -> np.ndarray:
    return np.eye(10)[predicted] * 0.9 + 0.01


def _evaluation(folder: Path, labels: np.ndarray, predicted: np.ndarray,
                members: list[np.ndarray] = ()) -> tuple[Path, dict]:
    """An evaluation folder: predictions.csv, and predictions-seed<k>.csv of each member."""
    folder.mkdir()
    evaluation.write_predictions(folder / "predictions.csv", _probabilities(predicted), labels,
                                 NAMES)
    for seed, member in enumerate(members):
        evaluation.write_predictions(folder / f"predictions-seed{seed}.csv",
                                     _probabilities(member), labels, NAMES)
    summary = {"members": [{"seed": s} for s in range(len(members))]} if members else {}
    return folder, summary


def _wrong_on(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Predictions of `labels`, wrong on `count` random images."""
    predicted = labels.copy()
    wrong = rng.choice(len(labels), count, replace=False)
    predicted[wrong] = (labels[wrong] + 1) % 10
    return predicted


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[list[Path], list[dict]]:
    """Three models on the same 10,000 images: `a` (90%), `b` = `a` right on 100 more, `c` = `a`;
    `a` and `b` with three seeds each, `b`'s members 2 points better."""
    root, rng = tmp_path_factory.mktemp("compare"), np.random.default_rng(0)
    labels = rng.integers(0, 10, N)
    a = _wrong_on(labels, 1000, rng)
    b = a.copy()
    b[np.flatnonzero(a != labels)[:100]] = labels[np.flatnonzero(a != labels)[:100]]
    members = {name: [_wrong_on(labels, wrong + d, rng) for d in (0, 5, -5)]
               for name, wrong in (("a", 1000), ("b", 800))}
    made = [_evaluation(root / "a", labels, a, members["a"]),
            _evaluation(root / "b", labels, b, members["b"]), _evaluation(root / "c", labels, a)]
    return [f for f, _ in made], [s for _, s in made]


def test_each_model_against_the_first(folders):
    first, b, c = comparison.differences(*folders, comparison.references("first", folders[0]))
    assert first is None
    assert b["difference"] == pytest.approx(0.01) and b["supported"]
    assert b["only_model_right"] == 100 and b["only_baseline_right"] == 0
    assert b["mcnemar_p_holm"] == pytest.approx(min(1.0, 2 * b["mcnemar_p"]))  # family of two
    assert b["seeds"]["difference"] == pytest.approx(0.02) and b["seeds"]["supported"]
    assert c["difference"] == 0 and c["mcnemar_p"] == 1 and not c["supported"]
    assert "seeds" not in c  # c has one seed


def test_previous_compares_each_row_with_the_row_above(folders):
    assert comparison.references("previous", folders[0]) == [0, 0, 1]
    _, b, c = comparison.differences(*folders, [0, 0, 1])
    assert c["against"] == 1 and c["difference"] == pytest.approx(-0.01) and c["supported"]
    assert comparison.references(str(folders[0][2]), folders[0]) == [2, 2, 2]


def test_a_baseline_not_compared_or_other_images_are_refused(folders, tmp_path):
    with pytest.raises(UserError, match="--baseline=elsewhere is none of the DIRs compared"):
        comparison.references("elsewhere", folders[0])
    labels = np.zeros(N, np.int64)
    other = _evaluation(tmp_path / "other", labels, labels)
    with pytest.raises(UserError, match="not of the same images"):
        comparison.differences([folders[0][0], other[0]], [{}, {}], [0, 0])
