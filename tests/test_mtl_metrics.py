"""P_MTL and its parts against a float64 numpy CCC and scikit-learn's F1 scores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import f1_score

from abaw_jax import metrics


def _reference_ccc(x, y) -> float:
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def _reference(pred, true, valid) -> dict[str, float]:
    """P_MTL as the challenge defines it, each part over its own task's valid labels."""
    v = _reference_ccc(pred["VA"][valid["VA"][:, 0], 0], true["VA"][valid["VA"][:, 0], 0])
    a = _reference_ccc(pred["VA"][valid["VA"][:, 1], 1], true["VA"][valid["VA"][:, 1], 1])
    e = f1_score(true["EXPR"][valid["EXPR"]], pred["EXPR"][valid["EXPR"]], labels=list(range(8)), average="macro",
                 zero_division=0)
    au_pred = (pred["AU"] >= 0.5).astype(int)
    u = np.mean([f1_score(true["AU"][valid["AU"][:, j], j], au_pred[valid["AU"][:, j], j], zero_division=0)
                 for j in range(12)])
    return {"score": (v + a) / 2 + e + u, "valence_ccc": v, "arousal_ccc": a, "expr_f1": e, "au_f1": u}


def _random_split(seed: int, n: int = 2000):
    """Labels as an MTL file gives them (-5 / -1 where missing), predictions, and per-task masks."""
    rng = np.random.default_rng(seed)
    va_true = rng.uniform(-1, 1, (n, 2))
    va_valid = rng.random((n, 2)) > 0.15
    va_valid[rng.random(n) < 0.2] = False  # rows without VA
    expr_true = rng.choice(8, size=n, p=[0.3, 0.05, 0.02, 0.03, 0.25, 0.1, 0.1, 0.15])
    expr_valid = rng.random(n) > 0.25
    au_true = (rng.random((n, 12)) < rng.uniform(0.05, 0.5, 12)).astype(np.int64)
    au_valid = rng.random((n, 12)) > 0.05
    au_valid[rng.random(n) < 0.2] = False  # rows without AUs
    true = {"VA": np.where(va_valid, va_true, -5.0), "EXPR": np.where(expr_valid, expr_true, -1),
            "AU": np.where(au_valid, au_true, -1)}
    valid = {"VA": va_valid, "EXPR": expr_valid, "AU": au_valid}
    expr_pred = np.where(rng.random(n) < 0.4, expr_true, rng.integers(0, 8, n))
    pred = {"VA": np.clip(0.6 * va_true + rng.normal(0, 0.4, (n, 2)) + 0.1, -1, 1),
            "EXPR": expr_pred,
            "AU": np.clip(0.5 * au_true + rng.uniform(0, 0.7, (n, 12)), 0, 1)}
    return pred, true, valid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_p_mtl_matches_numpy_and_sklearn(seed):
    pred, true, valid = _random_split(seed)
    got = metrics.p_mtl(pred, true, valid)
    expected = _reference(pred, true, valid)
    assert set(got) == {"score", "valence_ccc", "arousal_ccc", "expr_f1", "au_f1"}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert 0.2 < got["valence_ccc"] < 0.9 and 0.2 < got["expr_f1"] < 0.8 and 0.2 < got["au_f1"] < 0.9


def test_p_mtl_with_absent_classes_and_float32_input():
    pred, true, valid = _random_split(3, n=300)
    # Disgust and Fear neither true nor predicted on valid frames: they count 0 in the macro mean.
    for c in (2, 3):
        true["EXPR"][true["EXPR"] == c] = 0
        pred["EXPR"][pred["EXPR"] == c] = 4
    pred32 = {k: v.astype(np.float32) if k != "EXPR" else v for k, v in pred.items()}
    got = metrics.p_mtl(pred32, true, valid)
    expected = _reference(pred32, true, valid)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_mtl_score_decides_like_the_challenge():
    pred, true, valid = _random_split(4, n=500)
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(500, 8))
    au_logits = rng.normal(size=(500, 12))
    score, details = metrics.mtl_score({"VA": pred["VA"], "EXPR": logits, "AU": au_logits}, true, valid)
    decided = {"VA": pred["VA"], "EXPR": logits.argmax(1), "AU": expit(au_logits)}
    expected = _reference(decided, true, valid)
    assert score == pytest.approx(expected["score"], abs=1e-12)
    for key in ("valence_ccc", "arousal_ccc", "expr_f1", "au_f1"):
        assert details[key] == pytest.approx(expected[key], abs=1e-12), key
    assert len(details["expr_per_class"]) == 8 and len(details["au_per_au"]) == 12
    assert np.mean(details["au_per_au"]) == pytest.approx(expected["au_f1"], abs=1e-12)


def test_paper_check():
    # System C's table 1: (0.503 + 0.432) / 2 + 0.319 + 0.493 = 1.2795, its "score" column.
    assert metrics.mtl_combine(0.503, 0.432, 0.319, 0.493) == pytest.approx(1.2795, abs=1e-12)


def test_perfect_predictions():
    pred, true, valid = _random_split(5, n=400)
    perfect = {"VA": np.where(valid["VA"], true["VA"], 0.0), "EXPR": np.where(valid["EXPR"], true["EXPR"], 0),
               "AU": np.where(valid["AU"], true["AU"], 0)}
    got = metrics.p_mtl(perfect, true, valid)
    assert got["valence_ccc"] == pytest.approx(1) and got["arousal_ccc"] == pytest.approx(1)
    assert got["expr_f1"] == pytest.approx(1) and got["au_f1"] == pytest.approx(1) and got["score"] == pytest.approx(3)


def test_bad_input():
    pred, true, valid = _random_split(6, n=50)
    with pytest.raises(ValueError, match=r"pred: missing AU \(expected keys"):
        metrics.p_mtl({"VA": pred["VA"], "EXPR": pred["EXPR"]}, true, valid)
    with pytest.raises(ValueError, match="valid: expected a mapping"):
        metrics.p_mtl(pred, true, [valid["VA"]])
    with pytest.raises(ValueError, match="different numbers of frames: .*pred EXPR 49"):
        metrics.p_mtl({**pred, "EXPR": pred["EXPR"][:49]}, true, valid)
    with pytest.raises(ValueError, match="class 9 on a valid frame"):
        metrics.p_mtl({**pred, "EXPR": np.full(50, 9)}, true, valid)
    with pytest.raises(ValueError, match=r"outputs EXPR: expected \[N, 8\] logits"):
        metrics.mtl_score({"VA": pred["VA"], "EXPR": np.zeros((50, 7)), "AU": np.zeros((50, 12))}, true, valid)
