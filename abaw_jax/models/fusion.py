"""System C: several per-frame feature sets fused by a Transformer encoder.

Shen, Liu et al. (Hefei University of Technology), "Facial Affect Recognition based on Multi
Architecture Encoder and Feature Fusion for the ABAW7 Challenge". Each feature set (e.g. ViT
768-d, OpenFace AU intensities 17-d) goes through its own "affine module", a Dense to a common
width `d_affine` plus a sinusoidal position encoding; the aligned sets are concatenated along
channels and fused over time:

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

The multi-task challenge as the paper's own code (ABAW2023-HFUT/ABAW7 `test.py`) runs it; that
repository lacks its model file, so the structure below is inferred from how `test.py` builds
and reads the model (`MyModel(lengths, input_dim=384, mlp_ratio=4, nheads=4, nlayer=4,
dropout=0.5, cls=True, out_head='linear')`, outputs indexed V, A, EXPR, then 12 AUs):

    fuse="sets": per frame, one token per feature set (Dense(d_affine)) and a learned class
                 token, sinusoidal positions over the tokens, an encoder of width d_affine over
                 the tokens of that frame alone (a static model: frames do not interact),
                 heads on the class token;
    head_layers=1: each head one Dense (the code's `out_head='linear'`);
    task_models=(1, 1, 8, 12): one whole model per output group trained together (the code's
                 model1..model4 for V, A, EXPR and AU, one optimizer); each group's outputs are
                 read from its own model;
    feature_noise=0.1: in training, noise N(0, 0.1^2) added to a random half of each feature
                 vector's entries (the code calls `feature_perturbation(x, int(0.5 * D), 0.1)`,
                 whose definition is missing too: the half and the 0.1 are its arguments, the
                 additive Gaussian form is inferred).

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

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from abaw_jax import checks
from abaw_jax.models import layers
from abaw_jax.models.tcn import HEAD_NORMS, FrameHead

HEADS = ("per_output", "shared")
FUSES = ("time", "sets")


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
    fuse: str = "time"
    head_layers: int = 2
    task_models: Sequence[int] = ()
    feature_noise: float = 0.0
    dtype: Any = jnp.float32

    @property
    def width(self) -> int:
        """The encoder width: d = d_affine * number of feature sets over time ("time"),
        d_affine over the set tokens of one frame ("sets")."""
        return self.d_affine if self.fuse == "sets" else self.d_affine * len(self.feature_sets)

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
        if self.task_models:
            return self._task_models(features, present, frame_mask, train=train)
        if self.fuse == "sets":
            return self._heads(self._fuse_sets(features, present, train=train), frame_mask,
                               train=train)
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
        x = self._encoder()(x, key_mask, train=train)
        return self._heads(x, frame_mask, train=train)

    def _encoder(self) -> nn.Module:
        return layers.Encoder(num_layers=self.num_layers, num_heads=self.num_heads,
                              mlp_dim=self.mlp_ratio * self.width,
                              dropout=self.dropout, attention_dropout=self.attention_dropout,
                              norm=self.norm, activation=self.activation, dtype=self.dtype,
                              attention_impl=self.attention_impl, name="encoder")

    def _task_models(self, features, present, frame_mask, *, train: bool) -> jax.Array:
        """One whole model per group of `task_models` outputs (`task_<k>`), trained together;
        group k's outputs are read from model k."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.init and f.name not in ("parent", "name")}
        outs, start = [], 0
        for k, size in enumerate(self.task_models):
            sub = MultiEncoderFusion(**dict(fields, task_models=()), name=f"task_{k}")
            outs.append(sub(features, present, frame_mask, train=train)[..., start:start + size])
            start += size
        return jnp.concatenate(outs, axis=-1)

    def _fuse_sets(self, features, present, *, train: bool) -> jax.Array:
        """[B, L, d_affine]: per frame, the class token after an encoder over the frame's
        feature-set tokens (see the module docstring, fuse="sets")."""
        b, l = present.shape
        tokens = []
        for name in self.feature_sets:
            x = jnp.asarray(features[name], jnp.float32)
            if self.feature_noise and train:
                x = perturb_features(x, self.make_rng("dropout"), self.feature_noise)
            tokens.append(nn.Dense(self.d_affine, dtype=self.dtype, name=f"affine_{name}")(x))
        cls = self.param("cls_token", nn.initializers.normal(0.02), (self.d_affine,), jnp.float32)
        x = jnp.stack([jnp.broadcast_to(cls.astype(self.dtype), tokens[0].shape), *tokens], axis=2)
        positions = jnp.asarray(layers.sinusoidal_positions(x.shape[2], self.d_affine), self.dtype)
        if self.pe_dropped:
            x = x + positions
        x = nn.Dropout(self.input_dropout)(x, deterministic=not train)
        if not self.pe_dropped:
            x = x + positions
        x = x.reshape(b * l, x.shape[2], self.d_affine)
        x = self._encoder()(x, jnp.ones(x.shape[:2], bool), train=train)
        return x[:, 0].reshape(b, l, self.d_affine)

    def _heads(self, x: jax.Array, frame_mask, *, train: bool) -> jax.Array:
        frame_mask = jnp.asarray(frame_mask, bool)
        groups = self.output_groups()
        if sum(groups) != self.num_outputs:
            raise ValueError(f"model.head_sizes = {tuple(self.head_sizes)}: the head sizes must "
                             f"add up to the {self.num_outputs} outputs")

        def head(size, name):
            if self.head_layers == 1:
                return nn.Dense(size, dtype=jnp.float32, name=name)(x.astype(jnp.float32))
            return FrameHead(self.width // 2, size, self.head_norm, name=name)(
                x, frame_mask, train=train)

        if self.heads == "shared":
            out = head(self.num_outputs, "head")
        else:
            out = jnp.concatenate([head(size, f"head_{i}") for i, size in enumerate(groups)],
                                  axis=-1)
        return layers.output_activation(out, self.output_activation)


def perturb_features(x: jax.Array, rng: jax.Array, scale: float) -> jax.Array:
    """x + N(0, scale^2) on a random half (int(D / 2) entries, drawn per frame) of each feature
    vector [..., D]: system C's training-time feature perturbation (form inferred, see above)."""
    d = x.shape[-1]
    k = max(1, int(0.5 * d))
    pick_rng, noise_rng = jax.random.split(rng)
    u = jax.random.uniform(pick_rng, x.shape)
    chosen = u <= jnp.sort(u, axis=-1)[..., k - 1:k]
    return x + jnp.where(chosen, scale * jax.random.normal(noise_rng, x.shape), 0.0)



def default_config() -> ml_collections.ConfigDict:
    """The authors' model for EXPR and AU (d_affine 256; their VA model uses 512): per-set
    positions (Eq. 1), one Linear -> BatchNorm -> Linear head per output. EXPR's single 8-class
    head needs head_sizes=(8,). attention_dropout (a float placeholder left at None) means
    `dropout`."""
    return layers.default_config(MultiEncoderFusion, "fusion")


def tiny_config() -> ml_collections.ConfigDict:
    """A tiny variant for tests: d_affine 8 per set, 1 encoder layer, 2 heads."""
    config = default_config()
    config.update(dict(d_affine=8, num_layers=1, num_heads=2))
    return config


def from_config(model_cfg: Mapping[str, Any], num_outputs: int,
                dtype: Any = jnp.float32) -> MultiEncoderFusion:
    """The module of `config.model`, its options checked (see `layers.from_config`)."""
    return layers.from_config(MultiEncoderFusion, model_cfg, num_outputs, dtype, _validate,
                              ("feature_sets", "head_sizes", "task_models"))


def _validate(model: MultiEncoderFusion) -> None:
    """Rejects bad options at build time, naming the config key."""
    need = checks.checker(model, prefix="model.")
    layers.check_common(need, model)
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
    need(model.head_norm in HEAD_NORMS, "head_norm", f"one of {HEAD_NORMS}")
    need(model.heads in HEADS, "heads", f"one of {HEADS}")
    need(all(int(k) >= 1 for k in model.head_sizes), "head_sizes", "sizes must be >= 1")
    need(model.heads == "shared" or sum(model.output_groups()) == model.num_outputs,
         "head_sizes", f"must add up to the {model.num_outputs} outputs")
    need(model.fuse in FUSES, "fuse", f"one of {FUSES}")
    need(model.head_layers in (1, 2), "head_layers", "1 (one Dense) or 2 (Dense, norm, Dense)")
    need(all(int(k) >= 1 for k in model.task_models), "task_models", "sizes must be >= 1")
    need(not model.task_models or sum(model.task_models) == model.num_outputs, "task_models",
         f"must add up to the {model.num_outputs} outputs (or be empty: one model)")
    need(model.feature_noise >= 0.0, "feature_noise", "must be >= 0")
