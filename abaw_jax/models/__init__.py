"""Temporal models, built by name from `config.model`: "transformer" (system A), "tcn" (system B),
"fusion" (system C). Each module exposes `from_config`, `default_config` and `tiny_config`."""

from __future__ import annotations

import ml_collections


def build_model(model_config: ml_collections.ConfigDict, num_outputs: int, dtype):
    """Returns the Flax module named by `model_config.name`."""
    from abaw_jax.models import fusion, tcn, temporal
    modules = {"transformer": temporal, "tcn": tcn, "fusion": fusion}
    if model_config.name not in modules:
        raise ValueError(f"model.name={model_config.name!r}: unknown model; known: "
                         f"{', '.join(modules)}")
    return modules[model_config.name].from_config(model_config, num_outputs, dtype)
