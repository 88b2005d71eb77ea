"""System C: several per-frame feature sets fused by a Transformer encoder.

Shen, Liu et al. (Hefei University of Technology), "Facial Affect Recognition based on Multi
Architecture Encoder and Feature Fusion for the ABAW7 Challenge". Each feature set (e.g. ViT 768-d, OpenFace AU intensities 17-d) goes through
its own "affine module", a Dense to a common width `d_affine` plus a sinusoidal position encoding;
the aligned sets are concatenated along channels and fused over time:

    per set: Dense(d_affine) -> concat (d = d_affine * n_sets) -> dropout -> + per-set positions
             -> Encoder(d, feed-forward mlp_ratio * d)
             -> one head per output: Dense(d / 2) -> BatchNorm -> Dense(size)

Sources of the defaults: the affine module with a position encoding per feature set is the
paper's Eq. 1 (§4.1); where the paper is silent the group's temporal code decides
(ABAW2023-HFUT/ABAW5 `model.py`, `main.py`, `utils.py`): d_affine 512 for VA and 256 otherwise,
input dropout 0.5 on the concatenated affine outputs (the positions are added after it, not
dropped), a 4-layer, 4-head post-norm nn.TransformerEncoderLayer stack with feed-forward 2d and
dropout 0.2 (attention weights included), and **one head per output**, each
Linear(d, d/2) -> BatchNorm1d -> Linear: VA 2 heads of 1 output, EXPR 1 head of 8, AU 12 heads of
1. `head_sizes` gives the heads' output sizes; empty means one head per output column (VA, AU),
so EXPR needs head_sizes=(8,).

Named variants: `pe_after_concat=True` (ABAW5 code: one position table of width d added to the
concatenation), `pe_dropped=True` (positions added before the input dropout, as this module did
before), `heads="shared"` (one head for all outputs, as before), `head_norm="layer"` / "none"
(see `tcn.FrameHead`). BatchNorm heads keep running statistics in "batch_stats": training
applies the model with `mutable=["batch_stats"]`, inference passes them with the params.

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
import numpy as np
from ml_collections import config_dict

from abaw_jax import checks
from abaw_jax.models import layers
from abaw_jax.models.tcn import HEAD_NORMS, FrameHead

HEADS = ("per_output", "shared")


class MultiEncoderFusion(nn.Module):
    """System C: {set: [B, L, D_set]} -> per-frame outputs [B, L, num_outputs] float32.

    The per-set projections are named `affine_<set>`, so a feature set whose width differs from
    the one the params were made for fails in Flax with that name in the message. Per-output
    heads are `head_0`, `head_1`, ... (in output order); a shared head is `head`.
    """

    num_outputs: int
    feature_sets: Sequence[str] = ("vit", "openface")
    d_affine: int = 256
    input_dropout: float = 0.5
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.2
    attention_dropout: float | None = None
    norm: str = "post"
    activation: str = "relu"
    pe_after_concat: bool = False
    pe_dropped: bool = False
    heads: str = "per_output"
    head_sizes: Sequence[int] = ()
    head_norm: str = "batch"
    output_activation: str = "none"
    attend_absent: bool = False
    attention_impl: str = "default"
    dtype: Any = jnp.float32

    @property
    def width(self) -> int:
        """The encoder width d = d_affine * number of feature sets."""
        return self.d_affine * len(self.feature_sets)

    def output_groups(self) -> tuple[int, ...]:
        """Output sizes of the heads, in output order (one entry for a shared head)."""
        if self.heads == "shared":
            return (self.num_outputs,)
        if self.head_sizes:
            return tuple(int(k) for k in self.head_sizes)
        return (1,) * self.num_outputs

    @nn.compact
    def __call__(self, features: Mapping[str, jax.Array], present: jax.Array,
                 frame_mask: jax.Array, *, train: bool) -> jax.Array:
        layers.check_choice("output_activation", self.output_activation, layers.OUTPUT_ACTIVATIONS)
        layers.check_choice("heads", self.heads, HEADS)
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

        # Eq. 1: each set's affine output gets its own d_affine-wide table; the ABAW5 code adds
        # one table of width d to the concatenation instead.
        if self.pe_after_concat:
            positions = layers.sinusoidal_positions(length, self.width)
        else:
            positions = np.tile(layers.sinusoidal_positions(length, self.d_affine),
                                (1, len(self.feature_sets)))
        positions = jnp.asarray(positions, self.dtype)
        x = jnp.concatenate([
            nn.Dense(self.d_affine, dtype=self.dtype, name=f"affine_{name}")(
                jnp.asarray(features[name], jnp.float32)) for name in self.feature_sets], axis=-1)
        if self.pe_dropped:
            x = x + positions
        x = nn.Dropout(self.input_dropout)(x, deterministic=not train)
        if not self.pe_dropped:
            x = x + positions
        x = layers.Encoder(self.num_layers, self.num_heads, self.mlp_ratio * self.width,
                           dropout=self.dropout, attention_dropout=self.attention_dropout,
                           norm=self.norm, activation=self.activation, dtype=self.dtype,
                           attention_impl=self.attention_impl, name="encoder")(
                               x, key_mask, train=train)
        frame_mask = jnp.asarray(frame_mask, bool)
        groups = self.output_groups()
        if sum(groups) != self.num_outputs:
            raise ValueError(f"model.head_sizes = {tuple(self.head_sizes)}: the head sizes must "
                             f"add up to the {self.num_outputs} outputs")
        if self.heads == "shared":
            out = FrameHead(self.width // 2, self.num_outputs, self.head_norm, name="head")(
                x, frame_mask, train=train)
        else:
            out = jnp.concatenate([
                FrameHead(self.width // 2, size, self.head_norm, name=f"head_{i}")(
                    x, frame_mask, train=train) for i, size in enumerate(groups)], axis=-1)
        return layers.output_activation(out, self.output_activation)



def default_config() -> ml_collections.ConfigDict:
    """The authors' model for EXPR and AU (d_affine 256; their VA model uses 512): per-set
    positions (Eq. 1), one Linear -> BatchNorm -> Linear head per output. EXPR's single 8-class
    head needs head_sizes=(8,). attention_dropout (a float placeholder left at None) means
    `dropout`."""
    return ml_collections.ConfigDict({
        "name": "fusion",
        "feature_sets": ("vit", "openface"),
        "d_affine": 256,
        "input_dropout": 0.5,
        "num_layers": 4,
        "num_heads": 4,
        "mlp_ratio": 2,
        "dropout": 0.2,
        "attention_dropout": config_dict.placeholder(float),
        "norm": "post",
        "activation": "relu",
        "pe_after_concat": False,
        "pe_dropped": False,
        "heads": "per_output",
        "head_sizes": (),
        "head_norm": "batch",
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
    kwargs = layers.module_kwargs(MultiEncoderFusion, model_cfg, ("feature_sets", "head_sizes"))
    model = MultiEncoderFusion(num_outputs=num_outputs, dtype=jnp.dtype(dtype), **kwargs)
    _validate(model)
    return model


def _validate(model: MultiEncoderFusion) -> None:
    """Rejects bad options at build time, naming the config key."""
    need = checks.checker(model, prefix="model.")

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
    need(model.heads in HEADS, "heads", f"one of {HEADS}")
    need(all(int(k) >= 1 for k in model.head_sizes), "head_sizes", "sizes must be >= 1")
    need(model.heads == "shared" or sum(model.output_groups()) == model.num_outputs,
         "head_sizes", f"must add up to the {model.num_outputs} outputs")
    need(model.attention_dropout is None or 0.0 <= model.attention_dropout < 1.0,
         "attention_dropout", "must be in [0, 1) (or None: the dropout rate)")
    need(model.output_activation in layers.OUTPUT_ACTIVATIONS, "output_activation",
         f"one of {layers.OUTPUT_ACTIVATIONS}")
    need(model.norm in layers.NORMS, "norm", f"one of {layers.NORMS}")
    need(model.activation in layers.ACTIVATIONS, "activation", f"one of {layers.ACTIVATIONS}")
