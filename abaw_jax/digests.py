"""Content digests of a train state: recorded beside each checkpoint, checked at restore.

Each array's bits are read as 32-bit words w_0 .. w_{n-1} (16- and 8-bit types widened, 64-bit
types split in two) and summed with a different odd multiplier per position, modulo 2^32:

    a = sum_i w_i * m_i,   b = sum_i (w_i xor (w_i >> 16)) * m'_i,   m_i, m'_i odd

Any change to one word changes `a` (an odd multiplier is invertible modulo 2^32, so a nonzero
difference stays nonzero); a change to several words goes unseen with a chance of about 2^-64.
This is not a cryptographic hash (it guards against damaged bytes, not against an adversary); in
exchange it is one fused multiply-add reduction per array, run by XLA on the device that holds
the state, and only 16 hex digits per array come back to the host.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "abaw_jax.digest/1"
_M1 = np.uint32(0x9E3779B1)   # odd multipliers (golden-ratio and MurmurHash3 constants)
_M2 = np.uint32(0x85EBCA6B)


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as a flat uint32 vector."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size == 4:
        w = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif size == 2:
        w = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif size == 1:
        w = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    elif size == 8:
        w = jax.lax.bitcast_convert_type(x, jnp.uint32)   # a trailing axis of 2 words
    else:
        raise TypeError(f"no digest for dtype {x.dtype}")
    return w.reshape(-1)


def _leaf_digest(x: jax.Array) -> jax.Array:
    w = _words(x)
    i = jnp.arange(w.shape[0], dtype=jnp.uint32)
    m1 = (i * _M1) | np.uint32(1)
    m2 = ((i + np.uint32(1)) * _M2) | np.uint32(1)
    a = jnp.sum(w * m1, dtype=jnp.uint32)
    b = jnp.sum((w ^ (w >> np.uint32(16))) * m2, dtype=jnp.uint32)
    return jnp.stack([a, b])


@functools.partial(jax.jit)
def _tree_digest(leaves: list) -> jax.Array:
    if not leaves:
        return jnp.zeros((0, 2), jnp.uint32)
    return jnp.stack([_leaf_digest(x) for x in leaves])


def digest(tree: Any) -> dict:
    """{"format", "arrays": {path: "<16 hex digits>"}} of every array of `tree` (computed by one
    jitted reduction where the arrays live; blocks until it is done)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = [jax.tree_util.keystr(k) for k, _ in leaves]
    values = [jnp.asarray(v) for _, v in leaves]
    sums = np.asarray(jax.device_get(_tree_digest(values)))
    return {"format": FORMAT,
            "arrays": {n: f"{int(s[0]):08x}{int(s[1]):08x}" for n, s in zip(names, sums)}}


class DigestMismatch(ValueError):
    """A restored state differs from the digest recorded at its save."""


def verify(tree: Any, recorded: dict) -> None:
    """Raises DigestMismatch naming the arrays of `tree` whose content differs from `recorded`."""
    if not isinstance(recorded, dict) or recorded.get("format") != FORMAT:
        raise DigestMismatch(f"unreadable content digest ({str(recorded)[:80]})")
    want = recorded.get("arrays", {})
    got = digest(tree)["arrays"]
    bad = sorted(k for k in got if want.get(k) != got[k])
    if bad:
        raise DigestMismatch(f"content digest mismatch in {len(bad)} of {len(got)} arrays, "
                             f"e.g. {bad[:2]}: the checkpoint's bytes were altered after its save")
