"""ViT weights from local files, in every layout the readers know (detected from the keys).

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

:func:`load_vit` reads the encoder of any of them; :func:`load_hf_mae` reads a whole Hugging Face
``ViTMAEForPreTraining`` (encoder and decoder) into :class:`abaw_jax.models.mae.MAE`.

Classifier heads, MAE decoders and (unless ``pool="pooler"``) poolers are skipped by
:func:`load_vit` and listed in ``info["ignored_keys"]``. With ``pool="pooler"`` the pooler is
loaded: Hugging Face ``pooler.dense.{weight,bias}`` or the original ViT's
``pre_logits/{kernel,bias}`` become the ``pooler`` Dense (timm state dicts have no pooler).
Any other key the model has no place for, any key it needs that the file lacks, and any shape
that does not fit raise :class:`WeightsError` naming the keys and the file.

Position embeddings are resampled when the requested ``image_size`` differs from the
checkpoint's (:mod:`abaw_jax.models.weights.posemb`), by the method the checkpoint's own library
uses: timm state dicts bicubic with antialiasing (timm's ``checkpoint_filter_fn``), ``.npz``
bilinear without (timm's ``.npz`` loader; big_vision and the original ViT code also interpolate
linearly), Hugging Face bicubic without (``ViTEmbeddings.interpolate_pos_encoding``). The
class-token position is kept as is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax.models import mae as mae_lib
from abaw_jax.models import vit as vit_lib
from abaw_jax.models.weights.convert import (
    HALF, IMAGENET_MEAN, IMAGENET_STD, Entry, assemble, check_tree, count_indices, detect_format,
    key_shape, module_config, norm_pair, strip_prefix)
from abaw_jax.models.weights.files import (
    WeightsError, read_arrays, read_json, read_safetensors, resolve_files)
from abaw_jax.models.weights.posemb import resample_posemb

# Keys a feature encoder has no use for: classifier heads, poolers, MAE decoders.
_IGNORED = {
    "timm": (r"^head\.", r"^pre_logits\.", r"^decoder", r"^mask_token$"),
    "hf": (r"^pooler\.", r"^classifier\.", r"^decoder\.", r"^embeddings\.mask_token$"),
    "npz": (r"^head/", r"^pre_logits/"),
}
_TIMM_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
_HEADS_BY_WIDTH = {dims[0]: dims[2] for dims in vit_lib.VARIANT_DIMS.values()}

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


def _layer_norm(src: str, dst: tuple[str, ...], width: int) -> list[Entry]:
    return [Entry(f"{src}.weight", (width,), dst + ("scale",)),
            Entry(f"{src}.bias", (width,), dst + ("bias",))]


def _torch_block_entries(
    block: str, dst: tuple[str, ...], mapping: Mapping[str, str], m: vit_lib.ViT,
) -> list[Entry]:
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
                Entry(f"{key}.weight", (n_out, n_in), dst + _path(name, "kernel"), lambda w: w.T),
                Entry(f"{key}.bias", (n_out,), dst + _path(name, "bias"))]
        elif name == "out":
            entries += [
                Entry(f"{key}.weight", (d, d), dst + (_ATTN, "out", "kernel"),
                      lambda w: w.T.reshape(h, hd, d)),
                Entry(f"{key}.bias", (d,), dst + (_ATTN, "out", "bias"))]
        else:
            entries.append(Entry(f"{key}.weight", (d, d), dst + (_ATTN, name, "kernel"),
                                 lambda w: w.T.reshape(d, h, hd)))
            if m.qkv_bias:
                entries.append(Entry(f"{key}.bias", (d,), dst + (_ATTN, name, "bias"),
                                     lambda b: b.reshape(h, hd)))
    return entries


def _fused_qkv_entries(block: str, dst: tuple[str, ...], m: vit_lib.ViT) -> list[Entry]:
    """timm stores query, key and value stacked in one ``[3 * D, D]`` Linear."""
    d, h = m.width, m.num_heads
    hd = d // h
    entries = []
    for i, name in enumerate(("query", "key", "value")):
        rows = slice(i * d, (i + 1) * d)
        entries.append(Entry(f"{block}.attn.qkv.weight", (3 * d, d), dst + (_ATTN, name, "kernel"),
                             lambda w, r=rows: w[r].T.reshape(d, h, hd)))
        if m.qkv_bias:
            entries.append(Entry(f"{block}.attn.qkv.bias", (3 * d,), dst + (_ATTN, name, "bias"),
                                 lambda b, r=rows: b[r].reshape(h, hd)))
    return entries


def _patch_entries(weight: str, bias: str, m: vit_lib.ViT, in_ch: int) -> list[Entry]:
    p = m.patch_size
    return [Entry(weight, (m.width, in_ch, p, p), ("embedding", "kernel"),
                  lambda w: w.transpose(2, 3, 1, 0)),
            Entry(bias, (m.width,), ("embedding", "bias"))]


def _pos_entry(key: str, m: vit_lib.ViT, source_grid: tuple[int, int], method: str,
               antialias: bool) -> Entry:
    return Entry(key, (1, m.num_prefix_tokens + source_grid[0] * source_grid[1], m.width),
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
    config = read_json(folder / "config.json") or {}
    if "architecture" not in config:
        config = {}
    pretrained = config.get("pretrained_cfg", {}) or {}
    model_args = config.get("model_args", {}) or {}
    d, in_ch, p, p2 = key_shape(arrays, "patch_embed.proj.weight", where, "width and patch size", 4)
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
    source_grid = _source_grid(key_shape(arrays, "pos_embed", where, "the image size"),
                               int(class_token), "pos_embed", where, grid_hint)
    inferred = dict(
        width=d, depth=count_indices(arrays, r"blocks\.(\d+)\."),
        num_heads=_heads(d, declared_heads, overrides, where),
        mlp_dim=key_shape(arrays, "blocks.0.mlp.fc1.weight", where, "mlp_dim", 2)[0], patch_size=p,
        image_size=(source_grid[0] * p, source_grid[1] * p), class_token=class_token, pool=pool,
        final_norm="norm.weight" in arrays, fc_norm=fc_norm,
        layer_norm_eps=1e-6, qkv_bias="blocks.0.attn.qkv.bias" in arrays)
    m = _build(_vit_fields(overrides, inferred), where)
    if m.pool == "pooler":
        raise WeightsError(f"{where}: pool='pooler' needs pooler weights (Hugging Face "
                           f"pooler.dense.* or .npz pre_logits/*); timm state dicts have none")
    method, antialias = resize or ("bicubic", True)
    entries = _patch_entries("patch_embed.proj.weight", "patch_embed.proj.bias", m, in_ch)
    if m.class_token:
        entries.append(Entry("cls_token", (1, 1, d), ("cls",)))
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
    config = read_json(folder / "config.json") or {}
    if "model_type" not in config:
        config = {}
    model_type = config.get("model_type", "vit")
    if model_type not in ("vit", "vit_mae"):
        raise WeightsError(f"{folder / 'config.json'}: model_type {model_type!r} is not 'vit' or 'vit_mae'")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise WeightsError(f"{folder / 'config.json'}: hidden_act {act!r}; only exact 'gelu' is supported")
    proj = "embeddings.patch_embeddings.projection"
    d, in_ch, p, p2 = key_shape(arrays, f"{proj}.weight", where, "width and patch size", 4)
    if p != p2:
        raise WeightsError(f"{where}: {proj}.weight has a non-square patch {p}x{p2}")
    legacy = any(k.startswith("encoder.layer.") for k in arrays)
    block_prefix, mapping = ("encoder.layer.", _HF_LEGACY) if legacy else ("layers.", _HF_V5)
    names = {v: k for k, v in mapping.items()}
    class_token = "embeddings.cls_token" in arrays
    hint = config.get("image_size")
    grid_hint = tuple(s // p for s in vit_lib.image_hw(hint)) if hint else None
    pos_key = "embeddings.position_embeddings"
    source_grid = _source_grid(key_shape(arrays, pos_key, where, "the image size"), int(class_token),
                               pos_key, where, grid_hint)
    if "intermediate_size" in config:
        mlp_dim = config["intermediate_size"]
    else:
        mlp_dim = key_shape(arrays, f"{block_prefix}0.{names['MlpBlock_0/Dense_0']}.weight", where,
                            "mlp_dim", 2)[0]
    inferred = dict(
        width=config.get("hidden_size", d),
        depth=config.get("num_hidden_layers",
                         count_indices(arrays, re.escape(block_prefix) + r"(\d+)\.")),
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
        entries.append(Entry("embeddings.cls_token", (1, 1, m.width), ("cls",)))
    entries.append(_pos_entry(pos_key, m, source_grid, method, antialias))
    for i in range(m.depth):
        entries += _torch_block_entries(
            f"{block_prefix}{i}", ("Transformer", f"encoderblock_{i}"), mapping, m)
    entries += _layer_norm("layernorm", ("Transformer", "encoder_norm"), m.width)
    if m.pool == "pooler":
        # HF ViTPooler: tanh(dense(h[:, 0])), a torch Linear ([out, in] weight).
        entries += [Entry("pooler.dense.weight", (m.width, m.width), ("pooler", "kernel"),
                          lambda w: w.T),
                    Entry("pooler.dense.bias", (m.width,), ("pooler", "bias"))]

    # A ViTMAEForPreTraining file without its config.json is still recognisable by its decoder.
    mae = model_type == "vit_mae" or any(k.startswith("decoder.") for k in arrays)
    processor = read_json(folder / "preprocessor_config.json") or {}
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
    p, _, in_ch, d = key_shape(arrays, "embedding/kernel", where, "width and patch size", 4)
    big_vision = "pos_embedding" in arrays or "Transformer/encoderblock/LayerNorm_0/scale" in arrays
    scanned = "Transformer/encoderblock/LayerNorm_0/scale" in arrays
    mha, ln1, mlp_block = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision \
        else ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    if scanned:
        depth = key_shape(arrays, "Transformer/encoderblock/LayerNorm_0/scale", where, "depth")[0]
        first = "Transformer/encoderblock/"
    else:
        depth = count_indices(arrays, r"Transformer/encoderblock_(\d+)/")
        first = "Transformer/encoderblock_0/"
    lead = int(scanned)
    q_shape = key_shape(arrays, f"{first}{mha}/query/kernel", where, "num_heads", 3 + lead)
    mlp_shape = key_shape(arrays, f"{first}{mlp_block}/Dense_0/kernel", where, "mlp_dim", 2 + lead)
    class_token = "cls" in arrays
    pos_key = "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
    pos_shape = key_shape(arrays, pos_key, where, "the image size")
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
    entries = [Entry("embedding/kernel", (ps, ps, in_ch, d), ("embedding", "kernel")),
               Entry("embedding/bias", (d,), ("embedding", "bias"))]
    if m.class_token:
        entries.append(Entry("cls", (1, 1, d), ("cls",)))
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
                entries.append(Entry(f"Transformer/encoderblock/{theirs}", (m.depth,) + shape, dst,
                                     lambda a, i=i: a[i]))
            else:
                entries.append(Entry(f"Transformer/encoderblock_{i}/{theirs}", shape, dst))
    if m.final_norm:
        entries += [
            Entry("Transformer/encoder_norm/scale", (d,), ("Transformer", "encoder_norm", "scale")),
            Entry("Transformer/encoder_norm/bias", (d,), ("Transformer", "encoder_norm", "bias"))]
    if m.pool == "pooler":
        # The original ViT's representation layer (in21k checkpoints): tanh(Dense(cls)).
        entries += [Entry("pre_logits/kernel", (d, d), ("pooler", "kernel")),
                    Entry("pre_logits/bias", (d,), ("pooler", "bias"))]
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
    files, folder = resolve_files(path)
    if interpolation is not None and interpolation not in ("bilinear", "bicubic"):
        raise WeightsError(f"{where}: interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
    arrays = read_arrays(files)
    fmt, prefix = detect_format(arrays, where)
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
        arrays = strip_prefix(arrays, prefix)
        m, in_ch, entries, grid, resize, norm = _timm_vit(arrays, where, folder, overrides, resize)
        ignore = _IGNORED["timm"]
    else:
        arrays = strip_prefix(arrays, prefix)
        m, in_ch, entries, grid, resize, norm, fmt = _hf_vit(arrays, where, folder, overrides, resize)
        ignore = _IGNORED["hf"]

    variables, ignored = assemble(arrays, entries, ignore, where)
    h, w = vit_lib.image_hw(m.image_size)
    check_tree(m, variables, (1, h, w, in_ch), where)
    mean_t, std_t = norm_pair(norm[0] if mean is None else mean, norm[1] if std is None else std,
                              where)
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
# Hugging Face ViTMAEForPreTraining.

_HF_DECODER_LAYOUTS = (   # (block prefix, names), newest first
    ("decoder.decoder_layers.", _HF_V5),
    ("decoder.decoder_encoder.layer.", _HF_LEGACY),
    ("decoder.decoder_layers.", _HF_LEGACY),
)


def _hf_decoder_layout(arrays: Mapping[str, np.ndarray], where: str):
    for prefix, names in _HF_DECODER_LAYOUTS:
        query = {v: k for k, v in names.items()}["query"]
        if f"{prefix}0.{query}.weight" in arrays:
            return prefix, names
    raise WeightsError(
        f"{where}: no MAE decoder blocks ('decoder.decoder_layers.0...' or "
        f"'decoder.decoder_encoder.layer.0...'); is this a ViTMAEForPreTraining checkpoint?")


def _torch_linear(arrays, key, where, shape_out_in):
    w = arrays.get(f"{key}.weight")
    b = arrays.get(f"{key}.bias")
    if w is None or b is None:
        raise WeightsError(f"{where}: missing key {key}.weight or {key}.bias")
    if tuple(w.shape) != shape_out_in:
        raise WeightsError(
            f"{where}: {key}.weight has shape {list(w.shape)}, expected {list(shape_out_in)}")
    return {"kernel": np.asarray(w, np.float32).T.copy(), "bias": np.asarray(b, np.float32).copy()}


def _hf_block(arrays, prefix, names, width, heads, mlp, where) -> dict[str, Any]:
    """One pre-norm block stored as torch Linear layers, in the ViT EncoderBlock layout."""
    hd = width // heads
    theirs = {v: k for k, v in names.items()}
    block: dict[str, Any] = {}
    for ln in ("LayerNorm_0", "LayerNorm_1"):
        key = f"{prefix}{theirs[ln]}"
        if f"{key}.weight" not in arrays:
            raise WeightsError(f"{where}: missing key {key}.weight")
        block[ln] = {"scale": np.asarray(arrays[f"{key}.weight"], np.float32),
                     "bias": np.asarray(arrays[f"{key}.bias"], np.float32)}
    attn = {}
    for name in ("query", "key", "value"):
        lin = _torch_linear(arrays, f"{prefix}{theirs[name]}", where, (width, width))
        attn[name] = {"kernel": lin["kernel"].reshape(width, heads, hd),
                      "bias": lin["bias"].reshape(heads, hd)}
    out = _torch_linear(arrays, f"{prefix}{theirs['out']}", where, (width, width))
    attn["out"] = {"kernel": out["kernel"].reshape(heads, hd, width), "bias": out["bias"]}
    block["MultiHeadDotProductAttention_0"] = attn
    block["MlpBlock_0"] = {
        "Dense_0": _torch_linear(arrays, f"{prefix}{theirs['MlpBlock_0/Dense_0']}", where, (mlp, width)),
        "Dense_1": _torch_linear(arrays, f"{prefix}{theirs['MlpBlock_0/Dense_1']}", where, (width, mlp)),
    }
    return block


def load_hf_mae(
    path: str | os.PathLike, **overrides,
) -> tuple[mae_lib.MAE, dict[str, Any], dict[str, Any]]:
    """``(MAE, params, info)`` from a Hugging Face ``ViTMAEForPreTraining`` save (dir or file).

    The encoder goes through :func:`load_vit`; the decoder is mapped here. Position tables
    equal to MAE's sin-cos ones (as in every released checkpoint) become ``posemb="sincos"``;
    others are kept as parameters (``posemb="learn"``). ``overrides`` are MAE fields
    (``mask_ratio``, ``norm_pix_loss``, ``dtype``, ...).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    where = str(path)
    vit, vit_params, info = load_vit(path)
    files = [path] if path.is_file() else sorted(folder.glob("*.safetensors"))
    arrays: dict[str, np.ndarray] = {}
    for file in files:
        arrays.update(read_safetensors(file)[0])
    config = {}
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
    prefix, names = _hf_decoder_layout(arrays, where)
    query = {v: k for k, v in names.items()}["query"]
    fc1 = {v: k for k, v in names.items()}["MlpBlock_0/Dense_0"]
    dw = arrays[f"{prefix}0.{query}.weight"].shape[0]
    ddepth = len({int(m.group(1)) for k in arrays if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})
    dheads = int(config.get("decoder_num_attention_heads") or overrides.get("decoder_num_heads") or 16)
    dmlp = arrays[f"{prefix}0.{fc1}.weight"].shape[0]

    params: dict[str, Any] = dict(jax.device_get(vit_params))
    enc_pos = np.asarray(params.pop("pos_embedding"), np.float32)
    params["decoder_embed"] = _torch_linear(arrays, "decoder.decoder_embed", where, (dw, vit.width))
    params["mask_token"] = np.asarray(arrays["decoder.mask_token"], np.float32)
    decoder = {f"encoderblock_{i}": _hf_block(arrays, f"{prefix}{i}.", names, dw, dheads, dmlp, where)
               for i in range(ddepth)}
    decoder["encoder_norm"] = {"scale": np.asarray(arrays["decoder.decoder_norm.weight"], np.float32),
                               "bias": np.asarray(arrays["decoder.decoder_norm.bias"], np.float32)}
    params["Decoder"] = decoder
    pred_out = arrays["decoder.decoder_pred.weight"].shape[0]
    params["decoder_pred"] = _torch_linear(arrays, "decoder.decoder_pred", where, (pred_out, dw))

    grid = vit.grid_size
    dec_pos = np.asarray(arrays["decoder.decoder_pos_embed"], np.float32)
    fixed = (np.allclose(enc_pos, mae_lib.sincos_posemb(grid, vit.width), atol=1e-5)
             and dec_pos.shape == (1, grid[0] * grid[1] + 1, dw)
             and np.allclose(dec_pos, mae_lib.sincos_posemb(grid, dw), atol=1e-5))
    if not fixed:
        params["pos_embedding"] = enc_pos
        params["decoder_pos_embedding"] = dec_pos
    fields = dict(
        width=vit.width, depth=vit.depth, num_heads=vit.num_heads, mlp_dim=vit.mlp_dim,
        patch_size=vit.patch_size, image_size=vit.image_size, decoder_width=dw,
        decoder_depth=ddepth, decoder_num_heads=dheads, decoder_mlp_dim=dmlp,
        mask_ratio=float(config.get("mask_ratio", 0.75)),
        norm_pix_loss=bool(config.get("norm_pix_loss", False)),
        posemb="sincos" if fixed else "learn", layer_norm_eps=vit.layer_norm_eps,
        qkv_bias=vit.qkv_bias)
    fields.update(overrides)
    try:
        mae = mae_lib.mae_from_config(fields)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{where}: {e}") from None
    channels = params["embedding"]["kernel"].shape[2]
    if pred_out != mae.patch_size ** 2 * channels:
        raise WeightsError(
            f"{where}: decoder.decoder_pred.weight predicts {pred_out} values per patch, expected "
            f"patch_size**2 * channels = {mae.patch_size ** 2 * channels}")
    h, w = vit_lib.image_hw(mae.image_size)
    expected = jax.eval_shape(lambda: mae.init(
        {"params": jax.random.key(0), "masking": jax.random.key(1)},
        jnp.zeros((1, h, w, channels), jnp.float32)))["params"]
    got = jax.tree_util.tree_map(lambda a: np.shape(a), params)
    want = jax.tree_util.tree_map(lambda a: tuple(a.shape), expected)
    if got != want:
        raise WeightsError(f"{where}: converted MAE parameters do not match the model")
    info = dict(info, format="hf_vit_mae_pretraining", config=module_config(mae))
    return mae, jax.device_put(params), info
