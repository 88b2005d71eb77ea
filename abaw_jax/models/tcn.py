"""System B: a temporal convolutional network followed by a Transformer encoder.

Zhou et al., "Boosting Continuous Emotion Recognition with Self-Pretraining using Masked
Autoencoders, Temporal Convolutional Networks, and Transformers" (6th ABAW). Per-frame features
(a fine-tuned MAE ViT-B/16 in the paper) go through

    TemporalConvNet -> 1x1 projection to d_model -> Encoder -> per-frame head

Defaults: dropout 0.3 is the paper's (§4.1.2); the paper is silent on the rest, which follows the
authors' code (upczww/abaw6, `VA/model/tcn.py`, `trans_encoder.py`, `model.py`): **causal** TCN
blocks (padding (k - 1) d and Chomp1d) with output channels [768, 256, 128], kernel 5, dilations
1/2/4, weight normalisation and nn.PReLU() (**one shared slope** per activation, initially .25);
a 1x1 projection to 512; **no position encoding**; an 8-layer, 4-head post-norm
nn.TransformerEncoderLayer stack with feed-forward 512 (dropout in its four places, attention
weights included); a head Linear(512, 256) -> **BatchNorm1d** -> Linear. `use_tcn` and
`use_transformer` switch off either part for the paper's ablations (table 5).

Options besides the authors' model: `causal=False` (centred convolutions),
`pos_encoding="sinusoidal"` / "learned" (with `pos_dropout` for a dropout after it),
`head_norm="layer"` / "none", `prelu_slopes="channel"` (one slope per channel).

BatchNorm head: statistics over the valid frames (`frame_mask`) of the batch only, running
averages for inference (`layers.MaskedBatchNorm`). Such a model has a "batch_stats" collection:
training applies it with `mutable=["batch_stats"]` and keeps the returned statistics;
inference passes them with the params.

The TCN follows Bai et al., "An Empirical Evaluation of Generic Convolutional and Recurrent
Networks for Sequence Modeling" (2018): each residual block is conv -> activation -> dropout ->
conv -> activation -> dropout, added to the block input (through a 1x1 convolution when the
channel counts differ), then one more activation.

Padding and frames without a face:
- Every temporal convolution sees its input zeroed where `frame_mask` is False. A window that runs
  past the end of its video is padded with frames of whatever the pipeline filled in; zeroing them
  makes the frames at the video end see exactly the zeros that "same" padding gives at any
  sequence end, so padding never leaks into real frames.
- Frames without a face image (`present` False) carry placeholder features. Unless
  `attend_absent`, those features are zeroed before the TCN and the frames are left out of the
  encoder's attention keys, like system A. Their outputs still come from their context.
- The BatchNorm head's batch statistics are taken over the frames where `frame_mask` is True:
  padding never moves them; frames without a face count (the authors' code feeds every frame of
  its windows, faceless ones forward-filled, to BatchNorm1d).

rngs: "dropout" for dropout (train only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from abaw_jax import checks
from abaw_jax.models import layers

TCN_ACTIVATIONS = ("prelu", "relu", "gelu")
HEAD_NORMS = ("batch", "layer", "none")
POS_ENCODINGS = ("none", "sinusoidal", "learned")
PRELU_SLOPES = ("shared", "channel")


def block_dilations(dilations: Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """The dilation of each block: `dilations` when given, else 2**i for block i (1, 2, 4, ...)."""
    if not dilations:
        return tuple(2 ** i for i in range(num_blocks))
    if len(dilations) != num_blocks:
        raise ValueError(f"dilations {tuple(dilations)} must have one entry per block "
                         f"({num_blocks} channels)")
    if any(int(d) < 1 for d in dilations):
        raise ValueError(f"dilations must be >= 1, got {tuple(dilations)}")
    return tuple(int(d) for d in dilations)


def conv_padding(kernel_size: int, dilation: int, causal: bool) -> tuple[int, int]:
    """(left, right) zero padding that keeps the length of a dilated convolution unchanged.

    A kernel spans `dilation * (kernel_size - 1) + 1` frames. Causal: all padding on the left, so
    output t sees frames t - span + 1 .. t only. Non-causal: split evenly; when the total is odd
    (an even kernel with an odd dilation) the extra frame goes to the right, as in XLA's "SAME",
    so output t then sees one frame more of the future than of the past.
    """
    total = dilation * (kernel_size - 1)
    if causal:
        return total, 0
    return total // 2, total - total // 2


def receptive_field(kernel_size: int, dilations: Sequence[int], convs_per_block: int = 2) -> int:
    """Consecutive input frames that can influence one output frame of the TCN.

    Each convolution with dilation d widens the field by d * (kernel_size - 1); a block holds
    `convs_per_block` of them, and residual / 1x1 convolutions add nothing:
    1 + convs_per_block * (kernel_size - 1) * sum(dilations). The kernel defaults (5, dilations
    1/2/4) give 57 frames. Causal: the field is frames t - field + 1 .. t; non-causal: it is split
    around t as `conv_padding` splits each convolution's padding.
    """
    if kernel_size < 1 or convs_per_block < 0:
        raise ValueError(f"kernel_size must be >= 1 and convs_per_block >= 0, got "
                         f"{kernel_size} and {convs_per_block}")
    return 1 + convs_per_block * (kernel_size - 1) * sum(int(d) for d in dilations)


class PReLU(nn.Module):
    """Leaky ReLU with a learned negative slope (He et al. 2015), initially 0.25.

    One slope shared by all channels (param "slope" of shape [1]) as torch's nn.PReLU() with its
    default num_parameters=1, which the authors of system B use; `per_channel` learns one per
    channel ([C], nn.PReLU(C)).
    """

    init_slope: float = 0.25
    per_channel: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[-1],) if self.per_channel else (1,)
        slope = self.param("slope", nn.initializers.constant(self.init_slope), shape,
                           jnp.float32)
        return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


def _channel_norm(v: jax.Array) -> jax.Array:
    """L2 norm of a [K, C_in, C_out] kernel per output channel: [C_out]."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1)))


class WeightNormConv(nn.Module):
    """1-D convolution over [B, L, C] with weight normalisation (Salimans and Kingma 2016).

    The kernel is w = g * v / ||v||, the norm taken per output channel over taps and input
    channels; params `v` [K, C_in, C_out], `g` [C_out], `bias` [C_out]. `g` starts at ||v||, so
    at initialisation w equals v (as torch.nn.utils.weight_norm does).
    """

    features: int
    kernel_size: int
    dilation: int = 1
    padding: tuple[int, int] = (0, 0)
    dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        v = self.param("v", self.kernel_init, (self.kernel_size, x.shape[-1], self.features),
                       jnp.float32)
        g = self.param("g", lambda _, v: _channel_norm(v), v)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        w = g * v / _channel_norm(v)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), w.astype(self.dtype), window_strides=(1,),
            padding=[tuple(self.padding)], rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"))
        return y + bias.astype(self.dtype)


def _activation(name: str, module_name: str,
                prelu_slopes: str = "shared") -> Callable[[jax.Array], jax.Array]:
    layers.check_choice("tcn_activation", name, TCN_ACTIVATIONS)
    if name == "prelu":
        layers.check_choice("prelu_slopes", prelu_slopes, PRELU_SLOPES)
        return PReLU(per_channel=prelu_slopes == "channel", name=module_name)
    if name == "relu":
        return nn.relu
    return lambda x: nn.gelu(x, approximate=False)


class TemporalBlock(nn.Module):
    """One residual block of two dilated convolutions (see the module docstring)."""

    features: int
    kernel_size: int
    dilation: int
    dropout: float = 0.0
    causal: bool = True
    weight_norm: bool = True
    activation: str = "prelu"
    prelu_slopes: str = "shared"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, frame_mask: jax.Array, *, train: bool) -> jax.Array:
        keep = frame_mask[..., None].astype(self.dtype)
        padding = conv_padding(self.kernel_size, self.dilation, self.causal)
        x = x.astype(self.dtype)
        h = x
        for i in range(2):
            if self.weight_norm:
                conv = WeightNormConv(self.features, self.kernel_size, self.dilation, padding,
                                      dtype=self.dtype, name=f"conv_{i}")
            else:
                conv = nn.Conv(self.features, (self.kernel_size,), padding=[padding],
                               kernel_dilation=(self.dilation,), dtype=self.dtype,
                               name=f"conv_{i}")
            h = conv(h * keep)
            h = _activation(self.activation, f"act_{i}", self.prelu_slopes)(h)
            h = nn.Dropout(self.dropout)(h, deterministic=not train)
        residual = x
        if x.shape[-1] != self.features:
            # N(0, 0.01), the code's init_weights; on the weight-normalised convolutions that
            # init has no effect (weight norm recomputes the weight from g and v at each call).
            residual = nn.Conv(self.features, (1,), dtype=self.dtype, name="residual",
                               kernel_init=nn.initializers.normal(0.01))(x)
        return _activation(self.activation, "act_out", self.prelu_slopes)(h + residual)


class TemporalConvNet(nn.Module):
    """Stacked residual blocks of dilated 1-D convolutions: [B, L, D] -> [B, L, channels[-1]].

    `channels` are the blocks' output channels; `dilations` empty means 2**i for block i. The
    output has the input's length for every kernel size (see `conv_padding`). Causal by default,
    as the authors' code (Chomp1d after each convolution).
    """

    channels: Sequence[int]
    kernel_size: int = 5
    dilations: Sequence[int] = ()
    dropout: float = 0.0
    causal: bool = True
    weight_norm: bool = True
    activation: str = "prelu"
    prelu_slopes: str = "shared"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, frame_mask: jax.Array, *, train: bool) -> jax.Array:
        if not self.channels:
            raise ValueError("channels must list at least one block's output channels")
        if self.kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {self.kernel_size}")
        if frame_mask.shape != x.shape[:2]:
            raise ValueError(f"frame_mask: expected shape {x.shape[:2]} (features {x.shape}), "
                             f"got {frame_mask.shape}")
        frame_mask = jnp.asarray(frame_mask, bool)
        for i, (features, dilation) in enumerate(
                zip(self.channels, block_dilations(self.dilations, len(self.channels)))):
            x = TemporalBlock(int(features), self.kernel_size, dilation, dropout=self.dropout,
                              causal=self.causal, weight_norm=self.weight_norm,
                              activation=self.activation, prelu_slopes=self.prelu_slopes,
                              dtype=self.dtype, name=f"block_{i}")(
                                  x, frame_mask, train=train)
        return x


class FrameHead(nn.Module):
    """Per-frame output MLP: Dense(hidden) -> norm -> Dense(num_outputs), in float32.

    norm "batch" (the authors' code of systems B and C: nn.BatchNorm1d over the frames of the
    batch) normalises with statistics of the frames where `mask` is True (padding excluded) and
    keeps running averages for inference in "batch_stats" (`layers.MaskedBatchNorm`). "layer"
    uses LayerNorm, which needs no batch statistics and keeps a frame's prediction independent
    of the rest of its batch. "none" leaves the hidden layer unnormalised.
    """

    hidden: int
    num_outputs: int
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
                 train: bool = False) -> jax.Array:
        layers.check_choice("head_norm", self.norm, HEAD_NORMS)
        # The head is tiny; float32 keeps logits and VA values precise.
        x = nn.Dense(self.hidden, dtype=jnp.float32, name="hidden")(x.astype(jnp.float32))
        if self.norm == "batch":
            x = layers.MaskedBatchNorm(name="norm")(x, mask, use_running_average=not train)
        elif self.norm == "layer":
            x = nn.LayerNorm(dtype=jnp.float32, name="norm")(x)
        return nn.Dense(self.num_outputs, dtype=jnp.float32, name="out")(x)


def check_inputs(features: jax.Array, present: jax.Array, frame_mask: jax.Array) -> None:
    """Raises ValueError naming the input whose shape does not match features [B, L, D]."""
    if features.ndim != 3:
        raise ValueError(f"features: expected [B, L, D], got shape {features.shape}")
    for key, m in (("present", present), ("frame_mask", frame_mask)):
        if m.shape != features.shape[:2]:
            raise ValueError(f"{key}: expected shape {features.shape[:2]} (features "
                             f"{features.shape}), got {m.shape}")


class TCNTransformer(nn.Module):
    """System B: features [B, L, D] -> TCN -> Encoder -> head -> [B, L, num_outputs] float32.

    use_tcn False feeds the features straight to the projection; use_transformer False drops the
    positions and the encoder (the model then sees time only through the TCN).
    output_activation "tanh" bounds outputs to [-1, 1] (VA); "none" returns logits.
    attention_dropout None drops attention weights at `dropout` (torch's single rate);
    pos_dropout is a dropout after a position encoding (the default has no encoding at all).
    """

    num_outputs: int
    channels: Sequence[int] = (768, 256, 128)
    kernel_size: int = 5
    dilations: Sequence[int] = ()
    weight_norm: bool = True
    tcn_activation: str = "prelu"
    prelu_slopes: str = "shared"
    causal: bool = True
    d_model: int = 512
    num_layers: int = 8
    num_heads: int = 4
    mlp_dim: int = 512
    dropout: float = 0.3
    attention_dropout: float | None = None
    norm: str = "post"
    activation: str = "relu"
    pos_encoding: str = "none"
    pos_dropout: float = 0.0
    max_len: int = 1024
    head_dim: int = 256
    head_norm: str = "batch"
    # Sizes of separate heads in output order (the multi-task model: (2, 8, 12), one per task);
    # empty: one head for all outputs, as the authors' per-task models.
    head_sizes: Sequence[int] = ()
    output_activation: str = "none"
    use_tcn: bool = True
    use_transformer: bool = True
    attend_absent: bool = False
    attention_impl: str = "default"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, present: jax.Array, frame_mask: jax.Array, *,
                 train: bool) -> jax.Array:
        layers.check_choice("pos_encoding", self.pos_encoding, POS_ENCODINGS)
        layers.check_choice("output_activation", self.output_activation, layers.OUTPUT_ACTIVATIONS)
        check_inputs(features, present, frame_mask)
        length = features.shape[1]
        if self.use_transformer and length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")

        frame_mask = jnp.asarray(frame_mask, bool)
        key_mask = frame_mask
        x = jnp.asarray(features, jnp.float32)
        if not self.attend_absent:
            key_mask = frame_mask & jnp.asarray(present, bool)
            x = jnp.where(key_mask[..., None], x, 0.0)

        if self.use_tcn:
            x = TemporalConvNet(tuple(self.channels), self.kernel_size, tuple(self.dilations),
                                dropout=self.dropout, causal=self.causal,
                                weight_norm=self.weight_norm, activation=self.tcn_activation,
                                prelu_slopes=self.prelu_slopes, dtype=self.dtype,
                                name="tcn")(x, frame_mask, train=train)
        # A Dense over channels is the authors' 1x1 convolution.
        x = nn.Dense(self.d_model, dtype=self.dtype, name="proj")(x)
        if self.use_transformer:
            if self.pos_encoding == "sinusoidal":
                x = x + jnp.asarray(layers.sinusoidal_positions(length, self.d_model), self.dtype)
            elif self.pos_encoding == "learned":
                x = layers.LearnedPositions(self.max_len, dtype=self.dtype, name="positions")(x)
            if self.pos_encoding != "none" and self.pos_dropout:
                x = nn.Dropout(self.pos_dropout)(x, deterministic=not train)
            encoded = layers.Encoder(
                num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                dropout=self.dropout,
                attention_dropout=self.attention_dropout, norm=self.norm,
                activation=self.activation, dtype=self.dtype, attention_impl=self.attention_impl,
                name="encoder")(x, key_mask, train=train)
            # A window without a face in any frame enters the encoder as a constant (zero)
            # sequence when no positions are added (the authors' model): every post-norm
            # LayerNorm then sees zero variance and scales gradients by 1/sqrt(eps), which
            # overflows after a few layers. Such windows are predicted by the head from that
            # constant, with no gradient through the encoder.
            has_face = jnp.any(key_mask, axis=1)[:, None, None]
            x = jnp.where(has_face, encoded, jax.lax.stop_gradient(encoded))
        if self.head_sizes:
            out = jnp.concatenate([
                FrameHead(self.head_dim, int(size), self.head_norm, name=f"head_{i}")(
                    x, frame_mask, train=train) for i, size in enumerate(self.head_sizes)], -1)
        else:
            out = FrameHead(self.head_dim, self.num_outputs, self.head_norm, name="head")(
                x, frame_mask, train=train)
        return layers.output_activation(out, self.output_activation)


def default_config() -> ml_collections.ConfigDict:
    """The paper's dropout (.3) in the authors' model: causal TCN [768, 256, 128] (kernel 5,
    dilations 1/2/4, shared-slope PReLU) -> 1x1 projection -> encoder d 512 x 8 without position
    encoding -> head Linear -> BatchNorm -> Linear. attention_dropout (a float placeholder left
    at None) means `dropout`."""
    return layers.default_config(TCNTransformer, "tcn")


def tiny_config() -> ml_collections.ConfigDict:
    """A tiny variant for tests: TCN [16, 8] with kernel 3, encoder d 16, 1 layer, 2 heads."""
    config = default_config()
    config.update(dict(
        channels=(16, 8), kernel_size=3, dilations=(1, 2), d_model=16, num_layers=1, num_heads=2,
        mlp_dim=32, head_dim=8, max_len=64))
    return config


def from_config(model_cfg: Mapping[str, Any], num_outputs: int,
                dtype: Any = jnp.float32) -> TCNTransformer:
    """The module of `config.model`, its options checked (see `layers.from_config`)."""
    return layers.from_config(TCNTransformer, model_cfg, num_outputs, dtype, _validate,
                              ("channels", "dilations", "head_sizes"))


def _validate(model: TCNTransformer) -> None:
    """Rejects bad options at build time, naming the config key."""
    need = checks.checker(model, prefix="model.")
    layers.check_common(need, model)
    need(len(model.channels) >= 1 and all(int(c) >= 1 for c in model.channels), "channels",
         "must list at least one positive channel count")
    need(model.kernel_size >= 1, "kernel_size", "must be >= 1")
    try:
        block_dilations(model.dilations, len(model.channels))
    except ValueError as e:
        raise ValueError(f"model.dilations = {model.dilations!r}: {e}") from None
    need(model.tcn_activation in TCN_ACTIVATIONS, "tcn_activation", f"one of {TCN_ACTIVATIONS}")
    need(model.prelu_slopes in PRELU_SLOPES, "prelu_slopes", f"one of {PRELU_SLOPES}")
    need(0.0 <= model.pos_dropout < 1.0, "pos_dropout", "must be in [0, 1)")
    need(model.d_model % model.num_heads == 0, "d_model",
         f"must be divisible by model.num_heads={model.num_heads}")
    need(model.head_norm in HEAD_NORMS, "head_norm", f"one of {HEAD_NORMS}")
    need(model.pos_encoding in POS_ENCODINGS, "pos_encoding", f"one of {POS_ENCODINGS}")
    need(not model.head_sizes or (all(int(k) >= 1 for k in model.head_sizes)
                                  and sum(int(k) for k in model.head_sizes) == model.num_outputs),
         "head_sizes", f"sizes >= 1 adding up to the {model.num_outputs} outputs (or empty)")

