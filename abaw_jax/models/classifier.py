"""The image models of `pretrain`: the MAE, or a ViT encoder with a linear classification head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from abaw_jax.models import mae as mae_lib
from abaw_jax.models import vit as vit_lib


class Classifier(nn.Module):
    """A ViT encoder and a linear head: ``images -> logits [B, num_classes]`` (float32)."""

    encoder: vit_lib.ViT
    num_classes: int
    head_dropout: float = 0.0

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        pooled, _ = self.encoder(images, train=train)
        pooled = nn.Dropout(self.head_dropout)(pooled, deterministic=not train)
        # A near-zero head, as in MAE fine-tuning, so early updates go to the head, not noise.
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(2e-5), name="head")(pooled)


def build_image_model(config: ml_collections.ConfigDict, encoder_fields: dict | None = None,
                      dtype=None) -> nn.Module:
    """The MAE, or the classifier (its ViT fields overridden by ``encoder_fields`` from init_from).

    `dtype` is the compute dtype (the caller resolves "auto" from its mesh; float32 when None).
    """
    if dtype is None:
        dtype = jnp.float32 if config.compute_dtype == "auto" else jnp.dtype(config.compute_dtype)
    if config.mode == "mae":
        return mae_lib.mae_from_config(config.model, dtype=dtype)
    fields = dict(config.model)
    head_dropout = fields.pop("head_dropout", 0.0)
    if encoder_fields:
        # The encoder's architecture is the initialisation's; config.model sets the rest.
        for key in vit_lib.DIM_FIELDS + ("class_token", "layer_norm_eps", "qkv_bias", "final_norm",
                                         "fc_norm", "image_size"):
            if key in encoder_fields:
                fields[key] = encoder_fields[key]
        fields["variant"] = None
    vit = vit_lib.vit_from_config(fields, dtype=dtype)
    return Classifier(vit, config.num_classes, head_dropout)
