"""Image encoders: from a spec to a ready ``images -> pooled features`` function.

Extraction (``abaw_jax.extract``), fine-tuning initialisation (``abaw_jax.pretrain``) and
prediction (``abaw_jax.predict``) all load their encoder with :func:`load_encoder`. A spec is one of

* a weights file or folder that :mod:`abaw_jax.models.weights` reads (ViT ``.npz``, timm /
  Hugging Face ``.safetensors``, torchvision / timm ResNet), the model kind told by its keys;
* an encoder directory holding ``encoder.json`` (below), as MAE pretraining and fine-tuning write;
* a random-init spec ``vit:<variant>[,field=value...]`` or ``resnet:<variant>[,...]`` (benchmarks
  and tests, e.g. ``vit:Ti/8,width=32,depth=2``; values are JSON where they parse as JSON);
* a bare variant name (``"B/16"``, ``"resnet18"``), also with random weights.

An encoder directory::

  {"format": "abaw_jax.encoder/1", "model": "vit" | "resnet",
   "config": {module fields as module_config writes them},
   "mean": [r, g, b], "std": [r, g, b],
   "params": "params.npz" | "<orbax checkpoint dir>"}

``params.npz`` holds the module's variables flattened to ``<collection>/<path>/<leaf>`` keys
(``params/Transformer/encoderblock_0/LayerNorm_0/scale``); an orbax directory holds the same
nested dict written by ``orbax.checkpoint.StandardCheckpointer``. :func:`save_encoder` writes
this format.

Every bad spec, encoder directory or weights file raises :class:`EncoderError` from
:func:`load_encoder`, naming the file and key (or the spec) at fault.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax.models import resnet as resnet_lib
from abaw_jax.models import vit as vit_lib
from abaw_jax.models import weights
from abaw_jax.models.weights import convert, files
from abaw_jax.models.weights.convert import HALF, IMAGENET_MEAN, IMAGENET_STD, module_config

__all__ = [
    "ENCODER_FILE", "ENCODER_FORMAT", "HALF", "IMAGENET_MEAN", "IMAGENET_STD", "Encoder",
    "EncoderError", "feature_fn", "load_encoder", "module_config", "parse_spec", "preprocess",
    "save_encoder", "store_encoder", "variant_name",
]

ENCODER_FORMAT = "abaw_jax.encoder/1"
ENCODER_FILE = "encoder.json"
KINDS = ("vit", "resnet")


class EncoderError(ValueError):
    """An encoder spec, encoder directory or weights file that cannot be loaded; names it."""


@dataclasses.dataclass
class Encoder:
    """An image encoder ready to run: ``fn(variables, images [B, H, W, C]) -> [B, dim]``.

    ``fn`` takes uint8 images (or floats in [0, 1]) and resizes and normalises them as the
    encoder expects (see :func:`feature_fn`). It is jittable but not jitted, so that each caller
    compiles it with its own shardings. ``variables`` is the full dict ``module.apply`` takes;
    ``info`` says where the encoder came from (``format``, ``path``, ``variant``, ``config``,
    ``dim``, ``mean``, ``std``, ``norm_source``, and ``seed`` for random weights).
    """

    spec: str
    module: nn.Module
    variables: dict[str, Any]
    info: dict[str, Any]
    fn: Callable[[Any, jax.Array], jax.Array]

    @property
    def dim(self) -> int:
        """Size of the pooled feature vector."""
        return int(self.info["dim"])


# ---------------------------------------------------------------------------------------------
# Specs.


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``(kind, variant, fields)`` of a random-init spec.

    ``"vit:Ti/8,depth=2"`` -> ``("vit", "Ti/8", {"depth": 2})``; a bare name is a variant of the
    kind whose variants include it (``"resnet18"`` -> ``("resnet", "resnet18", {})``; anything
    else is taken for a ViT variant, validated when the model is built).
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        return ("resnet" if spec in resnet_lib.VARIANTS else "vit"), spec, {}
    variant, fields = "", {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            if variant:
                raise EncoderError(f"encoder spec {spec!r}: two variants ({variant!r}, {item!r})")
            variant = item
            continue
        try:
            fields[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            fields[key.strip()] = value.strip()
    if not variant:
        raise EncoderError(f"encoder spec {spec!r}: no variant (e.g. 'vit:B/16' or 'resnet:resnet18')")
    if (kind == "resnet") != (variant in resnet_lib.VARIANTS):
        raise EncoderError(f"encoder spec {spec!r}: {variant!r} is not a {kind} variant")
    return kind, variant, fields


def variant_name(module: nn.Module) -> str | None:
    """The named variant the module's dims match (``"B/16"``, ``"resnet18"``), or None."""
    if isinstance(module, vit_lib.ViT):
        return vit_lib.variant_name(module.width, module.depth, module.num_heads, module.mlp_dim,
                                    module.patch_size)
    return resnet_lib.variant_name(module.block, module.stage_sizes, module.width)


def _loadable(spec: str) -> bool:
    """Whether ``spec`` is an existing path, a ``vit:`` / ``resnet:`` spec or a known variant."""
    if pathlib.Path(spec).expanduser().exists() or spec.startswith(("vit:", "resnet:")):
        return True
    if spec in resnet_lib.VARIANTS:
        return True
    try:
        vit_lib.decode_variant(spec)
    except ValueError:
        return False
    return True


def store_encoder(meta: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(spec, kwargs of load_encoder)`` that rebuild a feature store's encoder, or None.

    ``abaw_jax.extract`` records its encoder spec, pool, image size and seed in the store's
    ``meta.json`` ``params``; a store from elsewhere may name a spec in ``extractor``. None when
    neither names something loadable here (e.g. "demo:vit", or a weights path that is gone).
    """
    params = meta.get("params") if isinstance(meta.get("params"), Mapping) else {}
    spec = params.get("encoder") or meta.get("extractor") or ""
    if not isinstance(spec, str) or not _loadable(spec):
        return None
    kwargs: dict[str, Any] = {}
    if isinstance(params.get("pool"), str):
        kwargs["pool"] = params["pool"]
    size = params.get("image_size")
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        kwargs["image_size"] = size
    if isinstance(params.get("seed"), int) and not isinstance(params["seed"], bool):
        kwargs["seed"] = params["seed"]
    return spec, kwargs


# ---------------------------------------------------------------------------------------------
# Encoder directories.


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        if "/" in key:
            raise EncoderError(f"parameter name {prefix + key!r} contains '/'")
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = np.asarray(value)
    return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_encoder(
    directory: str | os.PathLike, module: nn.Module, variables: Mapping[str, Any], *,
    mean: Sequence[float], std: Sequence[float], params_format: str = "npz",
) -> pathlib.Path:
    """Writes an encoder directory (``encoder.json`` + ``params.npz`` or an orbax ``params/``).

    ``variables`` is the full dict ``module.apply`` takes (``{"params": ...}``, plus
    ``batch_stats`` for a ResNet); ``mean`` / ``std`` are the input normalisation in [0, 1] units.
    """
    directory = pathlib.Path(directory)
    if isinstance(module, vit_lib.ViT):
        model = "vit"
    elif isinstance(module, resnet_lib.ResNet):
        model = "resnet"
    else:
        raise EncoderError(f"{directory}: save_encoder takes a ViT or ResNet, got {type(module).__name__}")
    if params_format not in ("npz", "orbax"):
        raise EncoderError(f"params_format must be 'npz' or 'orbax', got {params_format!r}")
    directory.mkdir(parents=True, exist_ok=True)
    host = jax.device_get(dict(variables))
    if params_format == "npz":
        name = "params.npz"
        np.savez(directory / name, **_flatten(host))
    else:
        import orbax.checkpoint as ocp
        name = "params"
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save((directory / name).absolute(), host, force=True)
    spec = {"format": ENCODER_FORMAT, "model": model, "config": module_config(module),
            "mean": [float(m) for m in mean], "std": [float(s) for s in std], "params": name}
    (directory / ENCODER_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    return directory


def _read_encoder_dir(
    directory: pathlib.Path, vit_overrides: Mapping[str, Any], resnet_overrides: Mapping[str, Any],
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(module, variables, info)`` of an encoder directory written by :func:`save_encoder`."""
    path = directory / ENCODER_FILE
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EncoderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != ENCODER_FORMAT:
        raise EncoderError(f"{path}: key 'format' must be {ENCODER_FORMAT!r}")
    for key, kind in (("model", str), ("config", dict), ("mean", list), ("std", list), ("params", str)):
        if not isinstance(spec.get(key), kind):
            raise EncoderError(f"{path}: key {key!r} must be a {kind.__name__}, got {spec.get(key)!r}")
    if spec["model"] not in KINDS:
        raise EncoderError(f"{path}: key 'model' must be 'vit' or 'resnet', got {spec['model']!r}")

    saved = dict(spec["config"])
    fields = {**saved, **(vit_overrides if spec["model"] == "vit" else resnet_overrides)}
    try:
        if spec["model"] == "vit":
            module = vit_lib.vit_from_config(fields)
            sample = (1, *vit_lib.image_hw(module.image_size), 3)
        else:
            module = resnet_lib.resnet_from_config(fields)
            sample = (1, 64, 64, 3)
    except (TypeError, ValueError) as e:
        raise EncoderError(f"{path}: key 'config': {e}") from None

    params_path = directory / spec["params"]
    if params_path.is_dir():
        import orbax.checkpoint as ocp
        with ocp.StandardCheckpointer() as ckpt:
            variables = ckpt.restore(params_path.absolute())
    elif params_path.is_file():
        variables = _unflatten(files.read_npz(params_path))
    else:
        raise EncoderError(f"{path}: key 'params' names {params_path}, which does not exist")
    variables = jax.tree.map(lambda a: np.asarray(a, np.float32), variables)

    # A new image size needs the position embeddings on the new patch grid.
    resized = None
    if spec["model"] == "vit" and "image_size" in saved:
        old_hw = vit_lib.image_hw(saved["image_size"])
        old = (old_hw[0] // module.patch_size, old_hw[1] // module.patch_size)
        if old != module.grid_size:
            pos = variables.get("params", {}).get("pos_embedding")
            if pos is not None:
                variables["params"]["pos_embedding"] = weights.resample_posemb(
                    pos, module.grid_size, num_prefix_tokens=module.num_prefix_tokens,
                    old_grid=old, method="bicubic", antialias=True)
                new = module.grid_size
                resized = f"{old[0]}x{old[1]} -> {new[0]}x{new[1]} bicubic antialias"

    bad = convert.tree_mismatches(module, variables, sample)
    if bad:
        raise EncoderError(f"{params_path}: parameters do not match the model of {path}: "
                           f"{convert.listing(bad, 10)}")
    try:
        mean = tuple(float(m) for m in spec["mean"])
        std = tuple(float(s) for s in spec["std"])
    except (TypeError, ValueError):
        raise EncoderError(f"{path}: keys 'mean' and 'std' must be lists of numbers") from None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise EncoderError(f"{path}: bad normalisation mean {mean} / std {std}")
    dim = module.width if spec["model"] == "vit" else module.num_features
    info = dict(format="abaw_jax_encoder", path=str(directory), variant=variant_name(module),
                config=module_config(module), dim=dim, mean=mean, std=std,
                norm_source=ENCODER_FILE, posemb_resized=resized, ignored_keys=[])
    return module, jax.device_put(variables), info


# ---------------------------------------------------------------------------------------------
# Loading.


def _is_resnet_weights(path: pathlib.Path) -> bool:
    """Whether a weights file or folder holds a torchvision / timm ResNet state dict."""
    found, _ = files.resolve_files(path)
    if not all(f.suffix == ".safetensors" for f in found):
        return False  # ResNets come as safetensors only; .npz files are ViTs
    # Safetensors are memory-mapped, so peeking at the keys reads no tensor data.
    return convert.detect_format(files.read_arrays(found), str(path))[0] == "torch_resnet"


def _random_init(
    kind: str, variant: str, fields: Mapping[str, Any], seed: int,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(module, variables, info)`` of a ``kind`` variant with fields overridden, from ``seed``."""
    try:
        if kind == "resnet":
            module = resnet_lib.resnet_from_config({"variant": variant}, **fields)
            sample = (1, 64, 64, 3)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            module = vit_lib.vit_from_config({"variant": variant}, **fields)
            sample = (1, *vit_lib.image_hw(module.image_size), 3)
            mean, std = HALF, HALF
    except (TypeError, ValueError) as e:
        raise EncoderError(
            f"{variant!r} is neither an existing weights path nor a usable variant: {e}") from None
    variables = jax.jit(module.init)(jax.random.key(seed), jnp.zeros(sample, jnp.float32))
    info = dict(
        format="random", path=None, variant=variant, config=module_config(module),
        dim=module.num_features if kind == "resnet" else module.width, mean=mean, std=std,
        norm_source="random init", seed=seed, ignored_keys=[])
    return module, dict(variables), info


def load_encoder(
    spec: str | os.PathLike, *, pool: str = "", image_size: int = 0, dtype: Any = jnp.float32,
    seed: int = 0,
) -> Encoder:
    """The :class:`Encoder` a spec names (see the module docstring); raises :class:`EncoderError`.

    ``pool`` and ``image_size`` (0 / "": the encoder's own) apply to ViTs; a ResNet takes any
    image size, and its ``fn`` resizes the input to ``image_size`` when one is given. ``dtype``
    is the compute dtype; ``seed`` draws random weights.
    """
    vit_fields: dict[str, Any] = {"dtype": jnp.dtype(dtype)}
    if pool:
        vit_fields["pool"] = pool
    if image_size:
        vit_fields["image_size"] = int(image_size)
    resnet_fields = {"dtype": jnp.dtype(dtype)}

    path = pathlib.Path(spec).expanduser()
    try:
        if path.is_dir() and (path / ENCODER_FILE).is_file():
            module, variables, info = _read_encoder_dir(path, vit_fields, resnet_fields)
        elif path.exists() and _is_resnet_weights(path):
            module, variables, info = weights.load_resnet(path, **resnet_fields)
        elif path.exists():
            module, params, info = weights.load_vit(path, **vit_fields)
            variables = {"params": params}
        else:
            kind, variant, fields = parse_spec(str(spec))
            fields = {**fields, **(vit_fields if kind == "vit" else resnet_fields)}
            module, variables, info = _random_init(kind, variant, fields, seed)
    except weights.WeightsError as e:
        # One error class for callers; the reader's message already names the file and key.
        raise EncoderError(str(e)) from e
    # A ViT's fn resizes to its own image size; a ResNet's only to a size asked for.
    resize = int(image_size) if image_size and isinstance(module, resnet_lib.ResNet) else None
    return Encoder(str(spec), module, variables, info, feature_fn(module, info, image_size=resize))


# ---------------------------------------------------------------------------------------------
# Images -> features.


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
    size and are resized only when ``image_size`` is given. ``info`` gives ``mean`` and ``std``.
    """
    if image_size is None and isinstance(module, vit_lib.ViT):
        image_size = module.image_size
    mean, std = tuple(info["mean"]), tuple(info["std"])
    dtype = getattr(module, "dtype", jnp.float32)

    def apply(variables: Any, images: jax.Array) -> jax.Array:
        x = preprocess(images, mean=mean, std=std, image_size=image_size, dtype=dtype)
        return module.apply(variables, x)[0]

    return apply
