"""Weight-file I/O: ``.safetensors`` and ``.npz`` readers, JSON side files, folder resolution.

A weights path is a single file (``.safetensors``, ``.npz`` or a ``*.index.json`` shard index) or
a folder as ``save_pretrained`` writes it (``model.safetensors``, or an index and its shards, or
a single ``.safetensors`` / ``.npz``). Every error is a :class:`WeightsError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model; the message names the file."""


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays (read-only, memory-mapped) and string metadata of one ``.safetensors`` file.

    Read by hand rather than with ``safetensors.numpy``, which cannot return bfloat16 arrays.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
        header_len = int.from_bytes(head, "little")
        if header_len > size - 8:
            raise WeightsError(
                f"{path}: not a safetensors file (header size {header_len} exceeds the file)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - header_len
    data = (np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
            if data_len else np.zeros((0,), np.uint8))
    arrays = {}
    for key, spec in header.items():
        try:
            dtype = _SAFETENSORS_DTYPES[spec["dtype"]]
            shape = tuple(int(d) for d in spec["shape"])
            begin, end = (int(o) for o in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: tensor {key!r} has a bad header entry {spec!r} ({e!r})") from None
        if not 0 <= begin <= end <= data_len or end - begin != dtype.itemsize * math.prod(shape):
            raise WeightsError(
                f"{path}: tensor {key!r} ({spec['dtype']} {list(shape)}) has data offsets "
                f"{[begin, end]} that do not fit its shape or the file ({data_len} data bytes)")
        arrays[key] = data[begin:end].view(dtype).reshape(shape)
    return arrays, dict(metadata)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise WeightsError(f"{path}: not a readable .npz file ({e})") from None


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when there is no such file (side files are optional)."""
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: bad JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return value


def resolve_files(path: str | os.PathLike) -> tuple[list[Path], Path]:
    """Weight files to read for ``path`` (a file or a save_pretrained directory) and their folder."""
    path = Path(path)
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = (read_json(index) or {}).get("weight_map")
            if not isinstance(weight_map, dict):
                raise WeightsError(f"{index}: no 'weight_map' object")
            return [path / name for name in dict.fromkeys(weight_map.values())], path
        if (path / "model.safetensors").is_file():
            return [path / "model.safetensors"], path
        found = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise WeightsError(
                f"{path}: expected one weights file (model.safetensors, an index, or a single "
                f".safetensors / .npz), found {[p.name for p in found]}")
        return found, path
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file or directory")
    if path.name.endswith(".index.json"):
        weight_map = (read_json(path) or {}).get("weight_map")
        if not isinstance(weight_map, dict):
            raise WeightsError(f"{path}: no 'weight_map' object")
        return [path.parent / name for name in dict.fromkeys(weight_map.values())], path.parent
    return [path], path.parent


def read_arrays(files: list[Path]) -> dict[str, np.ndarray]:
    """The arrays of all ``files`` (shards of one checkpoint) in one dict."""
    arrays: dict[str, np.ndarray] = {}
    for file in files:
        if not file.is_file():
            raise WeightsError(f"{file}: weights shard is missing")
        part = read_npz(file) if file.suffix == ".npz" else read_safetensors(file)[0]
        arrays.update(part)
    return arrays
