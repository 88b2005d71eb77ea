"""The package's Dense layers against flax.linen's: same parameters, outputs and gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abaw_jax.models import linear

INIT = nn.initializers.xavier_uniform()


@pytest.fixture(autouse=True, params=["cpu", None], ids=["cpu-kernels", "accelerator-path"])
def traced_for(request):
    """Every test runs with the CPU-tuned dense layer and with the plain product GPUs trace."""
    from abaw_jax.models import kernels
    with kernels.platform(request.param):
        yield request.param


@pytest.mark.parametrize("ours,theirs,x_shape", [
    (linear.Dense(24, kernel_init=INIT, bias_init=nn.initializers.normal(0.1)),
     nn.Dense(24, kernel_init=INIT, bias_init=nn.initializers.normal(0.1)), (3, 5, 16)),
    (linear.DenseGeneral((4, 6), kernel_init=INIT, bias_init=nn.initializers.normal(0.1)),
     nn.DenseGeneral((4, 6), kernel_init=INIT, bias_init=nn.initializers.normal(0.1)), (2, 7, 16)),
    (linear.DenseGeneral(16, axis=(-2, -1), kernel_init=INIT),
     nn.DenseGeneral(16, axis=(-2, -1), kernel_init=INIT), (2, 7, 4, 6)),
])
def test_matches_flax_parameters_outputs_and_gradients(ours, theirs, x_shape):
    x = jax.random.normal(jax.random.key(0), x_shape)
    p_ours = ours.init(jax.random.key(1), x)["params"]
    p_theirs = theirs.init(jax.random.key(1), x)["params"]
    # Same names, shapes and draws (flax initialises DenseGeneral's flattened kernel and bias).
    assert jax.tree.structure(p_ours) == jax.tree.structure(p_theirs)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    cot = jax.random.normal(jax.random.key(2), theirs.apply({"params": p_theirs}, x).shape)

    def loss(module):
        return lambda p, x: jnp.sum(cot * module.apply({"params": p}, x))

    np.testing.assert_allclose(ours.apply({"params": p_ours}, x),
                               theirs.apply({"params": p_theirs}, x), rtol=1e-6, atol=1e-6)
    g_ours = jax.grad(loss(ours), argnums=(0, 1))(p_ours, x)
    g_theirs = jax.grad(loss(theirs), argnums=(0, 1))(p_theirs, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_matmul_gradients_match_float64_reference():
    rng = np.random.default_rng(0)
    x, w, g = rng.normal(size=(6, 5, 8)), rng.normal(size=(8, 3)), rng.normal(size=(6, 5, 3))
    _, vjp = jax.vjp(linear.matmul, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    dx, dw = vjp(jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(np.asarray(dx), g @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), np.einsum("abk,abn->kn", x, g), rtol=1e-5,
                               atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters():
    layer = linear.Dense(8, dtype=jnp.bfloat16)
    x = jnp.ones((2, 4))
    params = layer.init(jax.random.key(0), x)["params"]
    assert params["kernel"].dtype == jnp.float32
    assert layer.apply({"params": params}, x).dtype == jnp.bfloat16
    grads = jax.grad(lambda p: layer.apply({"params": p}, x).astype(jnp.float32).sum())(params)
    assert grads["kernel"].dtype == jnp.float32


def test_rejects_non_trailing_axes():
    with pytest.raises(ValueError, match="trailing axes"):
        linear.DenseGeneral(4, axis=0).init(jax.random.key(0), jnp.ones((3, 5)))
