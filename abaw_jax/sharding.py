"""Device mesh, shardings and multi-host setup.

Data parallelism is `jax.jit` over one `Mesh` with a 'data' axis: the batch is split over 'data'
(`P('data')`) and the train state is replicated. The same code runs on one CPU, on 8 GPUs and on
a TPU pod; with several hosts each process feeds only its own rows of the global batch.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Variables set by launchers that start one process per host (SLURM, Open MPI, TPU pods).
_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def initialize_distributed(coordinator: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
    """Calls `jax.distributed.initialize` when this is one process of a multi-process job.

    Explicit arguments win; otherwise a cluster launcher is detected from its environment
    (SLURM, Open MPI, or a multi-host TPU slice) and JAX finds the coordinator itself. A single
    process on one machine does nothing.
    """
    if coordinator:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    elif any(int(os.environ.get(k, "1") or 1) > 1 for k in _CLUSTER_ENV) or (
            len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1):
        jax.distributed.initialize()
    else:
        return
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(num_data: int = -1) -> Mesh:
    """A 1-D mesh over `num_data` devices (-1: all) on the 'data' axis."""
    devices = jax.devices()
    if num_data != -1:
        if num_data > len(devices):
            raise ValueError(f"config.mesh_data={num_data} but only {len(devices)} devices exist")
        devices = devices[:num_data]
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of values held whole on every device (the train state)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: the leading axis split over 'data'."""
    return NamedSharding(mesh, P("data"))


def to_global(batch: dict, mesh: Mesh) -> dict:
    """Turns this process's rows of a batch into global jax.Arrays sharded over 'data'."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


class BatchSizeError(ValueError):
    """A batch size that does not split over the devices and processes (names the key)."""


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """The global batch must split evenly over devices and processes."""
    n = mesh.devices.size
    if batch_size % n or batch_size % jax.process_count():
        raise BatchSizeError(f"config.{what}={batch_size} must be divisible by the {n} devices of the "
                         f"mesh and the {jax.process_count()} processes")


def platform(mesh: Mesh | None) -> str:
    """The platform of the mesh's devices ("cpu", "gpu", "tpu"); the default backend's without one."""
    if mesh is None:
        return jax.default_backend()
    return mesh.devices.flat[0].platform


def compute_dtype(name: str, mesh: Mesh | None = None) -> jnp.dtype:
    """'auto' is bfloat16 on GPU/TPU and float32 on CPU, where bfloat16 is slow and inexact."""
    if name == "auto":
        return jnp.float32 if platform(mesh) == "cpu" else jnp.bfloat16
    return jnp.dtype(name)


def jit(fn, mesh: Mesh | None, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)`, tracing `fn` with the kernels of the mesh's platform.

    The CPU-tuned kernels (models.kernels) are picked when the mesh's devices are CPUs, the
    accelerator path otherwise; `mesh` None means the default backend's devices.
    """
    from abaw_jax.models import kernels
    return jax.jit(kernels.traced_on(fn, platform(mesh)), **jit_kwargs)
