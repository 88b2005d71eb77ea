"""Masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners").

The encoder is :class:`abaw_jax.models.vit.ViT`'s, applied to the visible patches only; its
parameters sit at the same paths as a ViT's (``embedding``, ``cls``, ``Transformer/...``), so
:func:`encoder_params` hands them to a plain ViT for fine-tuning and for feature extraction
(``abaw_jax.models.encoders.save_encoder`` writes them as an encoder directory). The
decoder is a narrower Transformer over all patches (mask tokens where the encoder saw nothing)
that predicts the ``patch_size**2 * C`` pixels of every patch::

    embedding/{kernel, bias}, cls, [pos_embedding]        encoder (ViT layout)
    Transformer/encoderblock_<i>/..., Transformer/encoder_norm
    decoder_embed/{kernel, bias}, mask_token, [decoder_pos_embedding]
    Decoder/encoderblock_<i>/..., Decoder/encoder_norm
    decoder_pred/{kernel, bias}

Position embeddings are MAE's fixed 2-D sin-cos tables (not parameters) with ``posemb="sincos"``,
or parameters with ``posemb="learn"`` (used when a checkpoint's tables are not the sin-cos ones).

Masking follows the reference: per image, ``ids_shuffle = argsort(noise)``, the first
``int(N * (1 - mask_ratio))`` patches of that order stay visible, ``ids_restore =
argsort(ids_shuffle)`` puts the decoder tokens back in place, and ``mask`` is 1 on hidden
patches. The loss is the per-pixel MSE averaged over hidden patches only; with
``norm_pix_loss`` each target patch is normalised by its own mean and (unbiased, as
``torch.var``) variance.

Hugging Face ``ViTMAEForPreTraining`` checkpoints load with
:func:`abaw_jax.models.weights.load_hf_mae`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from abaw_jax.models import linear
from abaw_jax.models import vit as vit_lib

POSEMBS = ("sincos", "learn")


# ---------------------------------------------------------------------------------------------
# Pure helpers.


def sincos_posemb(grid: tuple[int, int], dim: int, *, class_token: bool = True) -> np.ndarray:
    """MAE's fixed 2-D sin-cos table ``[1, (1 +) gh * gw, dim]`` float32, zero row for the class token.

    Layout per position (as in the MAE repository, whose grid naming puts the column first):
    ``[sin(col w), cos(col w), sin(row w), cos(row w)]`` with ``w = 10000 ** -(k / (dim / 4))``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    gh, gw = grid
    omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64),
                             indexing="ij")
    by_col = np.outer(cols.reshape(-1), omega)
    by_row = np.outer(rows.reshape(-1), omega)
    table = np.concatenate([np.sin(by_col), np.cos(by_col), np.sin(by_row), np.cos(by_row)], axis=1)
    if class_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return table[None].astype(np.float32)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, N, p * p * C]``, patches row-major, pixels ordered (row, col, channel)."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, grid: tuple[int, int]) -> jax.Array:
    """Inverse of :func:`patchify`: ``[B, N, p * p * C]`` -> ``[B, gh * p, gw * p, C]``."""
    b, n, d = patches.shape
    p = patch_size
    gh, gw = grid
    c = d // (p * p)
    x = patches.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, c)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches the encoder sees: ``int(N * (1 - mask_ratio))``, as in the reference."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(
    x: jax.Array, noise: jax.Array, mask_ratio: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(visible [B, keep, D], mask [B, N] (1 = hidden), ids_restore [B, N])`` from per-patch noise."""
    b, n, _ = x.shape
    keep = num_visible(n, mask_ratio)
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    visible = jnp.take_along_axis(x, ids_shuffle[:, :keep, None], axis=1)
    mask = jnp.ones((b, n), jnp.float32).at[:, :keep].set(0.0)
    mask = jnp.take_along_axis(mask, ids_restore, axis=1)
    return visible, mask, ids_restore


def patch_targets(images: jax.Array, patch_size: int, norm_pix_loss: bool) -> jax.Array:
    """Per-patch pixel targets ``[B, N, p * p * C]`` float32, normalised per patch when asked."""
    target = patchify(images.astype(jnp.float32), patch_size)
    if norm_pix_loss:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    return target


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over hidden patches of the per-patch pixel MSE."""
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ---------------------------------------------------------------------------------------------
# Model.


class MAEOutput(NamedTuple):
    """What :class:`MAE` returns: the loss and the per-patch predictions, mask and restore order."""

    loss: jax.Array          # [] float32
    pred: jax.Array          # [B, N, p * p * C] float32 (normalised-patch space with norm_pix_loss)
    mask: jax.Array          # [B, N] float32, 1 on hidden patches
    ids_restore: jax.Array   # [B, N] int32


class MAE(nn.Module):
    """ViT masked autoencoder: ``__call__(images [B, H, W, C], *, train, noise=None) -> MAEOutput``.

    ``noise`` ``[B, N]`` fixes the masking (tests, evaluation); without it, uniform noise is drawn
    from the ``"masking"`` rng. ``train`` enables dropout and stochastic depth only: masking is
    always applied, it is the task.
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    image_size: int | tuple[int, int] = 224
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_mlp_dim: int = 2048
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    posemb: str = "sincos"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str | None = None

    def __post_init__(self):
        if self.posemb not in POSEMBS:
            raise ValueError(f"MAE posemb must be one of {POSEMBS}, got {self.posemb!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"MAE mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for name, width, heads in (("", self.width, self.num_heads),
                                   ("decoder_", self.decoder_width, self.decoder_num_heads)):
            if width % heads:
                raise ValueError(f"MAE {name}width {width} is not divisible by {name}num_heads {heads}")
        h, w = vit_lib.image_hw(self.image_size)
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"MAE image_size {(h, w)} is not a multiple of patch_size {self.patch_size}")
        super().__post_init__()

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid ``(rows, cols)``."""
        h, w = vit_lib.image_hw(self.image_size)
        return h // self.patch_size, w // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per image."""
        gh, gw = self.grid_size
        return gh * gw

    def _posemb(self, name: str, dim: int) -> jax.Array:
        table = sincos_posemb(self.grid_size, dim)
        if self.posemb == "sincos":
            return jnp.asarray(table)
        return self.param(name, lambda *_: jnp.asarray(table, self.param_dtype))

    def _encoder(self, depth, heads, mlp, name):
        return vit_lib.Encoder(
            depth, heads, mlp, self.layer_norm_eps, self.qkv_bias, True, 0.0,
            self.drop_path_rate, self.dtype, self.param_dtype, self.attention_impl, name=name)

    def encode(self, images: jax.Array, noise: jax.Array, *, train: bool):
        """Visible tokens after the encoder ``[B, 1 + keep, D]``, with mask and ids_restore."""
        p, dtype = self.patch_size, jnp.dtype(self.dtype)
        # Initialised as a Linear over the flattened patch, like the reference.
        patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform",
                                                      in_axis=(0, 1, 2), out_axis=-1)
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=dtype,
                    param_dtype=self.param_dtype, kernel_init=patch_init,
                    name="embedding")(images.astype(dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, self.width)
        pos = self._posemb("pos_embedding", self.width).astype(dtype)
        x, mask, ids_restore = random_masking(x + pos[:, 1:], noise, self.mask_ratio)
        cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, self.width), self.param_dtype)
        cls = cls.astype(dtype) + pos[:, :1]
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), x], axis=1)
        x = self._encoder(self.depth, self.num_heads, self.mlp_dim, "Transformer")(x, train=train)
        return x, mask, ids_restore

    def decode(self, latent: jax.Array, ids_restore: jax.Array, channels: int, *,
               train: bool) -> jax.Array:
        """Pixel predictions ``[B, N, p * p * C]`` float32 from the encoder's visible tokens."""
        dtype = jnp.dtype(self.dtype)
        dense = functools.partial(linear.Dense, dtype=dtype, param_dtype=self.param_dtype,
                                  kernel_init=nn.initializers.xavier_uniform())
        x = dense(self.decoder_width, name="decoder_embed")(latent)
        b, n = ids_restore.shape
        mask_token = self.param("mask_token", nn.initializers.normal(0.02),
                                (1, 1, self.decoder_width), self.param_dtype)
        hidden = jnp.broadcast_to(mask_token.astype(dtype), (b, n + 1 - x.shape[1], self.decoder_width))
        patches = jnp.concatenate([x[:, 1:], hidden], axis=1)
        patches = jnp.take_along_axis(patches, ids_restore[:, :, None], axis=1)
        x = jnp.concatenate([x[:, :1], patches], axis=1)
        x = x + self._posemb("decoder_pos_embedding", self.decoder_width).astype(dtype)
        x = self._encoder(self.decoder_depth, self.decoder_num_heads, self.decoder_mlp_dim,
                          "Decoder")(x, train=train)
        pred = dense(self.patch_size ** 2 * channels, name="decoder_pred")(x)
        return pred[:, 1:].astype(jnp.float32)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False,
                 noise: jax.Array | None = None) -> MAEOutput:
        hw = vit_lib.image_hw(self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:3]) != hw:
            raise ValueError(f"MAE expects images [B, {hw[0]}, {hw[1]}, C], got {tuple(images.shape)}")
        b = images.shape[0]
        if noise is None:
            noise = jax.random.uniform(self.make_rng("masking"), (b, self.num_patches))
        elif tuple(noise.shape) != (b, self.num_patches):
            raise ValueError(f"MAE noise must be [B, N] = {[b, self.num_patches]}, got {list(noise.shape)}")
        latent, mask, ids_restore = self.encode(images, noise, train=train)
        pred = self.decode(latent, ids_restore, images.shape[-1], train=train)
        target = patch_targets(images, self.patch_size, self.norm_pix_loss)
        return MAEOutput(masked_mse(pred, target, mask), pred, mask, ids_restore.astype(jnp.int32))


# ---------------------------------------------------------------------------------------------
# Configs and the encoder as a plain ViT.


def default_config() -> ml_collections.ConfigDict:
    """MAE ViT-B/16 at 224 px with the reference's 8 x 512 decoder (16 heads)."""
    return ml_collections.ConfigDict(dict(
        width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16, image_size=224,
        decoder_width=512, decoder_depth=8, decoder_num_heads=16, decoder_mlp_dim=2048,
        mask_ratio=0.75, norm_pix_loss=False, posemb="sincos", layer_norm_eps=1e-6,
        qkv_bias=True, drop_path_rate=0.0))


def tiny_config() -> ml_collections.ConfigDict:
    """A 2-layer, 32-wide MAE on 32 px images with 8 px patches and a 1 x 32 decoder, for tests."""
    c = default_config()
    c.update(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, image_size=32,
             decoder_width=32, decoder_depth=1, decoder_num_heads=2, decoder_mlp_dim=64)
    return c


def mae_from_config(config: Mapping[str, Any] | ml_collections.ConfigDict, **overrides) -> MAE:
    """Build an :class:`MAE` from a config; unknown keys are an error naming them."""
    fields = dict(config.items() if hasattr(config, "items") else config)
    fields.update(overrides)
    known = set(MAE.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown MAE config keys {unknown}; known: {sorted(known)}")
    if isinstance(fields.get("image_size"), list):
        fields["image_size"] = tuple(fields["image_size"])
    for key in ("dtype", "param_dtype"):
        if key in fields:
            fields[key] = jnp.dtype(fields[key])
    return MAE(**fields)


def encoder_vit(mae: MAE, **overrides) -> vit_lib.ViT:
    """The plain :class:`~abaw_jax.models.vit.ViT` with the MAE encoder's architecture.

    Defaults to average pooling over patch tokens after the final LayerNorm (``pool="gap"``),
    the representation MAE fine-tuning starts from; ``overrides`` are ViT fields.
    """
    fields = dict(
        width=mae.width, depth=mae.depth, num_heads=mae.num_heads, mlp_dim=mae.mlp_dim,
        patch_size=mae.patch_size, image_size=mae.image_size, class_token=True, pool="gap",
        final_norm=True, fc_norm=False, layer_norm_eps=mae.layer_norm_eps, qkv_bias=mae.qkv_bias,
        dtype=mae.dtype, param_dtype=mae.param_dtype, attention_impl=mae.attention_impl)
    fields.update(overrides)
    return vit_lib.ViT(**fields)


def encoder_params(mae: MAE, params: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder's parameters in the plain ViT layout (sin-cos tables become ``pos_embedding``)."""
    out = {k: params[k] for k in ("embedding", "cls", "Transformer")}
    if "pos_embedding" in params:
        out["pos_embedding"] = params["pos_embedding"]
    else:
        out["pos_embedding"] = jnp.asarray(sincos_posemb(mae.grid_size, mae.width), mae.param_dtype)
    return out

