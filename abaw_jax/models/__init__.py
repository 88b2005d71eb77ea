"""Temporal models, built by name from `config.model`: "transformer" (system A), "tcn" (system B),
"fusion" (system C). Each module exposes `from_config`, `default_config` and `tiny_config`.

Model state besides the parameters: a model with BatchNorm heads (system B's and C's default
`head_norm="batch"`) also has a "batch_stats" collection of running statistics. The helpers
below keep the train state uniform across models: `split_variables` separates the result of
`model.init` into params and the other collections ("model state", {} for models without any),
`apply_train` runs a training forward pass that returns the updated model state, and
`model_variables` assembles what `model.apply` takes at inference from a train state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections


# The temporal model families, by the name `config.model.name` gives them.
MODEL_NAMES = ("transformer", "tcn", "fusion")


def model_module(name: str):
    """The module of the temporal model family `name` (the one decoder of model names)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"model.name = {name!r}: unknown model; known: {', '.join(MODEL_NAMES)}")
    from abaw_jax.models import fusion, tcn, temporal
    return {"transformer": temporal, "tcn": tcn, "fusion": fusion}[name]


def default_config(name: str) -> ml_collections.ConfigDict:
    """Every option of the model family `name` at its default, and its `name`."""
    return model_module(name).default_config()


def build_model(model_config: ml_collections.ConfigDict, num_outputs: int, dtype):
    """The Flax module named by `model_config.name`, its options checked (a bad one is a
    ValueError naming `model.<key>`)."""
    return model_module(model_config.name).from_config(model_config, num_outputs, dtype)


def split_variables(variables: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """`model.init(...)` output -> (params, model state): every collection but "params" (and
    "intermediates", which is never state) goes into the model state, {} when there is none."""
    state = {k: v for k, v in variables.items() if k not in ("params", "intermediates")}
    return variables["params"], state


def model_variables(state: Mapping[str, Any]) -> dict[str, Any]:
    """The variables `model.apply` takes, from a train state {"params", "model_state"?, ...}."""
    return {"params": state["params"], **state.get("model_state", {})}


def apply_train(model, params: Any, model_state: Mapping[str, Any], *inputs: Any,
                rngs: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A training forward pass: (outputs, updated model state).

    The model-state collections are mutable during the call, so BatchNorm moves its running
    averages; with an empty model state this is a plain `model.apply` and the state stays {}.
    Gradients flow to `params` only (differentiate with respect to the first argument).
    """
    variables = {"params": params, **model_state}
    if not model_state:
        return model.apply(variables, *inputs, train=True, rngs=rngs), {}
    out, updates = model.apply(variables, *inputs, train=True, rngs=rngs,
                               mutable=list(model_state))
    return out, dict(updates)
