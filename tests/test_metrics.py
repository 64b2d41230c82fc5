"""Classification metrics against hand-computed cases and an independent loop implementation."""

from __future__ import annotations

import math

import chex
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmnist_jax import metrics

# labels [0, 0, 1, 1, 2, 2], predictions [0, 1, 1, 1, 0, 2]
LABELS = np.array([0, 0, 1, 1, 2, 2])
PREDICTIONS = np.array([0, 1, 1, 1, 0, 2])
CONFUSION = np.array([[1, 1, 0],
                      [0, 2, 0],
                      [1, 0, 1]])


def test_confusion_matrix_rows_are_true_classes():
    np.testing.assert_array_equal(metrics.confusion_matrix(LABELS, PREDICTIONS, 3), CONFUSION)


def test_confusion_matrix_keeps_classes_never_seen():
    confusion = metrics.confusion_matrix(np.array([1]), np.array([1]), 4)
    chex.assert_shape(confusion, (4, 4))
    assert confusion.sum() == 1 and confusion[1, 1] == 1


def test_per_class_scores_by_hand():
    scores = metrics.per_class_scores(CONFUSION)
    # TP [1, 2, 1]; predicted per class [2, 3, 1]; support [2, 2, 2]
    np.testing.assert_allclose(scores["precision"], [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(scores["recall"], [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(scores["f1"], [1 / 2, 4 / 5, 2 / 3])
    np.testing.assert_array_equal(scores["support"], [2, 2, 2])
    np.testing.assert_allclose(scores["accuracy"], scores["recall"])


def test_absent_class_scores_zero_without_division_warnings():
    # class 2 is neither a label nor a prediction; class 3 is predicted but never a label
    labels = np.array([0, 1, 1, 0])
    predictions = np.array([0, 1, 0, 3])
    with np.errstate(all="raise"):
        confusion = metrics.confusion_matrix(labels, predictions, 4)
        scores = metrics.per_class_scores(confusion)
        averages = metrics.averaged_scores(scores)
    # class 0: TP 1, predicted 2, support 2; class 1: TP 1, predicted 1, support 2
    np.testing.assert_allclose(scores["precision"], [1 / 2, 1, 0, 0])
    np.testing.assert_allclose(scores["recall"], [1 / 2, 1 / 2, 0, 0])
    np.testing.assert_allclose(scores["f1"], [1 / 2, 2 / 3, 0, 0])
    assert averages["macro"]["f1"] == pytest.approx((1 / 2 + 2 / 3) / 4)
    assert averages["weighted"]["f1"] == pytest.approx((2 * 1 / 2 + 2 * 2 / 3) / 4)
    assert averages["weighted"]["recall"] == pytest.approx(2 / 4)  # = accuracy


def test_empty_input_gives_zeros_not_nans():
    with np.errstate(all="raise"):
        scores = metrics.per_class_scores(np.zeros((3, 3), np.int64))
        averages = metrics.averaged_scores(scores)
    assert averages["macro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert averages["weighted"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


PROBS = np.array([[0.9, 0.1],     # label 0: right, confidence 0.9
                  [0.2, 0.8],     # label 0: wrong, confidence 0.8
                  [0.6, 0.4],     # label 0: right, confidence 0.6
                  [0.45, 0.55]])  # label 0: wrong, confidence 0.55
PROBS_LABELS = np.array([0, 0, 0, 0])


def test_expected_calibration_error_by_hand():
    # ten bins (i/10, (i+1)/10]: 0.9 -> (0.8, 0.9], 0.8 -> (0.7, 0.8], 0.6 and 0.55 -> (0.5, 0.6]
    # where one right and one wrong answer average out: |1/2 - 1.15/2| weighs 2/4
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - (0.6 + 0.55))) / 4
    ece = metrics.expected_calibration_error(PROBS, PROBS_LABELS, num_bins=10)
    assert ece == pytest.approx(expected)


def test_expected_calibration_error_of_certain_right_answers_is_zero():
    probs = np.eye(3)[[0, 1, 2, 2]]
    assert metrics.expected_calibration_error(probs, np.array([0, 1, 2, 2])) == 0.0


def test_mean_log_loss_by_hand_and_finite_for_zero_probability():
    expected = -(math.log(0.9) + math.log(0.2) + math.log(0.6) + math.log(0.45)) / 4
    assert metrics.mean_log_loss(PROBS, PROBS_LABELS) == pytest.approx(expected)
    assert np.isfinite(metrics.mean_log_loss(np.array([[1.0, 0.0]]), np.array([1])))


def test_top_k_accuracy_by_hand():
    probs = np.array([[0.5, 0.3, 0.2],
                      [0.5, 0.3, 0.2],
                      [0.5, 0.3, 0.2]])
    labels = np.array([0, 0, 1])
    assert metrics.top_k_accuracy(probs, labels, 1) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy(probs, labels, 2) == 1.0
    assert metrics.top_k_accuracy(probs, np.array([2, 2, 1]), 2) == pytest.approx(1 / 3)


def test_most_confused_pairs_sum_both_directions():
    confusion = np.array([[50, 3, 9, 0],
                          [4, 40, 0, 0],
                          [1, 0, 30, 0],
                          [0, 7, 8, 20]])
    pairs = metrics.most_confused_pairs(confusion, k=5, class_names="abcd")
    # (0,2): 9+1 = 10; (2,3): 0+8 = 8; (0,1): 3+4 = 7 and (1,3): 0+7 = 7 (tie: lower index
    # first); the two pairs never confused are left out
    assert [(p["a"], p["b"], p["count"]) for p in pairs] == [(0, 2, 10), (2, 3, 8), (0, 1, 7),
                                                             (1, 3, 7)]
    assert (pairs[1]["a_as_b"], pairs[1]["b_as_a"]) == (0, 8)
    assert pairs[1]["classes"] == ["c", "d"]
    assert len(metrics.most_confused_pairs(confusion, k=2)) == 2


def _loop_scores(labels, predictions, num_classes):
    """A slow, independent per-class precision/recall/F1 with zero for undefined ratios."""
    out = []
    for c in range(num_classes):
        tp = sum(1 for y, p in zip(labels, predictions) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, predictions) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, predictions) if y == c and p != c)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append((precision, recall, f1))
    return np.array(out)


pairs_of_labels = st.integers(1, 60).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 4), min_size=n, max_size=n),
    st.lists(st.integers(0, 4), min_size=n, max_size=n)))


@settings(max_examples=60, deadline=None)
@given(pairs_of_labels)
def test_scores_match_a_loop_implementation(data):
    labels, predictions = map(np.array, data)
    scores = metrics.per_class_scores(metrics.confusion_matrix(labels, predictions, 5))
    expected = _loop_scores(labels, predictions, 5)
    chex.assert_trees_all_close(
        np.stack([scores["precision"], scores["recall"], scores["f1"]], 1), expected, atol=1e-12)
    averages = metrics.averaged_scores(scores)
    assert averages["weighted"]["recall"] == pytest.approx(np.mean(labels == predictions))


def test_classification_summary_is_consistent():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, 200)
    summary = metrics.classification_summary(probs, labels, ["a", "b", "c", "d"])
    confusion = np.array(summary["confusion_matrix"])
    assert confusion.sum() == 200 == summary["num_examples"]
    assert summary["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert summary["top2_accuracy"] >= summary["accuracy"]
    assert [summary["per_class"][n]["support"] for n in "abcd"] == np.bincount(labels).tolist()
    assert summary["most_confused"][0]["classes"] == [
        "abcd"[summary["most_confused"][0]["a"]], "abcd"[summary["most_confused"][0]["b"]]]
