"""Scaled dot-product attention for every model of the package, with a choice of kernel.

All attention in abaw_jax (the ViT and MAE encoders, the temporal Transformers of systems A, B
and C) goes through :func:`dot_product_attention`, which takes ``[B, T, N, H]`` queries, keys and
values like ``jax.nn.dot_product_attention`` and dispatches on ``implementation``:

``"default"``  ``"einsum"`` when traced for CPU devices (`kernels`); elsewhere ``jax.nn.dot_product_attention`` with no
               implementation named (XLA in jax 0.10, which fuses attention well on GPU/TPU).
``"einsum"``   two einsums in head-major ``[B, N, T, H]`` layout, softmax normalisation applied
               to the ``[T, H]`` output instead of the ``[T, S]`` weights.
``"xla"``      ``jax.nn.dot_product_attention(implementation="xla")``.
``"cudnn"``    ``jax.nn.dot_product_attention(implementation="cudnn")``: cuDNN flash attention
               (GPU only, bfloat16/float16 inputs, head dim a multiple of 8).

Why ``"einsum"`` on CPU: ``jax.nn``'s XLA path contracts ``BTNH,BSNH->BNTS`` and
``BNTS,BSNH->BTNH``; XLA:CPU lowers those with transposes on both sides of batched matrix
products and a separate normalisation pass over the ``[B, N, T, S]`` weights. Asking for the
head-major layout up front lets XLA fold the transposes into the q/k/v projections, and dividing
the ``[B, N, T, H]`` product by the row sums replaces a pass over ``T x S`` values by one over
``T x H``. On the 2-core CPU the ViT-B/16 forward pass runs 1.21x faster (batch 16) than with
the ``"xla"`` path, and the training steps of systems A, B and C 1.09x to 1.26x faster
(`scripts/benchmark.py --attention-impl`, docs/performance.md). The result equals softmax
attention up to float rounding (tests compare all implementations).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from abaw_jax.models import kernels

IMPLEMENTATIONS = ("default", "einsum", "xla", "cudnn")


def resolve(implementation: str | None) -> str:
    """The kernel that `implementation` ("default" or None included) runs on the platform the
    function is traced for (`kernels.platform`)."""
    implementation = implementation or "default"
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention_impl must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "default":
        return "einsum" if kernels.cpu_tuned() else "jax"
    return implementation


def dropout_keep(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """The boolean keep mask of attention-weight dropout, ``[B, N, T, S]``: each weight kept
    with probability ``1 - rate`` (what `einsum_attention` draws from ``rng``)."""
    return jax.random.bernoulli(rng, 1.0 - rate, shape)


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     mask: jax.Array | None = None, *, dropout_rate: float = 0.0,
                     dropout_rng: jax.Array | None = None) -> jax.Array:
    """Softmax attention ``[B, T, N, H]`` in head-major layout with late normalisation.

    ``mask`` is boolean, broadcastable to ``[B, N, T, S]``, True where a query may attend to a
    key. Scores and their exponentials are float32 whatever the input dtype; a query row whose
    keys are all masked attends uniformly to all of them (finite, unlike a softmax over nothing).

    With ``dropout_rate`` > 0 and a ``dropout_rng``, each normalised weight is zeroed with
    probability ``dropout_rate`` and the kept ones are scaled by ``1 / (1 - dropout_rate)``, as
    torch's attention dropout does (keep mask: `dropout_keep`). Because normalisation comes last,
    the mask is applied to the unnormalised weights in the product with ``v`` while the row sums
    stay those of all weights: the same value as dropping the normalised weights.
    """
    scale = q.shape[-1] ** -0.5
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))          # [B, N, T|S, H]
    scores = jnp.einsum("bnth,bnsh->bnts", q * jnp.asarray(scale, q.dtype), k,
                        preferred_element_type=jnp.float32)
    if mask is not None:
        # Masked scores underflow to exp(-huge) = 0; in a fully masked row they are all equal,
        # so after the shift below every weight there is exp(0) = 1.
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    # Subtracting the row maximum only guards exp against overflow; it cancels in the ratio.
    scores = scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    weights = jnp.exp(scores)
    row_sums = jnp.sum(weights, axis=-1, keepdims=True)
    if dropout_rate > 0.0 and dropout_rng is not None:
        if not dropout_rate < 1.0:
            raise ValueError(f"attention dropout rate must be in [0, 1), got {dropout_rate!r}")
        keep = dropout_keep(dropout_rng, dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum("bnts,bnsh->bnth", weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    out = out / row_sums
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None, *,
                          implementation: str | None = "default", dropout_rate: float = 0.0,
                          dropout_rng: jax.Array | None = None) -> jax.Array:
    """Attention over ``[B, T, N, H]`` inputs with the kernel `implementation` names.

    Attention-weight dropout (``dropout_rate`` > 0 and a ``dropout_rng``) always runs the
    ``"einsum"`` kernel, the only one that can drop weights (see the module docstring).
    """
    kernel = resolve(implementation)
    if dropout_rate > 0.0 and dropout_rng is not None:
        return einsum_attention(q, k, v, mask, dropout_rate=dropout_rate,
                                dropout_rng=dropout_rng)
    if kernel == "einsum":
        return einsum_attention(q, k, v, mask)
    if kernel == "cudnn" and mask is not None:
        # cuDNN takes the mask as a bias and wants the full [B, N|1, T, S] shape.
        batch, length, keys = q.shape[0], q.shape[1], k.shape[1]
        mask = jnp.broadcast_to(mask, (batch, mask.shape[1], length, keys))
    return jax.nn.dot_product_attention(q, k, v, mask=mask,
                                        implementation=None if kernel == "jax" else kernel)
