"""Pretrained ViT and ResNet weights from local files, and a jittable image -> feature function.

Formats (detected from the file's keys, never from its name alone):

* ``npz``: original ViT checkpoints (google-research/vision_transformer: ``embedding/kernel``,
  ``cls``, ``Transformer/posembed_input/pos_embedding``,
  ``Transformer/encoderblock_<i>/MultiHeadDotProductAttention_1/query/kernel``, ...), optionally
  under ``opt/target/``; and big_vision's (``params/`` prefix, top-level ``pos_embedding``,
  ``MultiHeadDotProductAttention_0``, unscanned or scanned ``encoderblock``).
* ``timm``: timm ViT state dicts in ``.safetensors`` (``patch_embed.proj.weight``,
  ``blocks.<i>.attn.qkv.weight``, ``cls_token``, ``pos_embed``, ``norm.weight`` or
  ``fc_norm.weight``), with the hub ``config.json`` beside it when there is one.
* ``hf_vit`` / ``hf_vit_mae``: Hugging Face ``ViTModel`` / ``ViTMAEModel`` (or their ``vit.``-prefixed
  task models) saved by ``save_pretrained`` (``embeddings.patch_embeddings.projection.weight``,
  ``encoder.layer.<i>.attention.attention.query.weight``, ...; the in-memory names of
  transformers 5, ``layers.<i>.attention.q_proj.weight``, are read too), single or sharded, with
  ``config.json`` and ``preprocessor_config.json`` read from the same directory.
* ``torch_resnet``: torchvision / timm ResNet state dicts in ``.safetensors``.

Classifier heads, poolers and MAE decoders are skipped and listed in ``info["ignored_keys"]``;
any other key the model has no place for, any key it needs that the file lacks, and any shape
that does not fit raise :class:`WeightsError` naming the keys and the file.

Position embeddings are resampled when the requested ``image_size`` differs from the
checkpoint's, in float64 with exactly PyTorch's ``F.interpolate`` arithmetic, by the method the
checkpoint's own library uses: timm state dicts bicubic with antialiasing (timm's
``checkpoint_filter_fn``), ``.npz`` bilinear without (timm's ``.npz`` loader; big_vision and the
original ViT code also interpolate linearly), Hugging Face bicubic without (``ViTEmbeddings.
interpolate_pos_encoding``). The class-token position is kept as is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from abaw_jax.models import resnet as resnet_lib
from abaw_jax.models import vit as vit_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}

# Keys a feature encoder has no use for: classifier heads, poolers, MAE decoders.
_IGNORED = {
    "timm": (r"^head\.", r"^pre_logits\.", r"^decoder", r"^mask_token$"),
    "hf": (r"^pooler\.", r"^classifier\.", r"^decoder\.", r"^embeddings\.mask_token$"),
    "npz": (r"^head/", r"^pre_logits/"),
    "torch_resnet": (r"num_batches_tracked$",),
}
_TIMM_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
_HEADS_BY_WIDTH = {dims[0]: dims[2] for dims in vit_lib.VARIANT_DIMS.values()}


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model; the message names the file."""


# ---------------------------------------------------------------------------------------------
# File readers.


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


def _read_json(path: Path) -> dict[str, Any] | None:
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


def _resolve(path: str | os.PathLike) -> tuple[list[Path], Path]:
    """Weight files to read for ``path`` (a file or a save_pretrained directory) and their folder."""
    path = Path(path)
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = (_read_json(index) or {}).get("weight_map")
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
        weight_map = (_read_json(path) or {}).get("weight_map")
        if not isinstance(weight_map, dict):
            raise WeightsError(f"{path}: no 'weight_map' object")
        return [path.parent / name for name in dict.fromkeys(weight_map.values())], path.parent
    return [path], path.parent


def _read_arrays(files: list[Path]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for file in files:
        if not file.is_file():
            raise WeightsError(f"{file}: weights shard is missing")
        part = read_npz(file) if file.suffix == ".npz" else read_safetensors(file)[0]
        arrays.update(part)
    return arrays


# ---------------------------------------------------------------------------------------------
# Position-embedding resampling with PyTorch's interpolation arithmetic.


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def resample_matrix(n_in: int, n_out: int, method: str, antialias: bool) -> np.ndarray:
    """``[n_out, n_in]`` float64 weights of 1-D ``F.interpolate(mode=method, align_corners=False)``.

    Without antialias PyTorch clamps indices at the border (bicubic with a = -0.75); with it,
    it uses Pillow's normalised filters (bicubic a = -0.5) widened by the downscale factor.
    """
    if method not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {method!r}")
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    if antialias:
        support = (1.0 if method == "bilinear" else 2.0) * max(scale, 1.0)
        inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(n_out):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            x = (np.arange(lo, hi) - center + 0.5) * inv_scale
            w = np.maximum(1 - np.abs(x), 0.0) if method == "bilinear" else _cubic(x, -0.5)
            weights[i, lo:hi] = w / w.sum()
    elif method == "bilinear":
        for i in range(n_out):
            src = max(scale * (i + 0.5) - 0.5, 0.0)
            i0 = int(src)
            frac = src - i0
            weights[i, i0] += 1 - frac
            weights[i, min(i0 + 1, n_in - 1)] += frac
    else:
        for i in range(n_out):
            src = scale * (i + 0.5) - 0.5
            i0 = math.floor(src)
            t = src - i0
            for k in (-1, 0, 1, 2):
                weights[i, min(max(i0 + k, 0), n_in - 1)] += _cubic(np.float64(t - k), -0.75)
    return weights


def resample_posemb(
    posemb: np.ndarray, new_grid: tuple[int, int], *, num_prefix_tokens: int,
    old_grid: tuple[int, int] | None = None, method: str = "bicubic", antialias: bool = True,
) -> np.ndarray:
    """Resize ``[1, prefix + gh * gw, D]`` position embeddings to ``new_grid``; prefix rows kept."""
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    if old_grid is None:
        side = math.isqrt(grid.shape[1])
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    g = np.asarray(grid, np.float64).reshape(old_grid[0], old_grid[1], -1)
    wh = resample_matrix(old_grid[0], new_grid[0], method, antialias)
    ww = resample_matrix(old_grid[1], new_grid[1], method, antialias)
    g = np.einsum("ih,jw,hwd->ijd", wh, ww, g).reshape(1, -1, g.shape[-1])
    return np.concatenate([np.asarray(prefix, np.float64), g], axis=1).astype(posemb.dtype)


# ---------------------------------------------------------------------------------------------
# Mapping source keys onto the parameter tree.


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One target leaf: read ``source`` (of ``shape``), transform it, store it at ``target``."""

    source: str
    shape: tuple[int, ...]
    target: tuple[str, ...]
    convert: Callable[[np.ndarray], np.ndarray] = lambda a: a
    collection: str = "params"


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _assemble(
    arrays: Mapping[str, np.ndarray], entries: list[_Entry], ignore: Iterable[str],
    where: str,
) -> tuple[dict[str, Any], list[str]]:
    """Variables from ``entries``; raises naming every missing, unexpected and mis-shaped key."""
    needed = list(dict.fromkeys(e.source for e in entries))
    missing = [k for k in needed if k not in arrays]
    shapes = {e.source: e.shape for e in entries}
    wrong = [
        f"{k} {list(arrays[k].shape)} (expected {list(s)})"
        for k, s in shapes.items() if k in arrays and tuple(arrays[k].shape) != tuple(s)]
    used = set(needed)
    patterns = [re.compile(p) for p in ignore]
    extra = [k for k in arrays if k not in used]
    ignored = [k for k in extra if any(p.search(k) for p in patterns)]
    unexpected = [k for k in extra if k not in set(ignored)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_listing(wrong)}")
    if problems:
        raise WeightsError(f"{where}: " + "; ".join(problems))

    variables: dict[str, Any] = {}
    for e in entries:
        value = np.asarray(arrays[e.source]).astype(np.float32)
        node = variables.setdefault(e.collection, {})
        for part in e.target[:-1]:
            node = node.setdefault(part, {})
        node[e.target[-1]] = np.ascontiguousarray(e.convert(value), dtype=np.float32)
    return variables, sorted(ignored)


def _check_tree(module: nn.Module, variables: dict[str, Any], sample: tuple[int, ...], where: str):
    """Compare converted variables with what ``module.init`` creates (a guard on the mappings)."""
    expected = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros(sample, jnp.float32)))
    flat_expected = {
        jax.tree_util.keystr(p): tuple(v.shape)
        for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    flat_got = {
        jax.tree_util.keystr(p): tuple(v.shape)
        for p, v in jax.tree_util.tree_leaves_with_path(variables)}
    bad = sorted(set(flat_expected) ^ set(flat_got)) + [
        f"{k} {list(flat_got[k])} (model {list(s)})"
        for k, s in flat_expected.items() if k in flat_got and flat_got[k] != s]
    if bad:
        raise WeightsError(f"{where}: converted parameters do not match the model: {_listing(bad)}")


def _strip_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    if not prefix:
        return arrays
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in arrays.items()}


def _detect(arrays: Mapping[str, np.ndarray], where: str) -> tuple[str, str]:
    """``(format, key prefix)`` of a checkpoint from its keys."""
    markers = (
        ("timm", "patch_embed.proj.weight"),
        ("hf", "embeddings.patch_embeddings.projection.weight"),
        ("torch_resnet", "layer1.0.conv1.weight"),
    )
    for fmt, marker in markers:
        for key in arrays:
            if key == marker or key.endswith("." + marker):
                return fmt, key[: len(key) - len(marker)]
    for prefix in ("", "opt/target/", "params/img/", "params/"):
        if f"{prefix}embedding/kernel" in arrays:
            return "npz", prefix
    raise WeightsError(
        f"{where}: unrecognised checkpoint layout: no 'patch_embed.proj.weight' (timm ViT), "
        f"'embeddings.patch_embeddings.projection.weight' (Hugging Face ViT), "
        f"'embedding/kernel' (ViT .npz) or 'layer1.0.conv1.weight' (torchvision ResNet); "
        f"first keys: {_listing(sorted(arrays), 8)}")


def _shape(
    arrays: Mapping[str, np.ndarray], key: str, where: str, why: str, ndim: int | None = None,
) -> tuple[int, ...]:
    """Shape of ``arrays[key]``, which must exist (and have ``ndim`` axes) to infer ``why``."""
    if key not in arrays:
        raise WeightsError(f"{where}: missing key {key!r} (needed to infer {why})")
    shape = tuple(arrays[key].shape)
    if ndim is not None and len(shape) != ndim:
        raise WeightsError(f"{where}: {key} has shape {list(shape)}; expected {ndim} axes")
    return shape


def _count(arrays: Mapping[str, np.ndarray], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in arrays if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def _norm_pair(mean, std, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except TypeError:
        raise WeightsError(
            f"{where}: mean/std must be sequences of numbers, got {mean!r}, {std!r}") from None
    if len(mean_t) != len(std_t) or not mean_t or any(s <= 0 for s in std_t):
        raise WeightsError(f"{where}: bad normalisation mean {mean_t} / std {std_t}")
    return mean_t, std_t


# ---------------------------------------------------------------------------------------------
# ViT.

_TIMM_BLOCK = {
    "norm1": "LayerNorm_0", "norm2": "LayerNorm_1", "attn.proj": "out",
    "mlp.fc1": "MlpBlock_0/Dense_0", "mlp.fc2": "MlpBlock_0/Dense_1",
}
_HF_LEGACY = {
    "layernorm_before": "LayerNorm_0", "layernorm_after": "LayerNorm_1",
    "attention.attention.query": "query", "attention.attention.key": "key",
    "attention.attention.value": "value", "attention.output.dense": "out",
    "intermediate.dense": "MlpBlock_0/Dense_0", "output.dense": "MlpBlock_0/Dense_1",
}
_HF_V5 = {
    "layernorm_before": "LayerNorm_0", "layernorm_after": "LayerNorm_1",
    "attention.q_proj": "query", "attention.k_proj": "key", "attention.v_proj": "value",
    "attention.o_proj": "out", "mlp.fc1": "MlpBlock_0/Dense_0", "mlp.fc2": "MlpBlock_0/Dense_1",
}
_ATTN = "MultiHeadDotProductAttention_0"


def _path(*parts: str) -> tuple[str, ...]:
    return tuple(p for part in parts for p in part.split("/"))


def _layer_norm(src: str, dst: tuple[str, ...], width: int) -> list[_Entry]:
    return [_Entry(f"{src}.weight", (width,), dst + ("scale",)),
            _Entry(f"{src}.bias", (width,), dst + ("bias",))]


def _torch_block_entries(
    block: str, dst: tuple[str, ...], mapping: Mapping[str, str], m: vit_lib.ViT,
) -> list[_Entry]:
    """Entries of one pre-norm block stored as torch Linear layers (``[out, in]`` weights)."""
    d, h, mlp = m.width, m.num_heads, m.mlp_dim
    hd = d // h
    entries = []
    for src, name in mapping.items():
        key = f"{block}.{src}"
        if name.startswith("LayerNorm"):
            entries += _layer_norm(key, dst + (name,), d)
        elif name.startswith("MlpBlock"):
            n_out, n_in = (mlp, d) if name.endswith("Dense_0") else (d, mlp)
            entries += [
                _Entry(f"{key}.weight", (n_out, n_in), dst + _path(name, "kernel"), lambda w: w.T),
                _Entry(f"{key}.bias", (n_out,), dst + _path(name, "bias"))]
        elif name == "out":
            entries += [
                _Entry(f"{key}.weight", (d, d), dst + (_ATTN, "out", "kernel"),
                       lambda w: w.T.reshape(h, hd, d)),
                _Entry(f"{key}.bias", (d,), dst + (_ATTN, "out", "bias"))]
        else:
            entries.append(_Entry(f"{key}.weight", (d, d), dst + (_ATTN, name, "kernel"),
                                  lambda w: w.T.reshape(d, h, hd)))
            if m.qkv_bias:
                entries.append(_Entry(f"{key}.bias", (d,), dst + (_ATTN, name, "bias"),
                                      lambda b: b.reshape(h, hd)))
    return entries


def _fused_qkv_entries(block: str, dst: tuple[str, ...], m: vit_lib.ViT) -> list[_Entry]:
    """timm stores query, key and value stacked in one ``[3 * D, D]`` Linear."""
    d, h = m.width, m.num_heads
    hd = d // h
    entries = []
    for i, name in enumerate(("query", "key", "value")):
        rows = slice(i * d, (i + 1) * d)
        entries.append(_Entry(f"{block}.attn.qkv.weight", (3 * d, d), dst + (_ATTN, name, "kernel"),
                              lambda w, r=rows: w[r].T.reshape(d, h, hd)))
        if m.qkv_bias:
            entries.append(_Entry(f"{block}.attn.qkv.bias", (3 * d,), dst + (_ATTN, name, "bias"),
                                  lambda b, r=rows: b[r].reshape(h, hd)))
    return entries


def _patch_entries(weight: str, bias: str, m: vit_lib.ViT, in_ch: int) -> list[_Entry]:
    p = m.patch_size
    return [_Entry(weight, (m.width, in_ch, p, p), ("embedding", "kernel"),
                   lambda w: w.transpose(2, 3, 1, 0)),
            _Entry(bias, (m.width,), ("embedding", "bias"))]


def _pos_entry(key: str, m: vit_lib.ViT, source_grid: tuple[int, int], method: str,
               antialias: bool) -> _Entry:
    return _Entry(key, (1, m.num_prefix_tokens + source_grid[0] * source_grid[1], m.width),
                  ("pos_embedding",),
                  lambda a: resample_posemb(a, m.grid_size, num_prefix_tokens=m.num_prefix_tokens,
                                            old_grid=source_grid, method=method,
                                            antialias=antialias))


def _source_grid(pos_shape: tuple[int, ...], prefix: int, key: str, where: str,
                 hint: tuple[int, int] | None) -> tuple[int, int]:
    """Patch grid of a stored position embedding: from the config when given, else square."""
    if len(pos_shape) == 2:
        pos_shape = (1,) + pos_shape
    if len(pos_shape) != 3 or pos_shape[0] != 1:
        raise WeightsError(f"{where}: {key} has shape {list(pos_shape)}, expected [1, tokens, width]")
    n = pos_shape[1] - prefix
    if hint is not None and hint[0] * hint[1] == n:
        return hint
    side = math.isqrt(max(n, 0))
    if side * side != n or n == 0:
        raise WeightsError(
            f"{where}: {key} has {pos_shape[1]} positions; with {prefix} prefix token(s) that is "
            f"not a square patch grid (give image_size in the model config to disambiguate)")
    return side, side


def _vit_fields(overrides: Mapping[str, Any], inferred: Mapping[str, Any]) -> dict[str, Any]:
    fields = {**inferred, **overrides}
    if isinstance(fields.get("image_size"), list):
        fields["image_size"] = tuple(fields["image_size"])
    for key in ("dtype", "param_dtype"):
        if key in fields:
            fields[key] = jnp.dtype(fields[key])
    return fields


def _heads(width: int, declared: int | None, overrides: Mapping[str, Any], where: str) -> int:
    """Heads from an override, else the checkpoint's config, else the standard ViT of that width."""
    declared = overrides.get("num_heads") or declared
    if declared:
        return int(declared)
    if width in _HEADS_BY_WIDTH:
        return _HEADS_BY_WIDTH[width]
    raise WeightsError(
        f"{where}: cannot infer num_heads for width {width} (no config gives it and it is not a "
        f"standard ViT width {sorted(_HEADS_BY_WIDTH)}); pass num_heads=...")


def _build(fields: Mapping[str, Any], where: str) -> vit_lib.ViT:
    try:
        return vit_lib.ViT(**fields)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{where}: {e}") from None


def _timm_vit(arrays, where, folder, overrides, resize):
    """Module and entries for a timm ViT state dict."""
    config = _read_json(folder / "config.json") or {}
    if "architecture" not in config:
        config = {}
    pretrained = config.get("pretrained_cfg", {}) or {}
    model_args = config.get("model_args", {}) or {}
    d, in_ch, p, p2 = _shape(arrays, "patch_embed.proj.weight", where, "width and patch size", 4)
    if p != p2:
        raise WeightsError(f"{where}: patch_embed.proj.weight has a non-square patch {p}x{p2}")
    declared_heads = model_args.get("num_heads")
    arch = re.match(r"vit_(tiny|small|base|large|huge)_patch\d+", config.get("architecture", ""))
    if declared_heads is None and arch:
        declared_heads = vit_lib.VARIANT_DIMS[_TIMM_SIZES[arch.group(1)]][2]
    class_token = "cls_token" in arrays
    fc_norm = "fc_norm.weight" in arrays
    global_pool = config.get("global_pool") or model_args.get("global_pool")
    pool = {"token": "cls", "avg": "gap"}.get(global_pool) or (
        "cls" if class_token and not fc_norm else "gap")
    img_size = model_args.get("img_size")
    if img_size is None and pretrained.get("input_size"):
        img_size = pretrained["input_size"][1:]
    grid_hint = tuple(s // p for s in vit_lib.image_hw(img_size)) if img_size else None
    source_grid = _source_grid(_shape(arrays, "pos_embed", where, "the image size"),
                               int(class_token), "pos_embed", where, grid_hint)
    inferred = dict(
        width=d, depth=_count(arrays, r"blocks\.(\d+)\."),
        num_heads=_heads(d, declared_heads, overrides, where),
        mlp_dim=_shape(arrays, "blocks.0.mlp.fc1.weight", where, "mlp_dim", 2)[0], patch_size=p,
        image_size=(source_grid[0] * p, source_grid[1] * p), class_token=class_token, pool=pool,
        final_norm="norm.weight" in arrays, fc_norm=fc_norm,
        layer_norm_eps=1e-6, qkv_bias="blocks.0.attn.qkv.bias" in arrays)
    m = _build(_vit_fields(overrides, inferred), where)
    method, antialias = resize or ("bicubic", True)
    entries = _patch_entries("patch_embed.proj.weight", "patch_embed.proj.bias", m, in_ch)
    if m.class_token:
        entries.append(_Entry("cls_token", (1, 1, d), ("cls",)))
    entries.append(_pos_entry("pos_embed", m, source_grid, method, antialias))
    for i in range(m.depth):
        dst = ("Transformer", f"encoderblock_{i}")
        entries += _torch_block_entries(f"blocks.{i}", dst, _TIMM_BLOCK, m)
        entries += _fused_qkv_entries(f"blocks.{i}", dst, m)
    if m.final_norm:
        entries += _layer_norm("norm", ("Transformer", "encoder_norm"), d)
    if m.fc_norm:
        entries += _layer_norm("fc_norm", ("fc_norm",), d)
    if "mean" in pretrained and "std" in pretrained:
        norm = (pretrained["mean"], pretrained["std"], "config.json pretrained_cfg")
    else:
        norm = (HALF, HALF, "default for timm ViT (AugReg / in21k weights expect [-1, 1] inputs)")
    return m, in_ch, entries, source_grid, (method, antialias), norm


def _hf_vit(arrays, where, folder, overrides, resize):
    """Module and entries for a Hugging Face ViTModel / ViTMAEModel state dict."""
    config = _read_json(folder / "config.json") or {}
    if "model_type" not in config:
        config = {}
    model_type = config.get("model_type", "vit")
    if model_type not in ("vit", "vit_mae"):
        raise WeightsError(f"{folder / 'config.json'}: model_type {model_type!r} is not 'vit' or 'vit_mae'")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise WeightsError(f"{folder / 'config.json'}: hidden_act {act!r}; only exact 'gelu' is supported")
    proj = "embeddings.patch_embeddings.projection"
    d, in_ch, p, p2 = _shape(arrays, f"{proj}.weight", where, "width and patch size", 4)
    if p != p2:
        raise WeightsError(f"{where}: {proj}.weight has a non-square patch {p}x{p2}")
    legacy = any(k.startswith("encoder.layer.") for k in arrays)
    block_prefix, mapping = ("encoder.layer.", _HF_LEGACY) if legacy else ("layers.", _HF_V5)
    names = {v: k for k, v in mapping.items()}
    class_token = "embeddings.cls_token" in arrays
    hint = config.get("image_size")
    grid_hint = tuple(s // p for s in vit_lib.image_hw(hint)) if hint else None
    pos_key = "embeddings.position_embeddings"
    source_grid = _source_grid(_shape(arrays, pos_key, where, "the image size"), int(class_token),
                               pos_key, where, grid_hint)
    if "intermediate_size" in config:
        mlp_dim = config["intermediate_size"]
    else:
        mlp_dim = _shape(arrays, f"{block_prefix}0.{names['MlpBlock_0/Dense_0']}.weight", where,
                         "mlp_dim", 2)[0]
    inferred = dict(
        width=config.get("hidden_size", d),
        depth=config.get("num_hidden_layers", _count(arrays, re.escape(block_prefix) + r"(\d+)\.")),
        num_heads=_heads(d, config.get("num_attention_heads"), overrides, where),
        mlp_dim=mlp_dim, patch_size=config.get("patch_size", p),
        image_size=(source_grid[0] * p, source_grid[1] * p), class_token=class_token,
        pool="cls" if class_token else "gap", final_norm=True, fc_norm=False,
        layer_norm_eps=config.get("layer_norm_eps", 1e-12),
        qkv_bias=config.get("qkv_bias", f"{block_prefix}0.{names['query']}.bias" in arrays))
    m = _build(_vit_fields(overrides, inferred), where)
    method, antialias = resize or ("bicubic", False)
    entries = _patch_entries(f"{proj}.weight", f"{proj}.bias", m, in_ch)
    if m.class_token:
        entries.append(_Entry("embeddings.cls_token", (1, 1, m.width), ("cls",)))
    entries.append(_pos_entry(pos_key, m, source_grid, method, antialias))
    for i in range(m.depth):
        entries += _torch_block_entries(
            f"{block_prefix}{i}", ("Transformer", f"encoderblock_{i}"), mapping, m)
    entries += _layer_norm("layernorm", ("Transformer", "encoder_norm"), m.width)

    # A ViTMAEForPreTraining file without its config.json is still recognisable by its decoder.
    mae = model_type == "vit_mae" or any(k.startswith("decoder.") for k in arrays)
    processor = _read_json(folder / "preprocessor_config.json") or {}
    if "image_mean" in processor and "image_std" in processor:
        norm = (processor["image_mean"], processor["image_std"], "preprocessor_config.json")
    elif mae:
        norm = (IMAGENET_MEAN, IMAGENET_STD, "default for Hugging Face ViTMAE (ImageNet statistics)")
    else:
        norm = (HALF, HALF, "default for Hugging Face ViT (ViTImageProcessor: 0.5 / 0.5)")
    fmt = "hf_vit_mae" if mae else "hf_vit"
    return m, in_ch, entries, source_grid, (method, antialias), norm, fmt


def _npz_vit(arrays, where, overrides, resize):
    """Module and entries for an original ViT / big_vision ``.npz`` (prefix already stripped)."""
    p, _, in_ch, d = _shape(arrays, "embedding/kernel", where, "width and patch size", 4)
    big_vision = "pos_embedding" in arrays or "Transformer/encoderblock/LayerNorm_0/scale" in arrays
    scanned = "Transformer/encoderblock/LayerNorm_0/scale" in arrays
    mha, ln1, mlp_block = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision \
        else ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    if scanned:
        depth = _shape(arrays, "Transformer/encoderblock/LayerNorm_0/scale", where, "depth")[0]
        first = "Transformer/encoderblock/"
    else:
        depth = _count(arrays, r"Transformer/encoderblock_(\d+)/")
        first = "Transformer/encoderblock_0/"
    lead = int(scanned)
    q_shape = _shape(arrays, f"{first}{mha}/query/kernel", where, "num_heads", 3 + lead)
    mlp_shape = _shape(arrays, f"{first}{mlp_block}/Dense_0/kernel", where, "mlp_dim", 2 + lead)
    class_token = "cls" in arrays
    pos_key = "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
    pos_shape = _shape(arrays, pos_key, where, "the image size")
    source_grid = _source_grid(pos_shape, int(class_token), pos_key, where, None)
    inferred = dict(
        width=d, depth=depth, num_heads=q_shape[-2], mlp_dim=mlp_shape[-1], patch_size=p,
        image_size=(source_grid[0] * p, source_grid[1] * p), class_token=class_token,
        pool="cls" if class_token else "gap", final_norm="Transformer/encoder_norm/scale" in arrays,
        fc_norm=False, layer_norm_eps=1e-6,
        qkv_bias=f"{first}{mha}/query/bias" in arrays)
    m = _build(_vit_fields(overrides, inferred), where)
    method, antialias = resize or ("bilinear", False)
    d, h, mlp = m.width, m.num_heads, m.mlp_dim
    hd = d // h
    ps = m.patch_size
    entries = [_Entry("embedding/kernel", (ps, ps, in_ch, d), ("embedding", "kernel")),
               _Entry("embedding/bias", (d,), ("embedding", "bias"))]
    if m.class_token:
        entries.append(_Entry("cls", (1, 1, d), ("cls",)))
    pos = _pos_entry(pos_key, m, source_grid, method, antialias)
    if len(pos_shape) == 2:
        pos = dataclasses.replace(pos, shape=pos.shape[1:],
                                  convert=lambda a, f=pos.convert: f(a[None]))
    entries.append(pos)
    leaves = {  # our name -> (source name, shape per block)
        "LayerNorm_0/scale": ("LayerNorm_0/scale", (d,)), "LayerNorm_0/bias": ("LayerNorm_0/bias", (d,)),
        "LayerNorm_1/scale": (f"{ln1}/scale", (d,)), "LayerNorm_1/bias": (f"{ln1}/bias", (d,)),
        "MlpBlock_0/Dense_0/kernel": (f"{mlp_block}/Dense_0/kernel", (d, mlp)),
        "MlpBlock_0/Dense_0/bias": (f"{mlp_block}/Dense_0/bias", (mlp,)),
        "MlpBlock_0/Dense_1/kernel": (f"{mlp_block}/Dense_1/kernel", (mlp, d)),
        "MlpBlock_0/Dense_1/bias": (f"{mlp_block}/Dense_1/bias", (d,)),
        f"{_ATTN}/out/kernel": (f"{mha}/out/kernel", (h, hd, d)),
        f"{_ATTN}/out/bias": (f"{mha}/out/bias", (d,)),
    }
    for name in ("query", "key", "value"):
        leaves[f"{_ATTN}/{name}/kernel"] = (f"{mha}/{name}/kernel", (d, h, hd))
        if m.qkv_bias:
            leaves[f"{_ATTN}/{name}/bias"] = (f"{mha}/{name}/bias", (h, hd))
    for i in range(m.depth):
        for ours, (theirs, shape) in leaves.items():
            dst = ("Transformer", f"encoderblock_{i}") + _path(ours)
            if scanned:
                entries.append(_Entry(f"Transformer/encoderblock/{theirs}", (m.depth,) + shape, dst,
                                      lambda a, i=i: a[i]))
            else:
                entries.append(_Entry(f"Transformer/encoderblock_{i}/{theirs}", shape, dst))
    if m.final_norm:
        entries += [
            _Entry("Transformer/encoder_norm/scale", (d,), ("Transformer", "encoder_norm", "scale")),
            _Entry("Transformer/encoder_norm/bias", (d,), ("Transformer", "encoder_norm", "bias"))]
    norm = (HALF, HALF, "default for ViT .npz checkpoints (inputs scaled to [-1, 1])")
    return m, in_ch, entries, source_grid, (method, antialias), norm


def load_vit(
    path: str | os.PathLike, *, mean=None, std=None, interpolation: str | None = None,
    antialias: bool | None = None, **overrides,
) -> tuple[vit_lib.ViT, dict[str, Any], dict[str, Any]]:
    """``(module, params, info)`` from a ViT weights file or directory (format from its keys).

    ``overrides`` are :class:`~abaw_jax.models.vit.ViT` fields (``image_size``, ``pool``,
    ``dtype``, ...) replacing what the file implies; a different ``image_size`` resamples the
    position embeddings (``interpolation`` / ``antialias`` override the per-format default).
    Without an override, ``pool`` is what the checkpoint's own classifier used (``"cls"`` with a
    class token, ``"gap"`` without one or with ``fc_norm``; timm's ``global_pool`` when given).
    ``params`` is the inner tree: apply with ``module.apply({"params": params}, images)``.
    ``info``: format, path, variant, config (JSON-able module fields), dim, mean, std,
    norm_source, source_image_size, posemb_resized, ignored_keys.
    """
    where = str(path)
    known = set(vit_lib.ViT.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise WeightsError(f"{where}: unknown ViT override(s) {unknown}; known: {sorted(known)}")
    files, folder = _resolve(path)
    if interpolation is not None and interpolation not in ("bilinear", "bicubic"):
        raise WeightsError(f"{where}: interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
    arrays = _read_arrays(files)
    fmt, prefix = _detect(arrays, where)
    if fmt == "torch_resnet":
        raise WeightsError(f"{where}: this is a ResNet checkpoint; use load_resnet")
    resize = None
    if interpolation is not None or antialias is not None:
        default = {"timm": ("bicubic", True), "hf": ("bicubic", False), "npz": ("bilinear", False)}[fmt]
        resize = (interpolation or default[0], default[1] if antialias is None else bool(antialias))
    if fmt == "npz":
        # Keys outside the parameter prefix are optimizer state and the like.
        arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        m, in_ch, entries, grid, resize, norm = _npz_vit(arrays, where, overrides, resize)
        fmt = "big_vision" if prefix.startswith("params/") or "pos_embedding" in arrays else "npz"
        ignore = _IGNORED["npz"]
    elif fmt == "timm":
        arrays = _strip_prefix(arrays, prefix)
        m, in_ch, entries, grid, resize, norm = _timm_vit(arrays, where, folder, overrides, resize)
        ignore = _IGNORED["timm"]
    else:
        arrays = _strip_prefix(arrays, prefix)
        m, in_ch, entries, grid, resize, norm, fmt = _hf_vit(arrays, where, folder, overrides, resize)
        ignore = _IGNORED["hf"]

    variables, ignored = _assemble(arrays, entries, ignore, where)
    h, w = vit_lib.image_hw(m.image_size)
    _check_tree(m, variables, (1, h, w, in_ch), where)
    mean_t, std_t = _norm_pair(norm[0] if mean is None else mean, norm[1] if std is None else std, where)
    resized = None
    if tuple(grid) != m.grid_size:
        resized = (f"{grid[0]}x{grid[1]} -> {m.grid_size[0]}x{m.grid_size[1]} {resize[0]}"
                   + (" antialias" if resize[1] else ""))
    info = dict(
        format=fmt, path=where,
        variant=vit_lib.variant_name(m.width, m.depth, m.num_heads, m.mlp_dim, m.patch_size),
        config=module_config(m), dim=m.width, mean=mean_t, std=std_t,
        norm_source="argument" if mean is not None or std is not None else norm[2],
        source_image_size=(grid[0] * m.patch_size, grid[1] * m.patch_size),
        posemb_resized=resized, ignored_keys=ignored)
    return m, jax.device_put(variables["params"]), info


# ---------------------------------------------------------------------------------------------
# ResNet.


def _resnet_entries(m: resnet_lib.ResNet, in_ch: int) -> list[_Entry]:
    def conv(src, dst, out, inp, k):
        return [_Entry(f"{src}.weight", (out, inp, k, k), dst + ("kernel",),
                       lambda w: w.transpose(2, 3, 1, 0))]

    def bn(src, dst, c):
        return [_Entry(f"{src}.weight", (c,), dst + ("scale",)),
                _Entry(f"{src}.bias", (c,), dst + ("bias",)),
                _Entry(f"{src}.running_mean", (c,), dst + ("mean",), collection="batch_stats"),
                _Entry(f"{src}.running_var", (c,), dst + ("var",), collection="batch_stats")]

    expansion = resnet_lib.EXPANSION[m.block]
    entries = conv("conv1", ("conv1",), m.width, in_ch, 7) + bn("bn1", ("bn1",), m.width)
    channels = m.width
    for i, num_blocks in enumerate(m.stage_sizes):
        f = m.width * 2 ** i
        for j in range(num_blocks):
            src, dst = f"layer{i + 1}.{j}", (f"layer{i + 1}_{j}",)
            if m.block == "basic":
                shapes = [(f, channels, 3), (f, f, 3)]
            else:
                shapes = [(f, channels, 1), (f, f, 3), (f * expansion, f, 1)]
            for k, (out, inp, ksize) in enumerate(shapes, start=1):
                entries += conv(f"{src}.conv{k}", dst + (f"conv{k}",), out, inp, ksize)
                entries += bn(f"{src}.bn{k}", dst + (f"bn{k}",), out)
            if (i > 0 and j == 0) or channels != f * expansion:
                entries += conv(f"{src}.downsample.0", dst + ("downsample_0",), f * expansion, channels, 1)
                entries += bn(f"{src}.downsample.1", dst + ("downsample_1",), f * expansion)
            channels = f * expansion
    if m.num_classes:
        entries += [_Entry("fc.weight", (m.num_classes, channels), ("fc", "kernel"), lambda w: w.T),
                    _Entry("fc.bias", (m.num_classes,), ("fc", "bias"))]
    return entries


def load_resnet(
    path: str | os.PathLike, *, mean=None, std=None, **overrides,
) -> tuple[resnet_lib.ResNet, dict[str, Any], dict[str, Any]]:
    """``(module, variables, info)`` from a torchvision / timm ResNet ``.safetensors`` state dict.

    ``variables`` holds ``params`` and ``batch_stats``. ``overrides`` are
    :class:`~abaw_jax.models.resnet.ResNet` fields; ``num_classes=0`` drops the fc layer (its keys
    are then ignored). Normalisation defaults to ImageNet statistics unless a timm
    ``config.json`` beside the file says otherwise.
    """
    files, folder = _resolve(path)
    where = str(path)
    arrays = _read_arrays(files)
    fmt, prefix = _detect(arrays, where)
    if fmt != "torch_resnet":
        raise WeightsError(f"{where}: not a ResNet checkpoint (looks like {fmt}); use load_vit")
    arrays = _strip_prefix(arrays, prefix)
    width, in_ch, _, _ = _shape(arrays, "conv1.weight", where, "the stem width", 4)
    block = "bottleneck" if "layer1.0.conv3.weight" in arrays else "basic"
    stages = tuple(_count(arrays, rf"layer{i}\.(\d+)\.") for i in range(1, 5))
    num_classes = _shape(arrays, "fc.weight", where, "num_classes")[0] if "fc.weight" in arrays else 0
    known = set(resnet_lib.ResNet.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise WeightsError(f"{where}: unknown ResNet override(s) {unknown}; known: {sorted(known)}")
    fields = {**dict(block=block, stage_sizes=stages, width=width, num_classes=num_classes), **overrides}
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    try:
        m = resnet_lib.ResNet(**fields)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{where}: {e}") from None
    ignore = _IGNORED["torch_resnet"] + ((r"^fc\.",) if not m.num_classes else ())
    variables, ignored = _assemble(arrays, _resnet_entries(m, in_ch), ignore, where)
    _check_tree(m, variables, (1, 64, 64, in_ch), where)
    config = _read_json(folder / "config.json") or {}
    pretrained = config.get("pretrained_cfg", {}) if "architecture" in config else {}
    if "mean" in pretrained and "std" in pretrained:
        norm = (pretrained["mean"], pretrained["std"], "config.json pretrained_cfg")
    else:
        norm = (IMAGENET_MEAN, IMAGENET_STD, "default for torchvision / timm ResNet (ImageNet statistics)")
    mean_t, std_t = _norm_pair(norm[0] if mean is None else mean, norm[1] if std is None else std, where)
    info = dict(
        format="torch_resnet", path=where,
        variant=resnet_lib.variant_name(m.block, m.stage_sizes, m.width),
        config=module_config(m), dim=m.num_features, mean=mean_t, std=std_t,
        norm_source="argument" if mean is not None or std is not None else norm[2],
        ignored_keys=ignored)
    return m, jax.device_put(variables), info


# ---------------------------------------------------------------------------------------------
# Encoders for feature extraction.


def module_config(module: nn.Module) -> dict[str, Any]:
    """The module's dataclass fields as a JSON-able dict (dtypes as names, tuples as lists)."""
    out = {}
    for field in dataclasses.fields(module):
        if field.name in ("parent", "name"):
            continue
        value = getattr(module, field.name)
        if isinstance(value, tuple):
            value = list(value)
        elif not isinstance(value, (int, float, str, bool, type(None))):
            value = jnp.dtype(value).name
        out[field.name] = value
    return out


def load_encoder(
    spec: str | os.PathLike, *, seed: int = 0, mean=None, std=None, **overrides,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(module, variables, info)`` for a weights path, or a variant name with random weights.

    A path (file or directory) is loaded by :func:`load_vit` or :func:`load_resnet` as its keys
    say; a ViT variant (``"B/16"``) or ResNet variant (``"resnet18"``) that is not an existing
    path is initialised from ``seed``. ``variables`` is the full dict to pass to ``module.apply``.
    """
    if Path(spec).exists():
        files, _ = _resolve(spec)
        # Safetensors are memory-mapped, so peeking at the keys reads no tensor data.
        if all(f.suffix == ".safetensors" for f in files) and _detect(
                _read_arrays(files), str(spec))[0] == "torch_resnet":
            return load_resnet(spec, mean=mean, std=std, **overrides)
        m, params, info = load_vit(spec, mean=mean, std=std, **overrides)
        return m, {"params": params}, info
    name = str(spec)
    try:
        if name in resnet_lib.VARIANTS:
            m = resnet_lib.resnet_from_config({"variant": name}, **overrides)
            sample = (1, 64, 64, 3)
            norm = (IMAGENET_MEAN, IMAGENET_STD)
        else:
            m = vit_lib.vit_from_config({"variant": name}, **overrides)
            sample = (1, *vit_lib.image_hw(m.image_size), 3)
            norm = (HALF, HALF)
    except (TypeError, ValueError) as e:
        raise WeightsError(
            f"{name!r} is neither an existing weights path nor a usable variant: {e}") from None
    variables = jax.jit(m.init)(jax.random.key(seed), jnp.zeros(sample, jnp.float32))
    mean_t, std_t = _norm_pair(norm[0] if mean is None else mean, norm[1] if std is None else std, name)
    info = dict(
        format="random", path=None, variant=name, config=module_config(m),
        dim=m.num_features if isinstance(m, resnet_lib.ResNet) else m.width,
        mean=mean_t, std=std_t, norm_source="argument" if mean is not None or std is not None
        else "random init", seed=seed, ignored_keys=[])
    return m, dict(variables), info


def preprocess(
    images: jax.Array, *, mean, std, image_size: int | tuple[int, int] | None = None,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """uint8 ``[B, H, W, C]`` (or float in [0, 1]) -> resized, normalised ``dtype`` images."""
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    if image_size is not None:
        h, w = vit_lib.image_hw(image_size)
        if x.shape[1:3] != (h, w):
            x = jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear", antialias=True)
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def feature_fn(
    module: nn.Module, info: Mapping[str, Any], *, image_size: int | tuple[int, int] | None = None,
) -> Callable[[Any, jax.Array], jax.Array]:
    """A jittable ``fn(variables, images [B, H, W, C] uint8 or [0, 1] float) -> pooled [B, dim]``.

    Images are resized (bilinear) to ``image_size``, by default the ViT's own; ResNets take any
    size and are resized only when ``image_size`` is given.
    """
    if image_size is None and isinstance(module, vit_lib.ViT):
        image_size = module.image_size
    mean, std = tuple(info["mean"]), tuple(info["std"])
    dtype = getattr(module, "dtype", jnp.float32)

    def apply(variables: Any, images: jax.Array) -> jax.Array:
        x = preprocess(images, mean=mean, std=std, image_size=image_size, dtype=dtype)
        return module.apply(variables, x)[0]

    return apply
