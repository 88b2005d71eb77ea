"""The attention kernels against a float64 numpy softmax attention and PyTorch's SDPA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abaw_jax.models import attention


def numpy_attention(q, k, v, mask=None):
    """float64 softmax(q k^T / sqrt(h)) v over [B, T, N, H]; a fully masked row averages the
    values uniformly, as jax.nn.dot_product_attention does."""
    q, k, v = (np.asarray(a, np.float64).transpose(0, 2, 1, 3) for a in (q, k, v))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    if mask is not None:
        mask = np.broadcast_to(mask, scores.shape)
        scores = np.where(mask, scores, -np.inf)
        scores = np.where(mask.any(-1, keepdims=True), scores, 0.0)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return (w @ v).transpose(0, 2, 1, 3)


def inputs(seed=0, shape=(3, 7, 2, 8), keys=None):
    rng = np.random.default_rng(seed)
    b, t, n, h = shape
    q = rng.normal(size=shape).astype(np.float32) * 2
    k = rng.normal(size=(b, keys or t, n, h)).astype(np.float32) * 2
    v = rng.normal(size=(b, keys or t, n, h)).astype(np.float32)
    return q, k, v


def key_mask(batch, keys, seed=0):
    """[B, 1, 1, S] with a fully masked last row."""
    m = np.random.default_rng(seed).random((batch, keys)) < 0.6
    m[0, 0] = True
    m[-1] = False
    return m[:, None, None, :]


@pytest.mark.parametrize("impl", ["default", "einsum", "xla"])
@pytest.mark.parametrize("masked", [False, True])
def test_kernels_match_float64_reference(impl, masked):
    q, k, v = inputs(1, keys=5)
    mask = key_mask(3, 5) if masked else None
    got = attention.dot_product_attention(q, k, v, mask, implementation=impl)
    np.testing.assert_allclose(np.asarray(got), numpy_attention(q, k, v, mask), atol=2e-6)


def test_einsum_gradients_match_xla_kernel():
    q, k, v = inputs(2)
    mask = jnp.asarray(key_mask(3, 7, 1))
    cot = np.random.default_rng(3).normal(size=q.shape).astype(np.float32)

    def loss(impl):
        return lambda *a: jnp.sum(cot * attention.dot_product_attention(*a, mask, implementation=impl))

    grads = jax.grad(loss("einsum"), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref):
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5)


def test_einsum_bfloat16_stays_close_and_keeps_dtype():
    q, k, v = inputs(4, shape=(2, 16, 4, 16))
    got = attention.einsum_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), numpy_attention(q, k, v), atol=0.05)


def test_einsum_matches_torch_sdpa():
    torch = pytest.importorskip("torch", reason="torch's scaled_dot_product_attention is the reference")
    q, k, v = inputs(5, shape=(2, 197, 3, 64))
    mask = key_mask(2, 197, 2)
    mask[-1, ..., :3] = True    # torch gives NaN for a fully masked row: not compared
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a).transpose(1, 2) for a in (q, k, v)),
        attn_mask=torch.from_numpy(mask)).transpose(1, 2).numpy()
    got = attention.dot_product_attention(q, k, v, mask, implementation="einsum")
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


def test_default_resolves_per_platform_and_rejects_unknown_names():
    """The kernel follows the platform the function is traced for, not the default backend."""
    from abaw_jax.models import kernels
    assert attention.resolve(None) == attention.resolve("default") == "jax"
    with kernels.platform("cpu"):
        assert attention.resolve("default") == "einsum"
    with kernels.platform("gpu"):
        assert attention.resolve("default") == "jax"
    assert attention.resolve("xla") == "xla"
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        attention.resolve("flash")


def numpy_attention_dropout(q, k, v, mask, keep, rate):
    """float64 attention whose normalised weights are dropped by `keep` [B, N, T, S] and the
    kept ones scaled by 1 / (1 - rate), as torch's attention dropout does."""
    q, k, v = (np.asarray(a, np.float64).transpose(0, 2, 1, 3) for a in (q, k, v))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    mask = np.broadcast_to(mask, scores.shape)
    scores = np.where(mask, scores, -np.inf)
    scores = np.where(mask.any(-1, keepdims=True), scores, 0.0)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    w = np.where(keep, w / (1.0 - rate), 0.0)
    return (w @ v).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("impl", ["default", "einsum", "xla"])
def test_attention_weight_dropout_matches_float64_reference(impl):
    q, k, v = inputs(6, keys=5)
    mask = key_mask(3, 5, 3)
    rng, rate = jax.random.key(7), 0.4
    keep = np.asarray(attention.dropout_keep(rng, rate, (3, 2, 7, 5)))
    assert 0.3 < 1 - keep.mean() < 0.5
    got = attention.dot_product_attention(q, k, v, mask, implementation=impl,
                                          dropout_rate=rate, dropout_rng=rng)
    np.testing.assert_allclose(np.asarray(got), numpy_attention_dropout(q, k, v, mask, keep, rate),
                               atol=2e-6)
    # Without an rng (inference) or at rate 0 nothing is dropped, whatever the kernel.
    for kwargs in ({"dropout_rate": rate}, {"dropout_rate": 0.0, "dropout_rng": rng}):
        plain = attention.dot_product_attention(q, k, v, mask, implementation=impl, **kwargs)
        np.testing.assert_allclose(np.asarray(plain), numpy_attention(q, k, v, mask), atol=2e-6)


def test_attention_weight_dropout_is_unbiased_and_rejects_rate_one():
    q, k, v = inputs(8, shape=(1, 4, 1, 8))
    draws = jax.vmap(lambda r: attention.einsum_attention(q, k, v, dropout_rate=0.5,
                                                          dropout_rng=r))(
        jax.random.split(jax.random.key(0), 20_000))
    # 20k draws: the standard error of each mean is below 0.02.
    np.testing.assert_allclose(np.asarray(draws).mean(0), numpy_attention(q, k, v), atol=0.06)
    with pytest.raises(ValueError, match="attention dropout rate"):
        attention.einsum_attention(q, k, v, dropout_rate=1.0, dropout_rng=jax.random.key(0))
