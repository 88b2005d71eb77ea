"""Metrics against scikit-learn and a float64 CCC written out plainly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from abaw_jax import metrics


def reference_ccc(x, y):
    """Lin's CCC with population variances, term by term in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    mean_x = sum(x) / n
    mean_y = sum(y) / n
    var_x = sum((xi - mean_x) ** 2 for xi in x) / n
    var_y = sum((yi - mean_y) ** 2 for yi in y) / n
    cov = sum((xi - mean_x) * (yi - mean_y) for xi, yi in zip(x, y)) / n
    return 2 * cov / (var_x + var_y + (mean_x - mean_y) ** 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ccc_matches_reference(seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, 300)
    x = 0.6 * y + 0.3 * rng.normal(size=300) + 0.1
    assert metrics.ccc(x, y) == pytest.approx(reference_ccc(x, y), abs=1e-12)


def test_ccc_float32_input_is_computed_in_float64():
    # A large common offset makes float32 accumulation lose the small variations.
    rng = np.random.default_rng(3)
    y = (1000.0 + rng.normal(size=5000) * 1e-2).astype(np.float32)
    x = (y + rng.normal(size=5000).astype(np.float32) * 1e-2).astype(np.float32)
    assert metrics.ccc(x, y) == pytest.approx(reference_ccc(x, y), abs=1e-9)


def test_ccc_known_values_and_degenerate_input():
    y = np.array([0.1, -0.4, 0.9, 0.3])
    assert metrics.ccc(y, y) == pytest.approx(1.0)
    assert metrics.ccc(-y, y) == pytest.approx(reference_ccc(-y, y))
    assert metrics.ccc(np.full(10, 0.1), np.full(10, 0.1)) == 0.0
    assert metrics.ccc(np.full(4, 0.3), y) == 0.0
    assert metrics.ccc(y, np.full(4, -0.2)) == 0.0
    assert metrics.ccc([0.5], [0.2]) == 0.0
    assert metrics.ccc([], []) == 0.0
    with pytest.raises(ValueError, match="ccc"):
        metrics.ccc([1.0, 2.0], [1.0])


def random_va(seed, n=400):
    rng = np.random.default_rng(seed)
    true = rng.uniform(-1, 1, (n, 2))
    pred = np.clip(0.5 * true + 0.4 * rng.normal(size=(n, 2)), -1, 1)
    valid = rng.random((n, 2)) > 0.2
    # Invalid entries hold garbage that must not leak into the score.
    pred[~valid] = 50.0
    return pred, true, valid


def test_va_score_each_column_over_its_own_valid_frames():
    pred, true, valid = random_va(0)
    out = metrics.va_score(pred, true, valid)
    v = reference_ccc(pred[valid[:, 0], 0], true[valid[:, 0], 0])
    a = reference_ccc(pred[valid[:, 1], 1], true[valid[:, 1], 1])
    assert out["valence"] == pytest.approx(v, abs=1e-12)
    assert out["arousal"] == pytest.approx(a, abs=1e-12)
    assert out["mean"] == pytest.approx((v + a) / 2, abs=1e-12)


def test_va_score_bad_input_names_the_argument():
    pred, true, valid = random_va(1, n=20)
    with pytest.raises(ValueError, match="valid"):
        metrics.va_score(pred, true, valid[:10])
    with pytest.raises(ValueError, match="pred"):
        metrics.va_score(pred[:, :1], true[:, :1], valid[:, :1])
    pred[3, 1] = np.nan
    valid[3, 1] = True
    with pytest.raises(ValueError, match=r"pred: 1 non-finite.*\(3, 1\)"):
        metrics.va_score(pred, true, valid)
    # NaN on an invalid frame is ignored.
    valid[3, 1] = False
    assert np.isfinite(metrics.va_score(pred, true, valid)["mean"])


def random_expr(seed, n=500, absent_class=None):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 8, n)
    pred = np.where(rng.random(n) < 0.4, true, rng.integers(0, 8, n))
    if absent_class is not None:
        true[true == absent_class] = (absent_class + 1) % 8
        pred[pred == absent_class] = (absent_class + 2) % 8
    valid = rng.random(n) > 0.25
    true[~valid] = 0
    return pred, true, valid


@pytest.mark.parametrize("seed,absent", [(0, None), (1, 5), (2, 7)])
def test_expr_f1_matches_sklearn(seed, absent):
    pred, true, valid = random_expr(seed, absent_class=absent)
    out = metrics.expr_f1(pred, true, valid)
    kw = dict(labels=list(range(8)), zero_division=0)
    assert out["f1"] == pytest.approx(
        f1_score(true[valid], pred[valid], average="macro", **kw), abs=1e-12)
    np.testing.assert_allclose(
        out["per_class"], f1_score(true[valid], pred[valid], average=None, **kw), atol=1e-12)
    assert out["accuracy"] == pytest.approx(accuracy_score(true[valid], pred[valid]), abs=1e-12)
    if absent is not None:
        assert out["per_class"][absent] == 0.0


def test_expr_f1_no_valid_frames_is_zero():
    out = metrics.expr_f1(np.zeros(5, int), np.zeros(5, int), np.zeros(5, bool))
    assert out == {"f1": 0.0, "per_class": [0.0] * 8, "accuracy": 0.0}


def test_expr_f1_bad_labels_name_the_argument():
    pred, true, valid = random_expr(0, n=30)
    valid[4] = True
    bad = true.copy()
    bad[4] = 8
    with pytest.raises(ValueError, match="true: class 8"):
        metrics.expr_f1(pred, bad, valid)
    bad = pred.copy()
    bad[4] = -1
    with pytest.raises(ValueError, match="pred_labels: class -1"):
        metrics.expr_f1(bad, true, valid)
    with pytest.raises(ValueError, match="pred_labels: expected integer"):
        metrics.expr_f1(pred.astype(float), true, valid)
    with pytest.raises(ValueError, match="pred_labels"):
        metrics.expr_f1(pred[:, None], true, valid)


def random_au(seed, n=300):
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.05, 0.6, 12)
    true = (rng.random((n, 12)) < rates).astype(np.int32)
    probs = np.clip(0.35 * true + rng.uniform(0, 0.75, (n, 12)), 0, 1)
    valid = rng.random((n, 12)) > 0.15
    valid[:, 3] = rng.random(n) > 0.9          # an AU with few valid frames
    true[~valid] = 0
    return probs, true, valid


@pytest.mark.parametrize("seed", [0, 1])
def test_au_f1_matches_sklearn_per_au(seed):
    probs, true, valid = random_au(seed)
    out = metrics.au_f1(probs, true, valid)
    expected = [f1_score(true[valid[:, j], j], probs[valid[:, j], j] >= 0.5, zero_division=0)
                for j in range(12)]
    np.testing.assert_allclose(out["per_au"], expected, atol=1e-12)
    assert out["f1"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_au_f1_threshold_is_inclusive_and_configurable():
    true = np.array([[1], [0], [1]])
    valid = np.ones((3, 1), bool)
    probs = np.array([[0.5], [0.4], [0.7]])
    assert metrics.au_f1(probs, true, valid)["f1"] == pytest.approx(1.0)
    assert metrics.au_f1(probs, true, valid, threshold=0.6)["f1"] == pytest.approx(
        f1_score([1, 0, 1], [0, 0, 1]))


def test_au_f1_bad_labels_name_the_argument():
    probs, true, valid = random_au(0, n=10)
    true[2, 5], valid[2, 5] = -1, True
    with pytest.raises(ValueError, match=r"true: values must be 0 or 1.*\(2, 5\)"):
        metrics.au_f1(probs, true, valid)
    with pytest.raises(ValueError, match="shapes differ: pred_probs"):
        metrics.au_f1(probs[:, :11], true, valid)


def test_task_score_applies_argmax_and_sigmoid():
    rng = np.random.default_rng(7)
    pred, true, valid = random_va(7, n=50)
    score, details = metrics.task_score("VA", pred, true, valid)
    assert score == details["mean"] == metrics.va_score(pred, true, valid)["mean"]

    _, labels, valid = random_expr(7, n=60)
    logits = rng.normal(size=(60, 8))
    score, details = metrics.task_score("EXPR", logits, labels, valid)
    expected = f1_score(labels[valid], logits.argmax(-1)[valid], labels=list(range(8)),
                        average="macro", zero_division=0)
    assert score == pytest.approx(expected, abs=1e-12)
    assert details["f1"] == score

    _, labels, valid = random_au(7, n=60)
    logits = rng.normal(size=(60, 12)) * 3
    logits[0, 0] = 0.0                          # sigmoid(0) = 0.5 counts as a positive
    score, details = metrics.task_score("AU", logits, labels, valid)
    probs = 1.0 / (1.0 + np.exp(-logits))
    assert score == pytest.approx(metrics.au_f1(probs, labels, valid)["f1"], abs=1e-12)
    expected = np.mean([f1_score(labels[valid[:, j], j], logits[valid[:, j], j] >= 0,
                                 zero_division=0) for j in range(12)])
    assert score == pytest.approx(expected, abs=1e-12)


def test_task_score_bad_input():
    with pytest.raises(ValueError, match="task must be one of"):
        metrics.task_score("AUX", np.zeros((2, 12)), np.zeros((2, 12)), np.ones((2, 12), bool))
    logits = np.zeros((4, 8))
    logits[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"outputs: 1 non-finite.*\(1, 2\)"):
        metrics.task_score("EXPR", logits, np.zeros(4, int), np.ones(4, bool))
    with pytest.raises(ValueError, match="valid"):
        metrics.task_score("EXPR", np.zeros((4, 8)), np.zeros(4, int), np.ones(3, bool))
