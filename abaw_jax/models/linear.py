"""Dense layers of the Transformer blocks, with a weight gradient that XLA:CPU computes well.

``Dense`` and ``DenseGeneral`` take the arguments of their flax.linen namesakes that the package
uses and create the same parameters (names, shapes, initialisation of the flattened kernel), so
checkpoints and weight loaders see no difference. What differs is the backward pass on CPU.

For ``y = x @ W`` with ``x`` [M, K] (M = batch x tokens), the weight gradient is
``dW = x^T @ dy``, a product over M, the major dimension of both operands. XLA:CPU's GEMM wants
the contracting dimension minor, so its layout assignment transposes one operand, and with
autodiff it picks ``dy``: the transposed copy is then fused into the loop that produces ``dy``
(in a pre-norm block, the LayerNorm backward plus the residual sum), which becomes a loop over
four or more [M, width] arrays read with a stride of one row per element. In the MAE train step
at ViT-B/16 size those fusions were 31% of the step's op time. Here the forward pass keeps
``x^T`` (one plain transpose of an array that is already materialised) for the backward pass,
which computes ``dW = x^T @ dy`` and ``dx = dy @ W^T`` with no transposed copy of ``dy``:
MAE (ViT-B/16, batch 8) 4.49 s -> 2.68 s per step when it was introduced (as a custom VJP);
the custom-JVP form used now supports forward-mode autodiff as well, and on a ViT-S-size MAE
step (batch 32, 112 px) it measured within noise of the custom VJP (1.69-1.84 s against
1.74-1.88 s). Functions traced for GPUs or TPUs use the plain product (cuBLAS and the TPU
compiler handle transposed operands themselves); see `kernels`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from abaw_jax.models import kernels

Initializer = Callable[..., jax.Array]


@jax.custom_jvp
def _matmul_saving_transpose(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


@_matmul_saving_transpose.defjvp
def _matmul_jvp(primals, tangents):
    # x^T is materialised in the forward pass behind an optimisation barrier, so XLA cannot fold
    # the transpose back into the product. Reverse mode transposes the tangent's `x_t^T @ dw`
    # into `x_t @ g`, a product over x_t's minor dimension: no transposed copy of g is made.
    # Written as a custom JVP (not a custom VJP) so that forward-mode autodiff works too.
    x, w = primals
    dx, dw = tangents
    x_t = jax.lax.optimization_barrier(jnp.swapaxes(x, 0, 1))
    return x @ w, dx @ w + jnp.swapaxes(x_t, 0, 1) @ dw


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x [..., K] @ w [K, N]``; traced for CPU devices, with the transposed-input backward pass
    (see above)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    product = _matmul_saving_transpose if kernels.cpu_tuned() else jnp.matmul
    return product(x2, w).reshape(*lead, w.shape[-1])


def _flat_init(init: Initializer, n_in: int):
    """An initializer of a [*in, *out] kernel that draws it as [prod(in), prod(out)], as flax's
    DenseGeneral does, so that fan-in and fan-out are those of the flattened matrix."""

    def wrapped(rng, shape, dtype=jnp.float32):
        flat = (math.prod(shape[:n_in]), math.prod(shape[n_in:]))
        return jnp.reshape(init(rng, flat, dtype), shape)

    return wrapped


class DenseGeneral(nn.Module):
    """``y[..., *features] = x[..., *in] . kernel[*in, *features] + bias``; `axis` must be the
    trailing axes of ``x`` (-1, or (-2, -1) for the attention output projection)."""

    features: int | Sequence[int]
    axis: int | Sequence[int] = -1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        n_in = len(axes)
        if sorted(a % x.ndim for a in axes) != list(range(x.ndim - n_in, x.ndim)):
            raise ValueError(f"DenseGeneral contracts trailing axes only, got axis={self.axis} "
                             f"for an input of rank {x.ndim}")
        in_shape = x.shape[x.ndim - n_in:]
        kernel = self.param("kernel", _flat_init(self.kernel_init, n_in), in_shape + features,
                            self.param_dtype)
        dtype = (jnp.promote_types(x.dtype, self.param_dtype) if self.dtype is None
                 else jnp.dtype(self.dtype))
        lead = x.shape[: x.ndim - n_in]
        y = matmul(x.astype(dtype).reshape(*lead, math.prod(in_shape)),
                   kernel.astype(dtype).reshape(math.prod(in_shape), math.prod(features)))
        y = y.reshape(*lead, *features)
        if self.use_bias:
            flat_bias = lambda rng, shape, dtype: jnp.reshape(  # noqa: E731
                self.bias_init(rng, (math.prod(shape),), dtype), shape)
            bias = self.param("bias", flat_bias, features, self.param_dtype)
            y = y + bias.astype(dtype)
        return y


# flax.linen.Dense's case (an int of features over the last axis) creates the same parameters.
Dense = DenseGeneral
