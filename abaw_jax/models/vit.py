"""Vision Transformer image encoder (pre-norm, as in ViT, timm and Hugging Face).

The parameter tree follows big_vision's unscanned layout, so original ViT ``.npz`` checkpoints map
onto it by a few renames (see ``abaw_jax.models.weights``)::

    embedding/{kernel [p, p, C, D], bias}        patch projection (a strided convolution)
    cls [1, 1, D]                                 class token (when ``class_token``)
    pos_embedding [1, N, D]                       learned, covers the class token too
    Transformer/encoderblock_<i>/LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out},
                                 LayerNorm_1, MlpBlock_0/{Dense_0,Dense_1}
    Transformer/encoder_norm                      final LayerNorm on all tokens (``final_norm``)
    fc_norm                                       LayerNorm on the pooled vector (``fc_norm``)
    pooler/{kernel, bias}                         Dense + tanh on the class token (``pool="pooler"``)

Variants are named ``"<size>/<patch>"`` (``"Ti/16"``, ``"B/16"``, ``"L/14"``, ``"S/32"``, ...) and
are decoded only by :func:`decode_variant`.

Pretrained weights are loaded by ``abaw_jax.models.weights.load_vit``; at an image size other than
the checkpoint's it resamples the position embeddings the way the checkpoint's library does
(timm state dicts: bicubic with antialiasing; ``.npz``: bilinear; Hugging Face: bicubic).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from abaw_jax.models import attention
from abaw_jax.models import linear

# width, depth, heads, mlp_dim as in "An Image is Worth 16x16 Words" (Ti and S from DeiT / AugReg).
VARIANT_DIMS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}
POOLS = ("cls", "mean", "gap", "pooler")
DIM_FIELDS = ("width", "depth", "num_heads", "mlp_dim", "patch_size")


def decode_variant(variant: str) -> dict[str, int]:
    """``"B/16"`` -> ``{"width": 768, "depth": 12, "num_heads": 12, "mlp_dim": 3072, "patch_size": 16}``."""
    size, sep, patch = variant.partition("/")
    if not sep or size not in VARIANT_DIMS or not patch.isdigit() or int(patch) <= 0:
        raise ValueError(
            f"unknown ViT variant {variant!r}: expected '<size>/<patch>' with size in "
            f"{sorted(VARIANT_DIMS)} and a positive patch size, e.g. 'B/16'")
    width, depth, heads, mlp = VARIANT_DIMS[size]
    return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=int(patch))


def variant_name(width: int, depth: int, num_heads: int, mlp_dim: int, patch_size: int) -> str | None:
    """The named variant with exactly these dims (e.g. ``"B/16"``), or None."""
    for size, dims in VARIANT_DIMS.items():
        if dims == (width, depth, num_heads, mlp_dim):
            return f"{size}/{patch_size}"
    return None


def image_hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; ``(h, w)`` unchanged."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def _as_dtype(dtype: Any) -> jnp.dtype:
    return jnp.dtype(dtype)


class Attention(nn.Module):
    """Multi-head self-attention; the kernel is ``attention.dot_product_attention``'s choice."""

    num_heads: int
    qkv_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        head_dim = width // self.num_heads
        dense = functools.partial(
            linear.DenseGeneral, features=(self.num_heads, head_dim), dtype=self.dtype,
            param_dtype=self.param_dtype, kernel_init=nn.initializers.xavier_uniform())
        q = dense(use_bias=self.qkv_bias, name="query")(x)
        k = dense(use_bias=self.qkv_bias, name="key")(x)
        v = dense(use_bias=self.qkv_bias, name="value")(x)
        y = attention.dot_product_attention(q, k, v, implementation=self.implementation)
        return linear.DenseGeneral(
            width, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(), name="out")(y)


class MlpBlock(nn.Module):
    """Dense -> exact GELU -> Dense (timm and Hugging Face use the erf GELU, not the tanh one)."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dense = functools.partial(
            linear.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6))
        y = dense(self.mlp_dim, name="Dense_0")(x)
        y = nn.gelu(y, approximate=False)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        y = dense(x.shape[-1], name="Dense_1")(y)
        return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        norm = functools.partial(
            nn.LayerNorm, epsilon=self.layer_norm_eps, dtype=self.dtype,
            param_dtype=self.param_dtype, use_fast_variance=False)
        # Stochastic depth drops the whole residual branch of a sample: one draw per batch row.
        drop_path = functools.partial(nn.Dropout, self.drop_path_rate, broadcast_dims=(1, 2))

        y = norm(name="LayerNorm_0")(x)
        y = Attention(
            self.num_heads, self.qkv_bias, self.dtype, self.param_dtype, self.attention_impl,
            name="MultiHeadDotProductAttention_0")(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        x = x + drop_path()(y, deterministic=not train)

        y = norm(name="LayerNorm_1")(x)
        y = MlpBlock(
            self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype, name="MlpBlock_0")(
                y, train=train)
        return x + drop_path()(y, deterministic=not train)


class Encoder(nn.Module):
    """A stack of ``depth`` encoder blocks, then the final LayerNorm when ``final_norm``."""

    depth: int
    num_heads: int
    mlp_dim: int
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    final_norm: bool = True
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for i in range(self.depth):
            # Linear stochastic-depth schedule over the blocks, as in DeiT / timm.
            rate = self.drop_path_rate * i / max(self.depth - 1, 1)
            x = EncoderBlock(
                self.num_heads, self.mlp_dim, self.layer_norm_eps, self.qkv_bias,
                self.dropout_rate, rate, self.dtype, self.param_dtype, self.attention_impl,
                name=f"encoderblock_{i}")(x, train=train)
        if self.final_norm:
            x = nn.LayerNorm(
                epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                use_fast_variance=False, name="encoder_norm")(x)
        return x


class ViT(nn.Module):
    """Vision Transformer returning ``(pooled [B, width] float32, tokens [B, N, width])``.

    Images are ``[B, H, W, C]`` with ``(H, W) == image_size``, already normalised. ``tokens`` hold
    the class token first (when present), then the patches in row-major order, after the final
    LayerNorm. Pooling:

    * ``"gap"``: the average of the patch tokens only, class token excluded (timm's
      ``global_pool="avg"``). With the final LayerNorm this is system A's pooling as its paper
      states it (§3.1: "average pooling to the output of the last layer" instead of the "cls"
      token, after "Better plain ViT baselines", which averages patch tokens); the authors' 2025
      code averages ``last_hidden_state[:, 1:]`` the same way.
    * ``"pooler"``: Hugging Face ``ViTModel``'s ``pooler_output``, tanh(Dense(h_L[CLS])) with
      h_L after the final LayerNorm (the original ViT's "pre-logits" layer): what system A's
      released extraction notebook used. Needs a class token and the final LayerNorm; its
      weights (``pooler.dense.*`` in HF files, ``pre_logits/*`` in original ``.npz`` files) are
      loaded by ``abaw_jax.models.weights.load_vit``.
    * ``"cls"``: the class token.
    * ``"mean"``: the average of all tokens including the class token (no published system).

    With ``fc_norm`` the LayerNorm is applied to the pooled vector instead of the tokens (timm
    avg-pool / MAE fine-tuned models).
    Parameters are ``param_dtype`` (float32); ``dtype`` is the compute dtype (bfloat16 on GPU/TPU).
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    image_size: int | tuple[int, int] = 224
    class_token: bool = True
    pool: str = "mean"
    final_norm: bool = True
    fc_norm: bool = False
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str | None = None

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"ViT pool must be one of {POOLS}, got {self.pool!r}")
        if self.pool in ("cls", "pooler") and not self.class_token:
            raise ValueError(f"ViT pool={self.pool!r} needs class_token=True")
        if self.pool == "pooler" and not self.final_norm:
            raise ValueError("ViT pool='pooler' needs final_norm=True (the pooler reads the class "
                             "token after the final LayerNorm)")
        if self.width % self.num_heads:
            raise ValueError(f"ViT width {self.width} is not divisible by num_heads {self.num_heads}")
        h, w = image_hw(self.image_size)
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"ViT image_size {(h, w)} is not a multiple of patch_size {self.patch_size}")
        if self.final_norm and self.fc_norm:
            raise ValueError("ViT final_norm and fc_norm are exclusive (timm has one or the other)")
        super().__post_init__()

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: 1 with a class token, else 0."""
        return int(self.class_token)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid ``(rows, cols)`` at ``image_size``."""
        h, w = image_hw(self.image_size)
        return h // self.patch_size, w // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Sequence length: prefix tokens plus patches."""
        gh, gw = self.grid_size
        return self.num_prefix_tokens + gh * gw

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        dtype = _as_dtype(self.dtype)
        if images.ndim != 4 or tuple(images.shape[1:3]) != image_hw(self.image_size):
            raise ValueError(
                f"ViT expects images [B, {image_hw(self.image_size)[0]}, "
                f"{image_hw(self.image_size)[1]}, C], got shape {tuple(images.shape)}")
        p = self.patch_size
        x = nn.Conv(
            self.width, (p, p), strides=(p, p), padding="VALID", dtype=dtype,
            param_dtype=self.param_dtype, name="embedding")(images.astype(dtype))
        b, gh, gw, c = x.shape
        x = x.reshape(b, gh * gw, c)
        if self.class_token:
            cls = self.param("cls", nn.initializers.zeros, (1, 1, c), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, c)), x], axis=1)
        pos = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.02), (1, x.shape[1], c),
            self.param_dtype)
        x = x + pos.astype(dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

        tokens = Encoder(
            self.depth, self.num_heads, self.mlp_dim, self.layer_norm_eps, self.qkv_bias,
            self.final_norm, self.dropout_rate, self.drop_path_rate, dtype, self.param_dtype,
            self.attention_impl, name="Transformer")(x, train=train)

        # Averages in float32: a bf16 sum over hundreds of tokens loses most of its mantissa.
        if self.pool == "cls":
            pooled = tokens[:, 0].astype(jnp.float32)
        elif self.pool == "pooler":
            pooled = jnp.tanh(nn.Dense(
                self.width, dtype=jnp.float32, param_dtype=self.param_dtype,
                kernel_init=nn.initializers.normal(stddev=0.02), name="pooler")(
                    tokens[:, 0].astype(jnp.float32)))
        elif self.pool == "mean":
            pooled = jnp.mean(tokens.astype(jnp.float32), axis=1)
        else:
            pooled = jnp.mean(tokens[:, self.num_prefix_tokens:].astype(jnp.float32), axis=1)
        if self.fc_norm:
            pooled = nn.LayerNorm(
                epsilon=self.layer_norm_eps, param_dtype=self.param_dtype,
                use_fast_variance=False, name="fc_norm")(pooled)
        return pooled.astype(jnp.float32), tokens


def default_config() -> ml_collections.ConfigDict:
    """ViT-B/16 at 224 px averaging the patch tokens after the final LayerNorm (``pool="gap"``):
    system A's frame encoder as its paper describes it (§3.1)."""
    return ml_collections.ConfigDict(dict(
        variant="B/16",
        # Explicit dims override the variant's; left unset they come from it.
        width=config_dict.placeholder(int),
        depth=config_dict.placeholder(int),
        num_heads=config_dict.placeholder(int),
        mlp_dim=config_dict.placeholder(int),
        patch_size=config_dict.placeholder(int),
        image_size=224,
        class_token=True,
        pool="gap",
        final_norm=True,
        fc_norm=False,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        dropout_rate=0.0,
        drop_path_rate=0.0,
        dtype="float32",
    ))


def tiny_config() -> ml_collections.ConfigDict:
    """A 2-layer, 32-wide ViT on 32 px images with 8 px patches, for tests."""
    config = default_config()
    config.variant = None
    config.width, config.depth, config.num_heads, config.mlp_dim = 32, 2, 2, 64
    config.patch_size = 8
    config.image_size = 32
    return config


def vit_from_config(config: Mapping[str, Any] | ml_collections.ConfigDict, **overrides) -> ViT:
    """Build a :class:`ViT` from a config (``variant`` plus optional explicit dims and fields)."""
    fields = dict(config.items() if hasattr(config, "items") else config)
    fields.update(overrides)
    variant = fields.pop("variant", None)
    dims = decode_variant(variant) if variant else {}
    for name in DIM_FIELDS:
        if fields.get(name) is not None:
            dims[name] = fields[name]
        fields.pop(name, None)
    missing = [name for name in DIM_FIELDS if name not in dims]
    if missing:
        raise ValueError(f"ViT config has no variant and no value for {missing}")
    known = set(ViT.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown ViT config keys {unknown}; known: {sorted(known | {'variant'})}")
    if isinstance(fields.get("image_size"), list):
        fields["image_size"] = tuple(fields["image_size"])
    for key in ("dtype", "param_dtype"):
        if key in fields:
            fields[key] = _as_dtype(fields[key])
    return ViT(**dims, **fields)
