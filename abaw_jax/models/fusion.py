"""System C: several per-frame feature sets fused by a Transformer encoder.

Liu et al., "Facial Affect Recognition based on Multi Architecture Encoder and Feature Fusion for
the ABAW7 Challenge". Each feature set (e.g. ViT 768-d, OpenFace AU intensities 17-d) goes through
its own "affine module", a Dense to a common width `d_affine` plus a sinusoidal position encoding;
the aligned sets are concatenated along channels and fused over time:

    per set: Dense(d_affine) + positions -> concat (d = d_affine * n_sets) -> dropout
             -> Encoder(d, feed-forward mlp_ratio * d) -> head Dense(d / 2) -> norm -> Dense

Authors' code: d_affine 512 for VA and 256 otherwise, input dropout 0.5, a 4-layer, 4-head encoder
with feed-forward 2d and dropout 0.2, head Linear(d, d/2), BatchNorm, Linear (LayerNorm here by
default; see `tcn.FrameHead` for why).

`features` is a dict {set name: [B, L, D_set]}. The sets used, and their order in the
concatenation, are `feature_sets`; a dict may hold more sets than the model uses (so one feature
store serves every feature-combination ablation) but never fewer. Frames without a face image and
padding are left out of the attention keys (unless `attend_absent`), as in system A.

rngs: "dropout" for dropout (train only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from abaw_jax.models import layers
from abaw_jax.models.tcn import HEAD_NORMS, OUTPUT_ACTIVATIONS, FrameHead


class MultiEncoderFusion(nn.Module):
    """System C: {set: [B, L, D_set]} -> per-frame outputs [B, L, num_outputs] float32.

    The per-set projections are named `affine_<set>`, so a feature set whose width differs from
    the one the params were made for fails in Flax with that name in the message.
    """

    num_outputs: int
    feature_sets: Sequence[str] = ("vit", "openface")
    d_affine: int = 256
    input_dropout: float = 0.5
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.2
    norm: str = "post"
    activation: str = "relu"
    head_norm: str = "layer"
    output_activation: str = "none"
    attend_absent: bool = False
    attention_impl: str = "default"
    dtype: Any = jnp.float32

    @property
    def width(self) -> int:
        """The encoder width d = d_affine * number of feature sets."""
        return self.d_affine * len(self.feature_sets)

    @nn.compact
    def __call__(self, features: Mapping[str, jax.Array], present: jax.Array,
                 frame_mask: jax.Array, *, train: bool) -> jax.Array:
        layers.check_choice("output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        if not self.feature_sets:
            raise ValueError("model.feature_sets is empty: name at least one feature set")
        if not isinstance(features, Mapping):
            raise ValueError(f"features: expected a dict {{set name: [B, L, D]}} with sets "
                             f"{tuple(self.feature_sets)}, got {type(features).__name__}")
        for name in self.feature_sets:
            if name not in features:
                raise ValueError(f"features: missing feature set {name!r} (model.feature_sets = "
                                 f"{tuple(self.feature_sets)}; got {sorted(features)})")
            x = features[name]
            if x.ndim != 3 or x.shape[:2] != present.shape or x.shape[:2] != frame_mask.shape:
                raise ValueError(f"features[{name!r}]: expected [B, L, D] with [B, L] = present "
                                 f"{present.shape} and frame_mask {frame_mask.shape}, got "
                                 f"{x.shape}")
        length = present.shape[1]

        key_mask = jnp.asarray(frame_mask, bool)
        if not self.attend_absent:
            key_mask &= jnp.asarray(present, bool)

        positions = jnp.asarray(layers.sinusoidal_positions(length, self.d_affine), self.dtype)
        aligned = []
        for name in self.feature_sets:
            x = nn.Dense(self.d_affine, dtype=self.dtype, name=f"affine_{name}")(
                jnp.asarray(features[name], jnp.float32))
            aligned.append(x + positions)
        x = jnp.concatenate(aligned, axis=-1)
        x = nn.Dropout(self.input_dropout)(x, deterministic=not train)
        x = layers.Encoder(self.num_layers, self.num_heads, self.mlp_ratio * self.width,
                           dropout=self.dropout, norm=self.norm, activation=self.activation,
                           dtype=self.dtype, attention_impl=self.attention_impl,
                           name="encoder")(x, key_mask, train=train)
        out = FrameHead(self.width // 2, self.num_outputs, self.head_norm, name="head")(x)
        if self.output_activation == "tanh":
            out = jnp.tanh(out)
        return out



def default_config() -> ml_collections.ConfigDict:
    """The authors' model for EXPR and AU (d_affine 256; their VA model uses 512)."""
    return ml_collections.ConfigDict({
        "name": "fusion",
        "feature_sets": ("vit", "openface"),
        "d_affine": 256,
        "input_dropout": 0.5,
        "num_layers": 4,
        "num_heads": 4,
        "mlp_ratio": 2,
        "dropout": 0.2,
        "norm": "post",
        "activation": "relu",
        "head_norm": "layer",
        "output_activation": "none",
        "attend_absent": False,
        "attention_impl": "default",
    })


def tiny_config() -> ml_collections.ConfigDict:
    """A tiny variant for tests: d_affine 8 per set, 1 encoder layer, 2 heads."""
    config = default_config()
    config.d_affine = 8
    config.num_layers = 1
    config.num_heads = 2
    return config


def from_config(model_cfg: Mapping[str, Any], num_outputs: int,
                dtype: Any = jnp.float32) -> MultiEncoderFusion:
    """Builds the module from a ConfigDict (or dict) whose keys are its field names.

    Missing keys take the module defaults; `name` (the model family chosen elsewhere) is ignored;
    any other unknown key, or a bad value, is an error naming it.
    """
    kwargs = layers.module_kwargs(MultiEncoderFusion, model_cfg, ("feature_sets",))
    model = MultiEncoderFusion(num_outputs=num_outputs, dtype=jnp.dtype(dtype), **kwargs)
    _validate(model)
    return model


def _validate(model: MultiEncoderFusion) -> None:
    """Rejects bad options at build time, naming the config key."""
    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ValueError(f"model.{key} = {getattr(model, key)!r}: {why}")

    sets = model.feature_sets
    need(len(sets) >= 1 and all(isinstance(s, str) and s for s in sets), "feature_sets",
         "must name at least one feature set")
    need(len(set(sets)) == len(sets), "feature_sets", "names a feature set twice")
    need(model.d_affine >= 1, "d_affine", "must be >= 1")
    need(model.width % model.num_heads == 0, "num_heads",
         f"must divide d = d_affine * len(feature_sets) = {model.width}")
    need(model.width % 2 == 0, "d_affine", "d = d_affine * len(feature_sets) must be even")
    need(model.mlp_ratio >= 1, "mlp_ratio", "must be >= 1")
    need(0.0 <= model.input_dropout < 1.0, "input_dropout", "must be in [0, 1)")
    need(0.0 <= model.dropout < 1.0, "dropout", "must be in [0, 1)")
    need(model.head_norm in HEAD_NORMS, "head_norm", f"one of {HEAD_NORMS}")
    need(model.output_activation in OUTPUT_ACTIVATIONS, "output_activation",
         f"one of {OUTPUT_ACTIVATIONS}")
    need(model.norm in layers.NORMS, "norm", f"one of {layers.NORMS}")
    need(model.activation in layers.ACTIVATIONS, "activation", f"one of {layers.ACTIVATIONS}")
