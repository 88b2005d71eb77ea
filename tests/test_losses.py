"""Losses against float64 numpy formulas written out plainly, and PyTorch where it is installed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abaw_jax import losses

B, L = 3, 7


def as64(x):
    return np.asarray(x, dtype=np.float64)


def sigmoid64(x):
    return 1.0 / (1.0 + np.exp(-as64(x)))


def log_softmax64(x):
    x = as64(x)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def ccc64(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    vx = sum((a - mx) ** 2 for a in x) / n
    vy = sum((b - my) ** 2 for b in y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y)) / n
    return 2 * cov / (vx + vy + (mx - my) ** 2)


def va_batch(seed, p_valid=0.75):
    rng = np.random.default_rng(seed)
    labels = rng.uniform(-1, 1, (B, L, 2)).astype(np.float32)
    outputs = (0.5 * labels + 0.4 * rng.normal(size=(B, L, 2))).astype(np.float32)
    valid = rng.random((B, L, 2)) < p_valid
    labels[~valid] = 0.0
    return outputs, labels, valid


def expr_batch(seed, p_valid=0.7):
    rng = np.random.default_rng(seed)
    logits = (2 * rng.normal(size=(B, L, 8))).astype(np.float32)
    labels = rng.integers(0, 8, (B, L)).astype(np.int32)
    valid = rng.random((B, L)) < p_valid
    labels[~valid] = 0
    return logits, labels, valid


def au_batch(seed, p_valid=0.7):
    rng = np.random.default_rng(seed)
    logits = (2 * rng.normal(size=(B, L, 12))).astype(np.float32)
    targets = (rng.random((B, L, 12)) < 0.3).astype(np.int32)
    valid = rng.random((B, L, 12)) < p_valid
    targets[~valid] = 0
    return logits, targets, valid


# ----------------------------------------------------------------------------------------------
# VA


def test_ccc_loss_matches_reference_per_column():
    x, y, valid = va_batch(0)
    cccs = [ccc64(as64(x[..., c][valid[..., c]]), as64(y[..., c][valid[..., c]]))
            for c in range(2)]
    expected = 1.0 - (cccs[0] + cccs[1]) / 2
    assert float(losses.ccc_loss(x, y, valid)) == pytest.approx(expected, abs=1e-5)


def test_ccc_loss_drops_columns_with_fewer_than_two_valid_entries():
    x, y, valid = va_batch(1)
    valid[..., 1] = False
    valid[0, 0, 1] = True
    expected = 1.0 - ccc64(as64(x[..., 0][valid[..., 0]]), as64(y[..., 0][valid[..., 0]]))
    assert float(losses.ccc_loss(x, y, valid)) == pytest.approx(expected, abs=1e-5)


def test_ccc_loss_gradient_matches_finite_differences():
    x, y, valid = va_batch(2)
    grad = np.asarray(jax.grad(losses.ccc_loss)(jnp.asarray(x), y, valid))
    assert np.all(grad[~valid] == 0)

    def ref(xx):
        cccs = [ccc64(xx[..., c][valid[..., c]], as64(y[..., c][valid[..., c]])) for c in range(2)]
        return 1.0 - sum(cccs) / 2

    eps = 1e-6
    for idx in [(0, 0, 0), (1, 3, 1), (2, 6, 0)]:
        if not valid[idx]:
            continue
        hi, lo = as64(x), as64(x)
        hi[idx] += eps
        lo[idx] -= eps
        assert grad[idx] == pytest.approx((ref(hi) - ref(lo)) / (2 * eps), abs=1e-4)


def test_mse_and_mse_ccc_match_reference():
    x, y, valid = va_batch(3)
    mse = np.mean((as64(x) - as64(y))[valid] ** 2)
    assert float(losses.mse_loss(x, y, valid)) == pytest.approx(mse, rel=1e-6)
    cccs = [ccc64(as64(x[..., c][valid[..., c]]), as64(y[..., c][valid[..., c]]))
            for c in range(2)]
    expected = 0.5 * mse + 2.0 * (1.0 - sum(cccs) / 2)
    got = losses.va_mse_ccc_loss(x, y, valid, mse_weight=0.5, ccc_weight=2.0)
    assert float(got) == pytest.approx(expected, abs=1e-5)


def test_mse_ccc_default_has_the_per_column_weights_of_the_authors_code():
    """L = 1/2 [0.6 MSE_V + 0.4 (1 - CCC_V)] + 1/2 [0.5 MSE_A + 0.5 (1 - CCC_A)]."""
    x, y, valid = va_batch(9)
    terms = []
    for c, (a, b) in enumerate([(0.6, 0.4), (0.5, 0.5)]):
        xc, yc = as64(x[..., c][valid[..., c]]), as64(y[..., c][valid[..., c]])
        terms.append(a * np.mean((xc - yc) ** 2) + b * (1 - ccc64(xc, yc)))
    got = losses.get_loss("VA", "mse_ccc")(x, y, valid)
    assert float(got) == pytest.approx(sum(terms) / 2, abs=1e-6)
    # The equal-weight variant is MSE + (1 - mean CCC).
    mse = np.mean((as64(x) - as64(y))[valid] ** 2)
    cccs = [ccc64(as64(x[..., c][valid[..., c]]), as64(y[..., c][valid[..., c]]))
            for c in range(2)]
    equal = losses.get_loss("VA", "mse_ccc_equal")(x, y, valid)
    assert float(equal) == pytest.approx(mse + 1 - sum(cccs) / 2, abs=1e-6)
    # A column with no valid entry is left out of the mean.
    only_v = valid.copy()
    only_v[..., 1] = False
    assert float(losses.va_mse_ccc_loss(x, y, only_v)) == pytest.approx(terms[0], abs=1e-6)
    with pytest.raises(ValueError, match="one per column"):
        losses.va_mse_ccc_loss(x, y, valid, mse_weight=(1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------------------------
# EXPR


@pytest.mark.parametrize("alpha", [0.25, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]])
def test_softmax_focal_matches_reference(alpha):
    logits, labels, valid = expr_batch(0)
    log_p = log_softmax64(logits)
    total, count = 0.0, 0
    for b in range(B):
        for t in range(L):
            if not valid[b, t]:
                continue
            k = labels[b, t]
            a = alpha[k] if isinstance(alpha, list) else alpha
            p_t = np.exp(log_p[b, t, k])
            total += -a * (1 - p_t) ** 2 * log_p[b, t, k]
            count += 1
    got = losses.softmax_focal_loss(logits, labels, valid, alpha=alpha, gamma=2.0)
    assert got.dtype == jnp.float32
    assert float(got) == pytest.approx(total / count, rel=1e-5)


def test_softmax_focal_class_weights_multiply_outside_the_unweighted_p_t():
    logits, labels, valid = expr_batch(6)
    counts = [177375, 16575, 10810, 9079, 95632, 79864, 31631, 165847]
    w = losses.inverse_share_weights(counts)
    log_p = log_softmax64(logits)
    log_pt = np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    p_t = np.exp(log_pt)
    per_frame = as64(w)[labels] * 0.25 * (1 - p_t) ** 2 * -log_pt
    got = losses.softmax_focal_loss(logits, labels, valid, alpha=0.25, gamma=2.0,
                                    class_weights=w)
    assert float(got) == pytest.approx(per_frame[valid].mean(), rel=1e-5)
    # The authors' code takes p_t = exp(-weighted CE), which is not the target's probability.
    wce = as64(w)[labels] * -log_pt
    code = (0.25 * (1 - np.exp(-wce)) ** 2 * wce)[valid].mean()
    assert not np.isclose(float(got), code, rtol=1e-3)
    # The gradient is that of the formula (finite differences on the float64 reference).

    def ref(z):
        lp = log_softmax64(z)
        lpt = np.take_along_axis(lp, labels[..., None], axis=-1)[..., 0]
        return (as64(w)[labels] * 0.25 * (1 - np.exp(lpt)) ** 2 * -lpt)[valid].mean()

    grad = jax.grad(lambda z: losses.softmax_focal_loss(z, labels, valid, class_weights=w))(
        jnp.asarray(logits))
    eps = 1e-4
    for idx in [(0, 0, 0), (1, 2, 3), (2, 5, 7)]:
        hi, lo = as64(logits).copy(), as64(logits).copy()
        hi[idx] += eps
        lo[idx] -= eps
        assert grad[idx] == pytest.approx((ref(hi) - ref(lo)) / (2 * eps), abs=1e-6)


def test_inverse_share_weights_reproduce_the_authors_values_and_counts():
    # System A's code (msjae/ABAW trainer.py): EXPR and AU training counts -> weights.
    expr = losses.inverse_share_weights([177375, 16575, 10810, 9079, 95632, 79864, 31631, 165847])
    np.testing.assert_allclose(expr, [.6977, .9718, .9816, .9845, .8370, .8639, .9461, .7174],
                               atol=5e-5)
    au = losses.inverse_share_weights([160261, 67513, 209982, 362236, 538960, 467113, 332788,
                                       38163, 42787, 34746, 851020, 100978])
    np.testing.assert_allclose(au, [.9500, .9789, .9345, .8870, .8319, .8543, .8962, .9881,
                                    .9867, .9892, .7346, .9685], atol=5e-5)
    with pytest.raises(ValueError, match="counts must be finite"):
        losses.inverse_share_weights([0, 0])
    labels = np.array([[0, 3, 3, 7], [1, 3, 0, 0]])
    valid = np.array([[True, True, False, True], [True, True, True, False]])
    np.testing.assert_array_equal(losses.class_counts(labels, valid, 8), [2, 1, 0, 2, 0, 0, 0, 1])
    au_labels = np.array([[[1, 0, 1], [1, 1, 0]], [[0, 0, 1], [1, 1, 1]]])
    au_valid = np.ones_like(au_labels, bool)
    au_valid[1, 1, 0] = False
    np.testing.assert_array_equal(losses.positive_counts(au_labels, au_valid), [2, 2, 3])


def test_softmax_focal_with_gamma_zero_and_alpha_one_is_cross_entropy():
    logits, labels, valid = expr_batch(1)
    a = losses.softmax_focal_loss(logits, labels, valid, alpha=1.0, gamma=0.0)
    b = losses.cross_entropy(logits, labels, valid)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    assert np.all(np.isfinite(jax.grad(losses.softmax_focal_loss)(
        jnp.asarray(logits).at[0, 0, 0].set(200.0), labels, valid, 1.0, 0.0)))


def test_cross_entropy_matches_reference_with_smoothing_and_weights():
    logits, labels, valid = expr_batch(2)
    w = np.array([1.0, 2.0, 0.5, 3.0, 1.0, 1.5, 0.7, 1.2])
    eps = 0.1
    log_p = log_softmax64(logits)
    num = den = 0.0
    for b in range(B):
        for t in range(L):
            if valid[b, t]:
                k = labels[b, t]
                num += (1 - eps) * w[k] * -log_p[b, t, k] + eps / 8 * sum(
                    w[c] * -log_p[b, t, c] for c in range(8))
                den += w[k]
    got = losses.cross_entropy(logits, labels, valid, label_smoothing=eps, class_weights=w)
    assert float(got) == pytest.approx(num / den, rel=1e-5)


def test_cross_entropy_and_its_gradient_match_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for cross-entropy")
    logits, labels, valid = expr_batch(3)
    w = np.linspace(0.5, 2.0, 8).astype(np.float32)
    t_logits = torch.tensor(logits.reshape(-1, 8), requires_grad=True)
    t_labels = torch.tensor(np.where(valid, labels, -100).reshape(-1).astype(np.int64))
    for kwargs, tkw in [({}, {}),
                        ({"label_smoothing": 0.2, "class_weights": w},
                         {"label_smoothing": 0.2, "weight": torch.tensor(w)})]:
        t_logits.grad = None
        ref = torch.nn.functional.cross_entropy(t_logits, t_labels, ignore_index=-100, **tkw)
        ref.backward()
        fn = lambda x: losses.cross_entropy(x, labels, valid, **kwargs)  # noqa: E731
        value, grad = jax.value_and_grad(fn)(jnp.asarray(logits))
        assert float(value) == pytest.approx(ref.item(), rel=1e-5)
        np.testing.assert_allclose(np.asarray(grad).reshape(-1, 8), t_logits.grad.numpy(),
                                   atol=1e-6)


# ----------------------------------------------------------------------------------------------
# AU


def sigmoid_focal64(x, t, valid, alpha, gamma, mode, weights=None):
    """float64 per-AU focal loss, mean over valid entries: Eq. 1 with a scalar alpha ("scalar")
    or torchvision's alpha / (1 - alpha) ("balanced"), times optional per-AU weights."""
    p = sigmoid64(x)
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    a = alpha if mode == "scalar" else alpha * t + (1 - alpha) * (1 - t)
    w = np.ones(x.shape[-1]) if weights is None else as64(weights)
    return (w * a * (1 - p_t) ** gamma * ce)[valid].mean()


def test_sigmoid_focal_matches_reference():
    x, t, valid = au_batch(0)
    # Default: Eq. 1 of system A's paper, one alpha for positives and negatives.
    got = losses.sigmoid_focal_loss(x, t, valid, alpha=0.25, gamma=2.0)
    assert float(got) == pytest.approx(sigmoid_focal64(x, t, valid, 0.25, 2.0, "scalar"),
                                       rel=1e-5)
    balanced = losses.sigmoid_focal_loss(x, t, valid, alpha=0.25, gamma=2.0,
                                         alpha_mode="balanced")
    assert float(balanced) == pytest.approx(sigmoid_focal64(x, t, valid, 0.25, 2.0, "balanced"),
                                            rel=1e-5)
    assert not np.isclose(float(got), float(balanced), rtol=1e-2)
    for mode in losses.ALPHA_MODES:
        no_alpha = losses.sigmoid_focal_loss(x, t, valid, alpha=-1, gamma=2.0, alpha_mode=mode)
        assert float(no_alpha) == pytest.approx(sigmoid_focal64(x, t, valid, 1.0, 2.0, "scalar"),
                                                rel=1e-5)
    with pytest.raises(ValueError, match="alpha_mode must be one of"):
        losses.sigmoid_focal_loss(x, t, valid, alpha_mode="alpha_t")


@pytest.mark.parametrize("mode", ["scalar", "balanced"])
def test_sigmoid_focal_au_weights_value_and_gradient(mode):
    x, t, valid = au_batch(5)
    w = losses.inverse_share_weights(np.arange(1, 13) * 1000.0)
    ref = lambda z: sigmoid_focal64(z, t, valid, 0.25, 2.0, mode, w)  # noqa: E731
    fn = lambda z: losses.sigmoid_focal_loss(z, t, valid, alpha=0.25, alpha_mode=mode,  # noqa
                                             weights=w)
    value, grad = jax.value_and_grad(fn)(jnp.asarray(x))
    assert float(value) == pytest.approx(ref(x), rel=1e-5)
    eps = 1e-4
    for idx in [(0, 0, 0), (1, 3, 5), (2, 6, 11), (0, 4, 7)]:
        hi, lo = as64(x).copy(), as64(x).copy()
        hi[idx] += eps
        lo[idx] -= eps
        assert grad[idx] == pytest.approx((ref(hi) - ref(lo)) / (2 * eps), abs=1e-6)
    with pytest.raises(ValueError, match=r"weights: expected one weight per class/label \(12\)"):
        losses.sigmoid_focal_loss(x, t, valid, weights=np.ones(8))


def test_sigmoid_focal_and_its_gradient_match_torchvision():
    torch = pytest.importorskip("torch", reason="torchvision is the reference for focal loss")
    ops = pytest.importorskip("torchvision.ops",
                              reason="torchvision is the reference for focal loss")
    x, t, valid = au_batch(1)
    for alpha, gamma in [(0.25, 2.0), (-1.0, 1.5), (0.6, 0.0)]:
        tx = torch.tensor(x, requires_grad=True)
        per_entry = ops.sigmoid_focal_loss(tx, torch.tensor(t, dtype=torch.float32),
                                           alpha=alpha, gamma=gamma, reduction="none")
        ref = per_entry[torch.tensor(valid)].mean()
        ref.backward()
        fn = lambda z: losses.sigmoid_focal_loss(z, t, valid, alpha=alpha,  # noqa: E731
                                                 gamma=gamma, alpha_mode="balanced")
        value, grad = jax.value_and_grad(fn)(jnp.asarray(x))
        assert float(value) == pytest.approx(ref.item(), rel=1e-5)
        np.testing.assert_allclose(np.asarray(grad), tx.grad.numpy(), atol=1e-7)
    # With everything valid the mean is torchvision's own "mean" reduction.
    ref = ops.sigmoid_focal_loss(torch.tensor(x), torch.tensor(t, dtype=torch.float32),
                                 reduction="mean")
    got = losses.sigmoid_focal_loss(x, t, np.ones_like(valid), alpha_mode="balanced")
    assert float(got) == pytest.approx(ref.item(), rel=1e-5)


def test_bce_matches_reference_and_torch():
    x, t, valid = au_batch(2)
    pos_weight = np.linspace(0.5, 4.0, 12)
    p = sigmoid64(x)
    ref = -(pos_weight * t * np.log(p) + (1 - t) * np.log(1 - p))
    got = losses.bce_with_logits(x, t, valid, pos_weight=pos_weight)
    assert float(got) == pytest.approx(ref[valid].mean(), rel=1e-5)
    plain = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    unweighted = losses.bce_with_logits(x, t, valid)
    assert float(unweighted) == pytest.approx(plain[valid].mean(), rel=1e-5)

    torch = pytest.importorskip("torch", reason="PyTorch is the reference for BCE with logits")
    per_entry = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(x), torch.tensor(t, dtype=torch.float32),
        pos_weight=torch.tensor(pos_weight, dtype=torch.float32), reduction="none")
    assert float(got) == pytest.approx(per_entry[torch.tensor(valid)].mean().item(), rel=1e-5)


def test_bce_is_stable_for_large_logits():
    x = np.array([[[80.0, -80.0]]], np.float32)
    t = np.array([[[0, 1]]], np.int32)
    v = np.ones_like(t, bool)
    assert float(losses.bce_with_logits(x, t, v)) == pytest.approx(80.0, rel=1e-5)


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0.0, 4.0, 0.05), (1.0, 2.0, 0.0),
                                                      (0.0, 1.0, 0.0)])
def test_weighted_asymmetric_loss_matches_reference(gamma_pos, gamma_neg, clip):
    x, t, valid = au_batch(3)
    w = np.linspace(0.2, 3.0, 12)
    total, count = 0.0, 0
    for b in range(B):
        for f in range(L):
            for j in range(12):
                if not valid[b, f, j]:
                    continue
                p = 1.0 / (1.0 + np.exp(-float(x[b, f, j])))
                p_m = max(p - clip, 0.0)
                if t[b, f, j] == 1:
                    term = (1 - p) ** gamma_pos * np.log(p)
                else:
                    term = p_m ** gamma_neg * np.log(1 - p_m)
                total += -w[j] * term
                count += 1
    got = losses.weighted_asymmetric_loss(x, t, valid, w, gamma_pos, gamma_neg, clip)
    assert float(got) == pytest.approx(total / count, rel=1e-5)


def test_weighted_asymmetric_loss_paper_form():
    # System C's eq. 7: -w [t log p + (1 - t) p log(1 - p)].
    x, t, valid = au_batch(4)
    w = np.linspace(0.5, 1.5, 12)
    p = sigmoid64(x)
    ref = -w * (t * np.log(p) + (1 - t) * p * np.log(1 - p))
    got = losses.weighted_asymmetric_loss(x, t, valid, w, gamma_pos=0.0, gamma_neg=1.0, clip=0.0)
    assert float(got) == pytest.approx(ref[valid].mean(), rel=1e-5)


def eq7_64(x, t, valid, w):
    """float64 value of system C's Eq. 7 and its gradient with p^ of the negative term held
    constant (detached, as the authors' code) and with it differentiated."""
    p = sigmoid64(x)
    n = valid.sum()
    per = -w * (t * np.log(p) + (1 - t) * p * np.log(1 - p))
    value = per[valid].sum() / n
    # d/dx log p = 1 - p; d/dx log(1 - p) = -p; d/dx p = p (1 - p).
    detached = -w * (t * (1 - p) + (1 - t) * p * -p) / n
    through = -w * (t * (1 - p) + (1 - t) * (p * (1 - p) * np.log(1 - p) + p * -p)) / n
    return value, np.where(valid, detached, 0.0), np.where(valid, through, 0.0)


def test_weighted_asymmetric_loss_is_eq7_with_the_authors_gradient():
    x, t, valid = au_batch(7)
    w = losses.au_weights_from_rates(np.linspace(0.05, 0.6, 12))
    value, detached, through = eq7_64(x, t, valid, as64(w))
    got, grad = jax.value_and_grad(lambda z: losses.get_loss("AU", "wal", weights=w)(
        z, t, valid))(jnp.asarray(x))
    assert float(got) == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), detached, atol=1e-7)
    assert not np.allclose(detached, through, atol=1e-5)
    got, grad = jax.value_and_grad(lambda z: losses.get_loss("AU", "wal_grad", weights=w)(
        z, t, valid))(jnp.asarray(x))
    assert float(got) == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), through, atol=1e-7)


def test_asl_is_the_common_asymmetric_loss_with_detached_focusing():
    x, t, valid = au_batch(8)
    g_pos, g_neg, clip = 1.0, 4.0, 0.05

    def ref(z, focus=None):
        p = sigmoid64(z)
        p_m = np.maximum(p - clip, 0.0)
        f_pos, f_neg = focus if focus is not None else ((1 - p) ** g_pos, p_m ** g_neg)
        per = -(t * f_pos * np.log(p) + (1 - t) * f_neg * np.log(1 - p_m))
        return per[valid].mean()

    p = sigmoid64(x)
    focus = ((1 - p) ** g_pos, np.maximum(p - clip, 0.0) ** g_neg)
    value, grad = jax.value_and_grad(lambda z: losses.get_loss("AU", "asl")(z, t, valid))(
        jnp.asarray(x))
    assert float(value) == pytest.approx(ref(x), rel=1e-5)
    # Focusing factors held at their values: finite differences of the remaining log terms.
    eps = 1e-4
    for idx in [(0, 0, 0), (1, 3, 5), (2, 6, 11), (0, 2, 9)]:
        hi, lo = as64(x).copy(), as64(x).copy()
        hi[idx] += eps
        lo[idx] -= eps
        assert grad[idx] == pytest.approx((ref(hi, focus) - ref(lo, focus)) / (2 * eps),
                                          abs=1e-6)


def test_au_weights_from_rates():
    rates = np.array([0.1, 0.2, 0.4, 0.05])
    inv = [1 / 0.1, 1 / 0.2, 1 / 0.4, 1 / 0.05]
    expected = [4 * v / sum(inv) for v in inv]
    np.testing.assert_allclose(losses.au_weights_from_rates(rates), expected, rtol=1e-6)
    assert losses.au_weights_from_rates(rates).mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"rates\[2\] = 0\.0"):
        losses.au_weights_from_rates([0.1, 0.3, 0.0])
    with pytest.raises(ValueError, match=r"rates\[0\] = 1\.5"):
        losses.au_weights_from_rates([1.5])
    with pytest.raises(ValueError, match="rates: expected a non-empty 1-D"):
        losses.au_weights_from_rates([[0.1]])


# ----------------------------------------------------------------------------------------------
# Every loss: masking, the all-invalid case, the registry

BATCHES = {"VA": va_batch, "EXPR": expr_batch, "AU": au_batch}
OPTIONS = {("AU", "wal"): {"weights": np.linspace(0.5, 2.0, 12)},
           ("AU", "wal_grad"): {"weights": np.linspace(0.5, 2.0, 12)}}
ALL = [(task, name) for task in ("VA", "EXPR", "AU") for name in losses.loss_names(task)]


@pytest.mark.parametrize("task,name", ALL)
def test_all_invalid_gives_zero_with_finite_gradient(task, name):
    fn = losses.get_loss(task, name, **OPTIONS.get((task, name), {}))
    outputs, labels, valid = BATCHES[task](5)
    valid = np.zeros_like(valid)
    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(outputs), labels, valid)
    assert value.dtype == jnp.float32 and value.shape == ()
    assert float(value) == 0.0
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad) == 0)


@pytest.mark.parametrize("task,name", ALL)
def test_invalid_entries_contribute_nothing(task, name):
    fn = jax.jit(losses.get_loss(task, name, **OPTIONS.get((task, name), {})))
    outputs, labels, valid = BATCHES[task](6)
    base = fn(outputs, labels, valid)
    # Garbage labels and outputs on invalid entries, and extra all-invalid frames, change nothing.
    bad_labels = np.where(valid, labels, -5 if task == "VA" else -1).astype(labels.dtype)
    frame_valid = valid if valid.ndim == outputs.ndim else valid[..., None]
    bad_outputs = np.where(np.broadcast_to(frame_valid, outputs.shape), outputs, 37.0)
    np.testing.assert_allclose(fn(bad_outputs, bad_labels, valid), base, rtol=1e-6)
    grad = jax.grad(fn)(jnp.asarray(outputs), labels, valid)
    assert np.all(np.isfinite(grad))
    assert np.all(np.asarray(grad)[~np.broadcast_to(frame_valid, outputs.shape)] == 0)


def test_get_loss_errors_name_the_bad_key():
    with pytest.raises(ValueError, match="task must be one of"):
        losses.get_loss("VAL", "ccc")
    with pytest.raises(ValueError, match="unknown EXPR loss 'bce'; known: focal, ce"):
        losses.get_loss("EXPR", "bce")
    with pytest.raises(ValueError, match="no option 'alpha'"):
        losses.get_loss("VA", "ccc", alpha=0.25)
    with pytest.raises(ValueError, match="'wal' needs weights"):
        losses.get_loss("AU", "wal")
    with pytest.raises(ValueError, match="'wal_grad' needs weights"):
        losses.get_loss("AU", "wal_grad")
    with pytest.raises(ValueError, match="give either class_weights or counts"):
        losses.get_loss("EXPR", "focal", counts=np.ones(8), class_weights=np.ones(8))
    with pytest.raises(ValueError, match="either weights or rates"):
        losses.get_loss("AU", "wal", weights=np.ones(12), rates=np.full(12, 0.3))


@pytest.mark.parametrize("task,name", [("VA", "ccc"), ("VA", "mse"), ("EXPR", "focal"),
                                       ("EXPR", "ce"), ("AU", "focal"), ("AU", "bce")])
def test_mismatched_shapes_are_an_error_naming_them(task, name):
    outputs, labels, valid = BATCHES[task](8)
    fn = losses.get_loss(task, name)
    with pytest.raises(ValueError, match=r"shapes do not match: outputs .*labels .*valid \(3, 7"):
        fn(outputs, labels, valid[..., None])
    with pytest.raises(ValueError, match=r"shapes do not match: outputs \(3, 6"):
        fn(outputs[:, :6], labels, valid)


def test_get_loss_binds_options():
    x, t, valid = au_batch(7)
    rates = np.linspace(0.05, 0.5, 12)
    fn = losses.get_loss("AU", "wal", rates=rates, gamma_neg=2.0)
    expected = losses.weighted_asymmetric_loss(x, t, valid, losses.au_weights_from_rates(rates),
                                               gamma_neg=2.0)
    assert float(fn(x, t, valid)) == pytest.approx(float(expected), rel=1e-6)
    fn = losses.get_loss("EXPR", "focal", alpha=1.0, gamma=0.0)
    logits, labels, v = expr_batch(7)
    assert float(fn(logits, labels, v)) == pytest.approx(
        float(losses.cross_entropy(logits, labels, v)), rel=1e-6)
    counts = [177375, 16575, 10810, 9079, 95632, 79864, 31631, 165847]
    fn = losses.get_loss("EXPR", "focal", counts=counts)
    expected = losses.softmax_focal_loss(logits, labels, v,
                                         class_weights=losses.inverse_share_weights(counts))
    assert float(fn(logits, labels, v)) == pytest.approx(float(expected), rel=1e-6)
    fn = losses.get_loss("AU", "focal", counts=np.arange(1, 13), alpha_mode="balanced")
    expected = losses.sigmoid_focal_loss(x, t, valid, alpha_mode="balanced",
                                         weights=losses.inverse_share_weights(np.arange(1, 13)))
    assert float(fn(x, t, valid)) == pytest.approx(float(expected), rel=1e-6)
