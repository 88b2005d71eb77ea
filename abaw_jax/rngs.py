"""The random keys of a run: one for the initial parameters, one for the per-step randomness."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def make_rngs(seed: int, impl: str = "threefry2x32") -> tuple[jax.Array, jax.Array]:
    """(init_rng, train_rng) of a run: parameters come from a threefry key of `seed` whatever
    `impl` is; the per-step randomness (dropout, masking) from a key of PRNG `impl`.

    On the 2-core CPU, "rbg" makes the small train steps of systems A, B and C 4 to 16% faster
    than threefry (docs/performance.md): threefry's bits are computed by XLA loops,
    RngBitGenerator's by one op.
    """
    init_rng, train_rng = jax.random.split(jax.random.key(seed))
    if impl != "threefry2x32":
        train_seed = int(jax.random.bits(train_rng, (), jnp.uint32))
        train_rng = jax.random.key(train_seed, impl=impl)
    return init_rng, train_rng
