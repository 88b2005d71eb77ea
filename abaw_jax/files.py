"""Atomic file output: readers see the old file or the complete new one, never a partial write.

Every file a run leaves behind (configs, metrics, submissions, per-frame CSVs, store indexes) is
written through `write_atomic` or `atomic_open`, so a process killed mid-write (or a machine that
loses power) never leaves a truncated file that a later command would read as complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
import threading
from collections.abc import Iterator
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Opens a temporary file beside `path`; on a clean exit it is synced and renamed to `path`.

    On an exception the temporary file is removed and `path` keeps its previous content.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; the finished file gets a plain open()'s mode.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask: read from /proc on Linux; elsewhere by setting it and putting it
    back, under a lock (other threads creating files meanwhile would get 0o077)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: str | bytes) -> pathlib.Path:
    """Writes `data` (text or bytes) to `path` atomically; returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return pathlib.Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> pathlib.Path:
    """`obj` as JSON (numpy scalars and arrays as plain values), written atomically."""
    return write_atomic(path, json.dumps(obj, indent=indent, default=_plain) + "\n")


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")
