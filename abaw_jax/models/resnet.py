"""ResNet image encoder in the torchvision layout (ResNet-18/34 basic blocks, 50/101/152 bottlenecks).

Module names mirror torchvision's state-dict keys so that weights map one to one
(``layer2.0.downsample.1.running_mean`` -> ``layer2_0/downsample_1`` in ``batch_stats``); the
conversion from ``.safetensors`` files lives in ``abaw_jax.models.weights.load_resnet``.
Bottlenecks put the stride on the 3x3 convolution ("ResNet v1.5", as torchvision and timm do).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

# block type and blocks per stage, as in "Deep Residual Learning for Image Recognition".
VARIANTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
BLOCKS = ("basic", "bottleneck")
EXPANSION = {"basic": 1, "bottleneck": 4}


def decode_variant(variant: str) -> dict[str, Any]:
    """``"resnet50"`` -> ``{"block": "bottleneck", "stage_sizes": (3, 4, 6, 3)}``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ResNet variant {variant!r}; known: {sorted(VARIANTS)}")
    block, stages = VARIANTS[variant]
    return dict(block=block, stage_sizes=stages)


def variant_name(block: str, stage_sizes: Sequence[int], width: int = 64) -> str | None:
    """The named variant with this block type and stage sizes (standard width 64), or None."""
    for name, (b, stages) in VARIANTS.items():
        if b == block and tuple(stages) == tuple(stage_sizes) and width == 64:
            return name
    return None


def _conv(features: int, kernel: int, strides: int, dtype: Any, name: str) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
        features, (kernel, kernel), strides=(strides, strides), padding=((pad, pad), (pad, pad)),
        use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"), name=name)


def _batch_norm(dtype: Any, name: str, zero_scale: bool = False) -> nn.BatchNorm:
    return nn.BatchNorm(
        momentum=0.9, epsilon=1e-5, dtype=dtype,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        norm = functools.partial(_batch_norm, self.dtype)
        ra = not train
        y = _conv(self.features, 3, self.strides, self.dtype, "conv1")(x)
        y = nn.relu(norm("bn1")(y, use_running_average=ra))
        y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
        # Zero-initialised last scale: a fresh block starts as the identity (Goyal et al. 2017).
        y = norm("bn2", zero_scale=True)(y, use_running_average=ra)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = _conv(self.features, 1, self.strides, self.dtype, "downsample_0")(x)
            x = norm("downsample_1")(x, use_running_average=ra)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions, 4x expansion (ResNet-50/101/152)."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        norm = functools.partial(_batch_norm, self.dtype)
        ra = not train
        out = self.features * EXPANSION["bottleneck"]
        y = _conv(self.features, 1, 1, self.dtype, "conv1")(x)
        y = nn.relu(norm("bn1")(y, use_running_average=ra))
        y = _conv(self.features, 3, self.strides, self.dtype, "conv2")(y)
        y = nn.relu(norm("bn2")(y, use_running_average=ra))
        y = _conv(out, 1, 1, self.dtype, "conv3")(y)
        y = norm("bn3", zero_scale=True)(y, use_running_average=ra)
        if self.strides != 1 or x.shape[-1] != out:
            x = _conv(out, 1, self.strides, self.dtype, "downsample_0")(x)
            x = norm("downsample_1")(x, use_running_average=ra)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet returning ``(pooled [B, 8 * width * expansion] float32, logits [B, num_classes] | None)``.

    ``pooled`` is the global average of the last stage (512-d for ResNet-18/34, 2048-d for
    ResNet-50+), i.e. the feature without the fc layer; ``logits`` is None when ``num_classes`` is
    0. Images are ``[B, H, W, C]``, already normalised; any size works. BatchNorm uses the running
    statistics unless ``train`` (then ``batch_stats`` must be mutable).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    width: int = 64
    num_classes: int = 0
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.block not in BLOCKS:
            raise ValueError(f"ResNet block must be one of {BLOCKS}, got {self.block!r}")
        super().__post_init__()

    @property
    def num_features(self) -> int:
        """Size of the pooled feature."""
        return self.width * 2 ** (len(self.stage_sizes) - 1) * EXPANSION[self.block]

    @nn.compact
    def __call__(
        self, images: jax.Array, *, train: bool = False,
    ) -> tuple[jax.Array, jax.Array | None]:
        dtype = jnp.dtype(self.dtype)
        block_cls = BasicBlock if self.block == "basic" else Bottleneck
        x = _conv(self.width, 7, 2, dtype, "conv1")(images.astype(dtype))
        x = nn.relu(_batch_norm(dtype, "bn1")(x, use_running_average=not train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = block_cls(
                    self.width * 2 ** i, strides, dtype, name=f"layer{i + 1}_{j}")(x, train=train)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = None
        if self.num_classes:
            logits = nn.Dense(self.num_classes, name="fc")(pooled)
        return pooled, logits


def default_config() -> ml_collections.ConfigDict:
    """ResNet-18 feature extractor (system C's 512-d frame features), no classifier."""
    return ml_collections.ConfigDict(dict(
        variant="resnet18",
        # Explicit block / stage_sizes override the variant's.
        block=config_dict.placeholder(str),
        stage_sizes=config_dict.placeholder(tuple),
        width=64,
        num_classes=0,
        dtype="float32",
    ))


def tiny_config() -> ml_collections.ConfigDict:
    """An 8-wide basic-block ResNet with one block per stage, for tests."""
    config = default_config()
    config.variant = None
    config.block = "basic"
    config.stage_sizes = (1, 1, 1, 1)
    config.width = 8
    return config


def resnet_from_config(config: Mapping[str, Any] | ml_collections.ConfigDict, **overrides) -> ResNet:
    """Build a :class:`ResNet` from a config (``variant`` plus optional explicit fields)."""
    fields = dict(config.items() if hasattr(config, "items") else config)
    fields.update(overrides)
    variant = fields.pop("variant", None)
    arch = decode_variant(variant) if variant else {}
    for name in ("block", "stage_sizes"):
        if fields.get(name) is not None:
            arch[name] = fields[name]
        fields.pop(name, None)
    missing = [name for name in ("block", "stage_sizes") if name not in arch]
    if missing:
        raise ValueError(f"ResNet config has no variant and no value for {missing}")
    known = set(ResNet.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown ResNet config keys {unknown}; known: {sorted(known | {'variant'})}")
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    arch["stage_sizes"] = tuple(arch["stage_sizes"])
    return ResNet(**arch, **fields)
