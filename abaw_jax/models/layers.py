"""Transformer building blocks shared by the temporal models (flax.linen).

All modules compute in `dtype` (bfloat16 on accelerators) and keep float32 parameters
(`param_dtype`). Attention is `abaw_jax.models.attention.dot_product_attention`, whose kernel is
chosen by `attention_impl`: "default" (head-major einsums on CPU, JAX's choice elsewhere),
"einsum", "xla" or "cudnn" (cuDNN flash attention: GPU only, bfloat16/float16 compute, head dim a
multiple of 8).

Key masking: a boolean `key_mask` [B, L] says which frames may be attended to (real frames with a
face). Every query attends only to allowed keys. A row with no allowed key at all (a window of
padding or of frames without a face) attends to all its keys instead, so its outputs stay finite
(a softmax over nothing is NaN); whatever those frames predict is then masked out of the loss by
their labels or ignored at assembly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax.models import attention as attention_lib
from abaw_jax.models import linear

Dtype = Any

NORMS = ("post", "pre")
ACTIVATIONS = ("relu", "gelu")

_dense_init = nn.initializers.xavier_uniform()


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raises ValueError naming `key` when `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {choices}, got {value!r}")


def sinusoidal_positions(length: int, dim: int, max_timescale: float = 10_000.0) -> np.ndarray:
    """The fixed position table of "Attention is all you need": float32 [length, dim].

    PE[t, 2i] = sin(t / max_timescale^(2i / dim)) and PE[t, 2i + 1] = cos(same angle).
    """
    positions = np.arange(length, dtype=np.float64)[:, None]
    even = np.arange(0, dim, 2, dtype=np.float64)
    angles = positions / max_timescale ** (even / dim)
    table = np.zeros((length, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : dim // 2])
    return table.astype(np.float32)


def attention_mask(key_mask: jax.Array) -> jax.Array:
    """Key mask [B, L] -> attention mask [B, 1, 1, L]; a row with no allowed key allows all."""
    key_mask = jnp.asarray(key_mask, bool)
    allowed = key_mask | ~jnp.any(key_mask, axis=-1, keepdims=True)
    return allowed[:, None, None, :]


class LearnedPositions(nn.Module):
    """Adds a learned position embedding (one float32 row per position, up to max_len) to x."""

    max_len: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        length, dim = x.shape[-2:]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        table = self.param("embedding", nn.initializers.normal(stddev=0.02),
                           (self.max_len, dim), self.param_dtype)
        return x.astype(self.dtype) + table[:length].astype(self.dtype)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with a key mask (`attention.dot_product_attention`).

    `dropout_rate` drops attention weights when `deterministic` is False (rng "dropout"), as
    torch.nn.MultiheadAttention does; such calls run the einsum kernel (the fused ones take no
    dropout), calls without dropout keep `attention_impl`.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "default"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None, *,
                 deterministic: bool = True) -> jax.Array:
        dim = x.shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"model width {dim} is not divisible by num_heads {self.num_heads}")
        dense = functools.partial(linear.DenseGeneral,
                                  features=(self.num_heads, dim // self.num_heads),
                                  dtype=self.dtype, param_dtype=self.param_dtype,
                                  kernel_init=_dense_init)
        q, k, v = (dense(name=n)(x) for n in ("query", "key", "value"))   # [B, L, H, D/H]
        mask = None if key_mask is None else attention_mask(key_mask)
        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        y = attention_lib.dot_product_attention(q, k, v, mask,
                                                implementation=self.attention_impl,
                                                dropout_rate=self.dropout_rate,
                                                dropout_rng=dropout_rng)
        return linear.DenseGeneral(dim, axis=(-2, -1), dtype=self.dtype,
                                   param_dtype=self.param_dtype, kernel_init=_dense_init,
                                   name="out")(y)


class BlockOptions(nn.Module):
    """The options of a Transformer encoder layer, shared by `EncoderBlock` and `Encoder`."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float | None = None
    norm: str = "post"
    activation: str = "relu"
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str = "default"

    def block_options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(BlockOptions)
                if f.name not in ("parent", "name")}


class EncoderBlock(BlockOptions):
    """One Transformer encoder layer: self-attention and an MLP, each with a residual.

    norm "post" (the original Transformer and PyTorch's default): x = LN(x + drop(f(x)));
    norm "pre": x = x + drop(f(LN(x))). Dropout is applied in the four places
    torch.nn.TransformerEncoderLayer applies it: the attention weights (`attention_dropout`,
    None meaning `dropout`, torch's single rate), the attention output, after the MLP activation
    and the MLP output. Training with attention dropout runs the einsum attention kernel; set
    attention_dropout=0.0 to keep a fused kernel in training.
    """

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None, *,
                 train: bool = False) -> jax.Array:
        check_choice("norm", self.norm, NORMS)
        check_choice("activation", self.activation, ACTIVATIONS)
        layer_norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps,
                                       dtype=self.dtype, param_dtype=self.param_dtype)
        dense = functools.partial(linear.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                                  kernel_init=_dense_init)
        drop = functools.partial(nn.Dropout(self.dropout), deterministic=not train)
        attention_rate = (self.dropout if self.attention_dropout is None
                          else self.attention_dropout)
        if not 0.0 <= attention_rate < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {attention_rate!r}")
        attention = functools.partial(
            MultiHeadSelfAttention(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                                   attention_impl=self.attention_impl,
                                   dropout_rate=attention_rate, name="attention"),
            deterministic=not train)

        def mlp(y):
            y = dense(self.mlp_dim, name="mlp_in")(y)
            y = nn.relu(y) if self.activation == "relu" else nn.gelu(y, approximate=False)
            return dense(x.shape[-1], name="mlp_out")(drop(y))

        x = x.astype(self.dtype)
        if self.norm == "pre":
            x = x + drop(attention(layer_norm(name="norm_attention")(x), key_mask))
            return x + drop(mlp(layer_norm(name="norm_mlp")(x)))
        x = layer_norm(name="norm_attention")(x + drop(attention(x, key_mask)))
        return layer_norm(name="norm_mlp")(x + drop(mlp(x)))


class Encoder(BlockOptions):
    """A stack of `num_layers` EncoderBlocks; pre-norm stacks end with a final LayerNorm.

    `attention_dropout` None drops attention weights at `dropout` (see EncoderBlock)."""

    num_layers: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None, *,
                 train: bool = False) -> jax.Array:
        for i in range(self.num_layers):
            x = EncoderBlock(**self.block_options(), name=f"block_{i}")(x, key_mask, train=train)
        if self.norm == "pre":
            # The residual stream of a pre-norm stack is never normalised inside the blocks.
            x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                             param_dtype=self.param_dtype, name="norm_final")(x)
        return x


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the last axis with statistics from the valid entries only.

    torch.nn.BatchNorm1d semantics (the heads of systems B and C normalise with it): in training
    (`use_running_average` False) the features are normalised with the mean and biased variance
    of the valid rows of the batch, and the running averages in the "batch_stats" collection
    move by `momentum` towards that mean and the unbiased variance (n / (n - 1) times the biased
    one); at inference they replace the batch statistics. `momentum` is torch's (0.1: the new
    statistic's share), `epsilon` torch's 1e-5.

    `mask` (broadcastable to x.shape[:-1]) says which rows count: padding frames of a window
    must not move the statistics. Masked rows are normalised like the others (their outputs are
    ignored downstream). A batch without any valid row leaves the running averages unchanged and
    is normalised with them.

    Training needs the collection mutable: `model.apply(variables, ..., train=True,
    mutable=["batch_stats"])` returns `(outputs, {"batch_stats": new_stats})`; a call without
    it is an error naming what to pass, as is inference without the "batch_stats" variables.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
                 use_running_average: bool) -> jax.Array:
        features = x.shape[-1]
        initializing = self.is_initializing()
        where = "/".join(self.path) or "BatchNorm"
        if not initializing and not self.has_variable("batch_stats", "mean"):
            raise ValueError(
                f"{where}: BatchNorm needs the model's 'batch_stats' variables: apply "
                f"with {{'params': ..., 'batch_stats': ...}} (both made by model.init)")
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        x = x.astype(jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            if not initializing and not self.is_mutable_collection("batch_stats"):
                raise ValueError(
                    f"{where}: training with BatchNorm updates the 'batch_stats' "
                    f"collection: apply with mutable=['batch_stats'] and keep the returned "
                    f"statistics")
            rows = x.reshape(-1, features)
            if mask is None:
                weight = jnp.ones((rows.shape[0], 1), jnp.float32)
            else:
                weight = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape[:-1]).reshape(-1, 1)
                weight = weight.astype(jnp.float32)
            count = jnp.sum(weight)
            any_valid = count > 0
            safe = jnp.maximum(count, 1.0)
            batch_mean = jnp.sum(weight * rows, axis=0) / safe
            # Centred second moment: E[x^2] - E[x]^2 cancels badly in float32.
            batch_var = jnp.sum(weight * jnp.square(rows - batch_mean), axis=0) / safe
            mean = jnp.where(any_valid, batch_mean, ra_mean.value)
            var = jnp.where(any_valid, batch_var, ra_var.value)
            if not initializing:
                unbiased = batch_var * count / jnp.maximum(count - 1.0, 1.0)
                m = self.momentum
                ra_mean.value = jnp.where(
                    any_valid, (1.0 - m) * ra_mean.value + m * jax.lax.stop_gradient(batch_mean),
                    ra_mean.value)
                ra_var.value = jnp.where(
                    any_valid, (1.0 - m) * ra_var.value + m * jax.lax.stop_gradient(unbiased),
                    ra_var.value)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        return y * scale + bias


def option_names(module_cls: type) -> list[str]:
    """The options of a temporal model: its module's dataclass fields but `num_outputs` and
    `dtype` (from the task and the device) and Flax's `parent` and `name`."""
    return [f.name for f in dataclasses.fields(module_cls)
            if f.name not in ("num_outputs", "dtype", "parent", "name")]


def default_config(module_cls: type, family: str):
    """`config.model` of a temporal model at its module's defaults, with `name` = `family`.

    An option whose default is None (attention_dropout: "the dropout rate") is a float
    placeholder, so that a config file or the command line can set a float there."""
    import ml_collections
    from ml_collections import config_dict
    fields = {f.name: f for f in dataclasses.fields(module_cls)}
    out: dict[str, Any] = {"name": family}
    for name in option_names(module_cls):
        default = fields[name].default
        out[name] = config_dict.placeholder(float) if default is None else default
    return ml_collections.ConfigDict(out)


def check_common(need, model) -> None:
    """The options every temporal model shares, checked with `need` (`checks.checker`)."""
    need(0.0 <= model.dropout < 1.0, "dropout", "must be in [0, 1)")
    need(model.attention_dropout is None or 0.0 <= model.attention_dropout < 1.0,
         "attention_dropout", "must be in [0, 1) (or None: the dropout rate)")
    need(model.output_activation in OUTPUT_ACTIVATIONS, "output_activation",
         f"one of {OUTPUT_ACTIVATIONS}")
    need(model.norm in NORMS, "norm", f"one of {NORMS}")
    need(model.activation in ACTIVATIONS, "activation", f"one of {ACTIVATIONS}")


def from_config(module_cls: type, model_cfg: Any, num_outputs: int, dtype: Any, validate,
                tuple_fields: tuple[str, ...] = ()):
    """The temporal model `module_cls` of `config.model` (a ConfigDict or dict keyed by its
    options). Missing keys take the module defaults; `name` (the model family chosen elsewhere)
    is ignored; any other unknown key, or a value `validate(model)` rejects, is a ValueError
    naming `model.<key>`."""
    kwargs = module_kwargs(module_cls, model_cfg, tuple_fields)
    model = module_cls(num_outputs=num_outputs, dtype=jnp.dtype(dtype), **kwargs)
    validate(model)
    return model


def module_kwargs(module_cls: type, model_cfg: Any, tuple_fields: tuple[str, ...] = ()) -> dict:
    """Constructor arguments of a temporal model from `config.model`.

    Keys are the module's dataclass fields (`num_outputs` and `dtype` come from the task and the
    device, `name` names the model family); any other key is an error naming `model.<key>`.
    Sequence fields listed in `tuple_fields` are made tuples (JSON and ConfigDicts give lists).
    """
    fields = option_names(module_cls)
    kwargs = {}
    for key in model_cfg.keys():
        if key == "name":
            continue
        if key not in fields:
            raise ValueError(f"model.{key}: not a {module_cls.__name__} option; options: "
                             f"{', '.join(fields)}")
        value = model_cfg[key]
        if key in tuple_fields:
            value = (value,) if isinstance(value, str) else tuple(value)
        kwargs[key] = value
    return kwargs


# Output activations of the temporal models: "tanh" bounds every output to [-1, 1] (VA);
# "tanh_va" only the first two, the valence and arousal of a multi-task model's packed outputs
# (data/mtl.OUTPUT_COLUMNS); "none" returns logits (EXPR, AU).
OUTPUT_ACTIVATIONS = ("none", "tanh", "tanh_va")


def output_activation(out: jax.Array, name: str) -> jax.Array:
    """`out` [..., C] through the output activation `name` (see OUTPUT_ACTIVATIONS)."""
    if name == "tanh":
        return jnp.tanh(out)
    if name == "tanh_va":
        return jnp.concatenate([jnp.tanh(out[..., :2]), out[..., 2:]], axis=-1)
    return out
