"""System A: a Transformer over per-frame features trained with random frame masking.

Min et al., "Emotion Recognition Using Transformers with Masked Learning" (6th ABAW): precomputed
ViT features of a window of frames are randomly masked during training (p = 0.2), given
sinusoidal positions, passed through a 6-layer, 8-head post-norm Transformer encoder (d 768,
feed-forward 2048, dropout 0.2) and a per-frame linear head.

Sources of the defaults: masking p .2 of whole frames, 6 layers, 8 heads, dropout .2 and the
per-frame FC head are the paper's (§3.2, §4.1, Fig. 1). Where the paper is silent the authors'
code (msjae/ABAW, branch `old`, `transformer_model.py`) decides: d_model = the feature width 768
with **no input projection** (the positions are added straight to the masked features),
nn.TransformerEncoderLayer's feed-forward 2048, ReLU, post-norm and its four dropout places
(attention weights included), and **no dropout after the position encoding**.
`input_proj="always"` and `pos_dropout` > 0 add a Dense projection of the features and a dropout
after the positions.

Frames without a face image (`present` False) and padding (`frame_mask` False) are excluded from
the attention keys, so their placeholder features cannot leak into other frames; they still get
outputs from their context. `attend_absent=True` lets absent frames be attended to as well.

rngs: "masking" for the random masking (train only), "dropout" for dropout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from abaw_jax import checks
from abaw_jax.models import layers

MASK_MODES = ("frame", "element")
MASK_VALUES = ("zero", "token")
POS_ENCODINGS = ("sinusoidal", "learned")
INPUT_PROJ = ("auto", "always")


class FeatureMasking(nn.Module):
    """Random masking of input features during training (identity when train is False).

    mode "frame" (the paper) masks whole frames with probability `prob`; "element" (the authors'
    code) masks each feature element independently. Masked entries become 0 ("zero") or the
    matching entries of a learned [D] token ("token"). The drawn mask is sown into
    "intermediates" as `mask` ([B, L, 1] or [B, L, D]).
    """

    prob: float
    mode: str = "frame"
    value: str = "zero"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        layers.check_choice("mask_mode", self.mode, MASK_MODES)
        layers.check_choice("mask_value", self.value, MASK_VALUES)
        if not 0.0 <= self.prob < 1.0:
            raise ValueError(f"mask_prob must be in [0, 1), got {self.prob!r}")
        fill = jnp.zeros((), x.dtype)
        if self.value == "token":
            # Created whether or not masking runs, so train and eval share one parameter tree.
            fill = self.param("mask_token", nn.initializers.normal(stddev=0.02),
                              (x.shape[-1],), jnp.float32).astype(x.dtype)
        if not train or self.prob == 0.0:
            return x
        shape = x.shape[:-1] + (1,) if self.mode == "frame" else x.shape
        mask = jax.random.bernoulli(self.make_rng("masking"), self.prob, shape)
        self.sow("intermediates", "mask", mask)
        return jnp.where(mask, fill, x)


class TemporalTransformer(nn.Module):
    """Masked temporal Transformer: features [B, L, D] -> per-frame outputs [B, L, num_outputs].

    output_activation "tanh" bounds outputs to [-1, 1] (VA); "none" returns logits (EXPR, AU).
    `max_len` bounds the window length for both position encodings.

    input_proj: "auto" projects the features with a Dense(d_model) ("input_proj") only when
    their width D differs from d_model; with D == d_model the positions are added to the
    features themselves (the authors' code). "always" projects whatever the widths.
    pos_dropout: dropout rate after the position encoding; 0 (the authors' code has none).
    attention_dropout: dropout on the attention weights; None means `dropout`, as in torch's
    TransformerEncoderLayer (see `layers.EncoderBlock`).
    """

    num_outputs: int
    d_model: int = 768
    num_layers: int = 6
    num_heads: int = 8
    mlp_dim: int = 2048
    dropout: float = 0.2
    attention_dropout: float | None = None
    pos_dropout: float = 0.0
    input_proj: str = "auto"
    mask_prob: float = 0.2
    mask_mode: str = "frame"
    mask_value: str = "zero"
    pos_encoding: str = "sinusoidal"
    norm: str = "post"
    max_len: int = 1024
    activation: str = "relu"
    attend_absent: bool = False
    output_activation: str = "none"
    attention_impl: str = "default"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, present: jax.Array, frame_mask: jax.Array, *,
                 train: bool) -> jax.Array:
        layers.check_choice("pos_encoding", self.pos_encoding, POS_ENCODINGS)
        layers.check_choice("output_activation", self.output_activation, layers.OUTPUT_ACTIVATIONS)
        if features.ndim != 3:
            raise ValueError(f"features: expected [B, L, D], got shape {features.shape}")
        for key, m in (("present", present), ("frame_mask", frame_mask)):
            if m.shape != features.shape[:2]:
                raise ValueError(f"{key}: expected shape {features.shape[:2]} (features "
                                 f"{features.shape}), got {m.shape}")
        length = features.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")

        key_mask = jnp.asarray(frame_mask, bool)
        if not self.attend_absent:
            key_mask &= jnp.asarray(present, bool)

        x = FeatureMasking(self.mask_prob, self.mask_mode, self.mask_value, name="masking")(
            jnp.asarray(features, jnp.float32), train=train)
        if self.input_proj == "always" or features.shape[-1] != self.d_model:
            x = nn.Dense(self.d_model, dtype=self.dtype, name="input_proj")(x)
        x = x.astype(self.dtype)
        if self.pos_encoding == "sinusoidal":
            x = x + jnp.asarray(layers.sinusoidal_positions(length, self.d_model), self.dtype)
        else:
            x = layers.LearnedPositions(self.max_len, dtype=self.dtype, name="positions")(x)
        if self.pos_dropout:
            x = nn.Dropout(self.pos_dropout)(x, deterministic=not train)
        x = layers.Encoder(num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                           dropout=self.dropout,
                           attention_dropout=self.attention_dropout, norm=self.norm, activation=self.activation, dtype=self.dtype,
                           attention_impl=self.attention_impl, name="encoder")(
                               x, key_mask, train=train)
        # The head is tiny; computing it in float32 keeps logits and VA values precise.
        out = nn.Dense(self.num_outputs, dtype=jnp.float32, name="head")(x.astype(jnp.float32))
        return layers.output_activation(out, self.output_activation)


def default_config() -> ml_collections.ConfigDict:
    """The paper's model (with the authors' code's d_model, feed-forward size and post-norm).

    attention_dropout is a float placeholder left at None: the weights are dropped at `dropout`
    (torch's TransformerEncoderLayer has one rate for all four places)."""
    return layers.default_config(TemporalTransformer, "transformer")


def tiny_config() -> ml_collections.ConfigDict:
    """A tiny variant for tests: d_model 32, 2 layers, 2 heads, feed-forward 64."""
    config = default_config()
    config.update(dict(d_model=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=64))
    return config


def from_config(model_cfg: Mapping[str, Any], num_outputs: int,
                dtype: Any = jnp.float32) -> TemporalTransformer:
    """The module of `config.model`, its options checked (see `layers.from_config`)."""
    return layers.from_config(TemporalTransformer, model_cfg, num_outputs, dtype, _validate)


def _validate(model: TemporalTransformer) -> None:
    """Rejects bad options at build time, naming the config key."""
    need = checks.checker(model, prefix="model.")
    layers.check_common(need, model)
    need(model.input_proj in INPUT_PROJ, "input_proj", f"one of {INPUT_PROJ}")
    need(0.0 <= model.mask_prob < 1.0, "mask_prob", "must be in [0, 1)")
    need(model.num_heads >= 1 and model.d_model % model.num_heads == 0, "d_model",
         f"must be divisible by model.num_heads={model.num_heads}")
