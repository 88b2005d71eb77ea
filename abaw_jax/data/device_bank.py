"""On-device feature bank: every frame of a split held on the devices, windows gathered in the step.

The temporal models consume frames faster than a host pipeline can copy them, so when the
features fit in device memory they are uploaded once: per feature set one array
[total_frames + seq_len, D] in the store's dtype, replicated over the mesh, plus the per-frame
`present` mask and each video's first row. grain then delivers only window indices, labels and
masks (`pipeline.train_dataset(..., read_features=False)`), and the jitted step cuts the windows
out of the bank with one gather.

Rows follow the host pipeline exactly: video i occupies rows [offset_i, offset_i + T_i) in the
order of the video list; frames without a face image (in the videos or in any store), and frames
past a store's last row, hold zeros and are not present; `seq_len` zero rows at the end keep every
window slice inside the array. Gathered windows are converted to float32 and zeroed where a frame
is not present or is padding, as the host pipeline does, so both paths give bit-identical batches.

    bank = device_bank.maybe_build(config.data.device_bank, videos, store, seq_len, mesh)
    step = bank.jit_step(training.make_temporal_step(...), mesh)  # (state, batch) -> (state, stats)
    batch = sharding.to_global(bank.batch_keys(next(index_iter)), mesh)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from abaw_jax import sharding
from abaw_jax.data.features import FeatureSets, FeatureStore
from abaw_jax.data.pipeline import WindowReader

MODES = ("auto", "on", "off")
# Share of the smallest device's memory a bank may take under "auto": the rest is for the
# train state, activations and XLA's scratch space.
DEVICE_MEMORY_FRACTION = 0.4
# Devices that report no memory (CPU): a fixed budget, since the bank is a second copy in RAM.
CPU_BUDGET_BYTES = 2 << 30
# Keys a training batch carries to the devices when the features come from the bank.
BATCH_KEYS = ("labels", "valid", "frame_mask", "video", "start")


class BankError(ValueError):
    """The bank cannot be used as configured (the message names config.data.device_bank)."""


def _feature_sources(features: FeatureStore | FeatureSets) -> list[tuple[str, FeatureStore]]:
    """(batch key, store) per feature set, keyed as the host pipeline keys them."""
    if isinstance(features, FeatureSets):
        return [(f"features/{name}", s) for name, s in features.stores.items()]
    return [("features", features)]


def bank_nbytes(videos: Sequence[Any], features: FeatureStore | FeatureSets, seq_len: int) -> int:
    """Device bytes of a bank of `videos` (features, present mask and offsets), without reading."""
    rows = sum(int(v.num_frames) for v in videos) + seq_len
    row_bytes = sum(s.dim * s.dtype.itemsize for _, s in _feature_sources(features))
    return rows * (row_bytes + 1) + 4 * len(videos)


def device_memory(devices: Sequence[Any] | None = None) -> int | None:
    """The memory of the smallest of `devices` (default: local ones), None when none reports it."""
    limits = []
    for device in devices if devices is not None else jax.local_devices():
        try:
            stats = device.memory_stats()
        except Exception:  # Some backends raise instead of returning None.
            stats = None
        if stats and stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def memory_budget(devices: Sequence[Any] | None = None) -> int:
    """Bytes a bank may take under "auto": a fraction of the smallest device's memory.

    Devices without memory statistics (CPU) get `CPU_BUDGET_BYTES`.
    """
    memory = device_memory(devices)
    return CPU_BUDGET_BYTES if memory is None else int(DEVICE_MEMORY_FRACTION * memory)


def use_bank(mode: str, nbytes: int, devices: Sequence[Any] | None = None) -> bool:
    """Decides whether to bank `nbytes`: "on" always, "off" never, "auto" when within budget."""
    if mode not in MODES:
        raise BankError(f"config.data.device_bank = {mode!r}: must be one of {MODES}")
    if mode == "auto":
        return nbytes <= memory_budget(devices)
    return mode == "on"


@dataclasses.dataclass(frozen=True)
class DeviceBank:
    """The uploaded bank: `arrays` is the pytree the jitted step takes as an argument.

    arrays = {"offsets": int32 [V], "present": bool [N + seq_len],
              "features": {batch key: [N + seq_len, D] in the store dtype}}
    """

    arrays: dict
    seq_len: int
    nbytes: int

    @staticmethod
    def batch_keys(batch: dict) -> dict:
        """The keys of a pipeline batch that go to the devices when features come from the bank."""
        return {k: batch[k] for k in BATCH_KEYS}

    def jit_step(self, train_step: Callable, mesh: Mesh) -> Callable:
        """Jits `train_step(state, batch)` to read features from the bank; returns (state, batch) -> ...

        The bank is an argument (not a closed-over constant, which XLA would copy into the
        executable) and is never donated; the state is donated as in the host path.
        """
        repl, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        jitted = sharding.jit(with_bank(train_step), mesh, in_shardings=(repl, rows, repl),
                              out_shardings=(repl, repl), donate_argnums=(0,))
        arrays = self.arrays
        return lambda state, batch: jitted(state, batch, arrays)


def host_arrays(videos: Sequence[Any], features: FeatureStore | FeatureSets, seq_len: int,
                length_tolerance: int = 0) -> dict:
    """The bank as numpy arrays (what `build` uploads), read from the memory-mapped stores."""
    # The host pipeline's reader does the checks (lengths, missing videos, presence across sets),
    # so both paths accept and reject exactly the same inputs.
    reader = WindowReader(videos, features, seq_len, length_tolerance)
    total = int(reader.lengths.sum())
    present = np.zeros(total + seq_len, bool)
    present[:total] = reader.present
    absent = np.flatnonzero(~present[:total])
    banked = {}
    for (key, dim, views, usable), (_, store) in zip(reader.sources, _feature_sources(features)):
        rows = np.zeros((total + seq_len, dim), store.dtype)
        for base, view, n in zip(reader.base.tolist(), views, usable.tolist()):
            rows[base : base + n] = view[:n]
        rows[absent] = 0
        banked[key] = rows
    return {"offsets": reader.base.astype(np.int32), "present": present, "features": banked}


def build(videos: Sequence[Any], features: FeatureStore | FeatureSets, seq_len: int, mesh: Mesh,
          length_tolerance: int = 0) -> DeviceBank:
    """Reads every frame of `videos` and places the bank, replicated, on the devices of `mesh`."""
    host = host_arrays(videos, features, seq_len, length_tolerance)
    if host["present"].shape[0] - seq_len >= 2**31:
        raise BankError(f"config.data.device_bank: {host['present'].shape[0]} frames exceed "
                        f"int32 row indices; set it to 'off'")
    repl = NamedSharding(mesh, P())
    # Every process holds the whole bank, so each can fill its own devices' replicas.
    arrays = jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, repl, lambda index: x[index]), host)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(host))
    return DeviceBank(arrays=arrays, seq_len=seq_len, nbytes=nbytes)


def maybe_build(mode: str, videos: Sequence[Any], features: FeatureStore | FeatureSets,
                seq_len: int, mesh: Mesh, length_tolerance: int = 0) -> DeviceBank | None:
    """The bank of `videos` when `mode` ("auto" | "on" | "off") asks for one, else None."""
    nbytes = bank_nbytes(videos, features, seq_len)
    devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    if not use_bank(mode, nbytes, devices):
        logging.info("device bank off (%s, %.2f GiB; budget %.2f GiB)", mode, nbytes / 2**30,
                     memory_budget(devices) / 2**30)
        return None
    memory = device_memory(devices)
    if memory is not None and nbytes > memory:
        raise BankError(f"config.data.device_bank = {mode!r}: the bank needs {nbytes / 2**30:.2f} "
                        f"GiB, more than a device holds ({memory / 2**30:.2f} GiB); "
                        f"use 'auto' or 'off'")
    logging.info("device bank on: %.2f GiB of features on each device", nbytes / 2**30)
    return build(videos, features, seq_len, mesh, length_tolerance)


def gather(arrays: dict, video: jax.Array, start: jax.Array,
           frame_mask: jax.Array) -> dict[str, jax.Array]:
    """Windows of the bank: the "features" (or "features/<set>") float32 [B, L, D] and "present".

    `video`, `start` [B] and `frame_mask` [B, L] come from the index pipeline; features are zero
    where a frame is not present or is padding, exactly as the host pipeline fills them.
    """
    length = frame_mask.shape[1]
    first = arrays["offsets"][video] + start.astype(jnp.int32)

    def windows(x: jax.Array) -> jax.Array:
        # One contiguous slice per window: XLA turns this into a single gather of [L, D] blocks.
        return jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(x, s, length, axis=0))(first)

    present = windows(arrays["present"]) & frame_mask
    out = {"present": present}
    for key, rows in arrays["features"].items():
        out[key] = jnp.where(present[..., None], windows(rows).astype(jnp.float32), 0.0)
    return out


def with_bank(train_step: Callable) -> Callable:
    """Turns a `(state, batch)` step into `(state, index_batch, bank_arrays)` that gathers first."""

    def step(state, batch, arrays):
        gathered = gather(arrays, batch["video"], batch["start"], batch["frame_mask"])
        return train_step(state, dict(batch, **gathered))

    return step
