"""Temporal models, built by name from `config.model`."""

from __future__ import annotations

import ml_collections


def build_model(model_config: ml_collections.ConfigDict, num_outputs: int, dtype):
    """Returns the Flax module named by `model_config.name` ("transformer": system A)."""
    name = model_config.name
    if name == "transformer":
        from abaw_jax.models import temporal
        return temporal.from_config(model_config, num_outputs, dtype)
    raise ValueError(f"config.model.name={name!r}: unknown model; known: 'transformer'")
