"""Content digests of a train state: recorded beside each checkpoint, checked at restore.

Each array's bits are read as 32-bit words laid out as a matrix W [R, C] (the last axis is C;
16- and 8-bit types widened, 64-bit types split in two along it, scalars and vectors one row).
With all sums modulo 2^32 and odd multipliers m_c = (c * 0x9E3779B1) | 1 and
m'_r = ((r + 1) * 0x85EBCA6B) | 1, the digest is the pair

    a = sum_c m_c * (sum_r W[r, c]),    b = sum_r m'_r * (sum_c W[r, c])

A change to one word changes `a` (an odd multiplier is invertible modulo 2^32, so a nonzero
difference stays nonzero); changes to several words go unseen with a chance of about 2^-32 or
less. This is not a cryptographic hash (it guards against damaged bytes, not an adversary); in
exchange it costs two vectorised integer reductions per array, one pass over the state's
memory. Integer sums modulo 2^32 do not depend on their order, so every way of computing them
gives the same digest: where the arrays live on the host (the CPU backend) NumPy reads them in
place; on an accelerator one jitted reduction runs where they are and 16 hex digits per array
come back. (XLA's CPU backend bitcasts floats to integers through a slow copy, about 8 times the
cost of the reductions themselves, hence NumPy there.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "abaw_jax.digest/2"
_M1 = np.uint32(0x9E3779B1)   # odd multipliers (golden-ratio and MurmurHash3 constants)
_M2 = np.uint32(0x85EBCA6B)


def _word_dtype(itemsize: int):
    return {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[itemsize]


def _matrix_np(x: np.ndarray) -> np.ndarray:
    """The words of a host array as a [R, C] uint32 matrix (a view where no widening is needed)."""
    if x.dtype == np.bool_:
        x = x.view(np.uint8)
    x = np.ascontiguousarray(x)
    w = x.view(_word_dtype(x.dtype.itemsize)) if x.ndim else x.reshape(1).view(
        _word_dtype(x.dtype.itemsize))
    w = w.reshape(1, -1) if w.ndim <= 1 else w.reshape(-1, w.shape[-1])
    return w if w.dtype == np.uint32 else w.astype(np.uint32)


def _matrix_jnp(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    w = jax.lax.bitcast_convert_type(x, jnp.dtype(_word_dtype(size)))   # 8 bytes: [..., 2]
    if size == 8:
        w = w.reshape(*x.shape[:-1], -1) if x.ndim else w.reshape(-1)
    w = w.reshape(1, -1) if w.ndim <= 1 else w.reshape(-1, w.shape[-1])
    return w.astype(jnp.uint32)


def _combine(col, row, xp):
    m1 = (xp.arange(col.shape[0], dtype=xp.uint32) * _M1) | np.uint32(1)
    m2 = ((xp.arange(row.shape[0], dtype=xp.uint32) + np.uint32(1)) * _M2) | np.uint32(1)
    return xp.sum(col * m1, dtype=xp.uint32), xp.sum(row * m2, dtype=xp.uint32)


def _digest_np(x: np.ndarray) -> tuple[int, int]:
    w = _matrix_np(x)
    a, b = _combine(w.sum(axis=0, dtype=np.uint32), w.sum(axis=1, dtype=np.uint32), np)
    return int(a), int(b)


@jax.jit
def _digest_jnp(leaves: list) -> jax.Array:
    out = []
    for x in leaves:
        w = _matrix_jnp(x)
        a, b = _combine(jnp.sum(w, axis=0, dtype=jnp.uint32), jnp.sum(w, axis=1, dtype=jnp.uint32),
                        jnp)
        out.append(jnp.stack([a, b]))
    return jnp.stack(out) if out else jnp.zeros((0, 2), jnp.uint32)


def _on_host(x: Any) -> np.ndarray | None:
    """The array's host memory when it is already there (CPU backend, one full copy per
    device), else None."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np.asarray(x)
    if not isinstance(x, jax.Array) or jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return None
    if not x.is_fully_replicated or any(d.platform != "cpu" for d in x.sharding.device_set):
        return None
    return np.asarray(x.addressable_shards[0].data)


def path_name(path: tuple) -> str:
    """`opt_state/0/mu/...`: a leaf's path by its keys alone, the same whether a checkpoint is
    restored onto its train state's types (tuples, named tuples) or without a target (dicts)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def digest(tree: Any, *, host: bool | None = None) -> dict:
    """{"format", "arrays": {path: "<16 hex digits>"}} of every array of `tree`. `host` forces
    NumPy (True) or the jitted reduction (False); by default each array is digested where it
    lives (module docstring). Blocks until done."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = [path_name(k) for k, _ in leaves]
    sums: dict[int, tuple[int, int]] = {}
    on_device = []
    for i, (_, v) in enumerate(leaves):
        if jnp.issubdtype(jnp.result_type(v), jax.dtypes.prng_key):
            v = jax.random.key_data(v)
        h = None if host is False else _on_host(v)
        if h is None and host:
            h = np.asarray(jax.device_get(v))
        if h is not None:
            sums[i] = _digest_np(h)
        else:
            on_device.append((i, v))
    if on_device:
        got = np.asarray(jax.device_get(_digest_jnp([jnp.asarray(v) for _, v in on_device])))
        sums.update({i: (int(s[0]), int(s[1])) for (i, _), s in zip(on_device, got)})
    return {"format": FORMAT,
            "arrays": {n: f"{sums[i][0]:08x}{sums[i][1]:08x}" for i, n in enumerate(names)}}


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
