"""Which kernels the models trace: the CPU-tuned ones or the accelerator path.

Two layers have a CPU-tuned form: the attention kernel (head-major einsums with late
normalisation, `attention.einsum_attention`) and the dense layers' weight gradient
(`linear.matmul`). They are chosen from the platform of the devices a computation runs on,
never from `jax.default_backend()`: a function jitted for a mesh of CPU devices traces the CPU
kernels, one for GPUs or TPUs (or traced with no platform named) traces `jnp.matmul` and
`jax.nn.dot_product_attention`. `sharding.jit(fn, mesh)` names the mesh's platform while `fn` is
traced; `platform("cpu")` does it by hand (tests, notebooks).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "abaw_jax_kernel_platform", default=None)


@contextlib.contextmanager
def platform(name: str | None) -> Iterator[None]:
    """Traces inside this context pick the kernels of platform `name` ("cpu", "gpu", "tpu")."""
    token = _PLATFORM.set(name)
    try:
        yield
    finally:
        _PLATFORM.reset(token)


def current() -> str | None:
    """The platform named by the innermost `platform` context, or None."""
    return _PLATFORM.get()


def cpu_tuned() -> bool:
    """Whether the function being traced will run on CPU devices."""
    return _PLATFORM.get() == "cpu"


def traced_on(fn: Callable, name: str | None) -> Callable:
    """`fn`, whose body (run by jax.jit only while tracing) sees platform `name`."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with platform(name):
            return fn(*args, **kwargs)
    return wrapped
