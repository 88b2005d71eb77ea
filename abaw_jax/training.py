"""A temporal model's run, built from a config: the one wiring `train`, the benchmark and the
tests share.

`build_run(config)` resolves the data (or takes the caller's), the run's length, the device
bank, the train input, the model and optimizer, the task's loss, the jitted update step and the
evaluation on the validation split, and returns them as a `loop.Run` (plus the parts callers
inspect). `loop.execute` drives it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from abaw_jax import checkpoints, evaluation, loop, losses, metrics, models, optim, runs, sharding
from abaw_jax.data import affwild2, device_bank, features as features_lib, mtl, pipeline


def task_loss(config: ml_collections.ConfigDict, task: str, name: str, labels: np.ndarray,
              valid: np.ndarray):
    """The loss `name` of `task` with its hyperparameters; `labels` / `valid` are the training
    split's (the class-weighted and weighted asymmetric losses take their weights from them)."""
    kwargs: dict[str, Any] = {}
    if name == "focal":
        kwargs = dict(alpha=config.loss.alpha, gamma=config.loss.gamma)
        if task == "AU":
            kwargs["alpha_mode"] = config.loss.alpha_mode
        if config.loss.class_weights == "one_minus_frequency":
            # System A's code: w = 1 - n_c / sum(n), n counted over the train split's valid labels.
            kwargs["counts"] = (losses.class_counts(labels, valid, 8) if task == "EXPR"
                                else losses.positive_counts(labels, valid))
    elif name == "ce" and config.loss.label_smoothing:
        kwargs = dict(label_smoothing=config.loss.label_smoothing)
    elif name in ("wal", "wal_grad"):
        # Per-AU weights from each AU's occurrence rate over the valid frames of the train split.
        labels = np.asarray(labels, np.float64)
        rates = (labels * valid).sum(0) / np.maximum(valid.sum(0), 1)
        kwargs = dict(weights=losses.au_weights_from_rates(np.clip(rates, 1e-3, 1.0)))
    return losses.get_loss(task, name, **kwargs)


def make_loss(config: ml_collections.ConfigDict, train_videos: list[affwild2.Video]):
    """The task loss named by `config.loss.name`; for the multi-task challenge the weighted sum
    of the system's per-task losses (`config.loss.tasks`, `config.loss.task_weights`)."""
    labels = np.concatenate([v.labels for v in train_videos])
    valid = np.concatenate([v.valid for v in train_videos])
    if config.task != "MTL":
        return task_loss(config, config.task, config.loss.name, labels, valid)
    per_task_labels, per_task_valid = mtl.unpack_labels(labels, valid)
    fns = {task: task_loss(config, task, config.loss.tasks[task], per_task_labels[task],
                           per_task_valid[task]) for task in mtl.OUTPUT_COLUMNS}
    return losses.multi_task_loss(fns, dict(config.loss.task_weights))


def make_temporal_step(model, tx, loss_fn, schedule, rng):
    """The pure update of a temporal model: (state, batch) -> (state, step metrics)."""

    def train_step(state, batch):
        step_rng = jax.random.fold_in(rng, state["step"])
        mask_rng, dropout_rng = jax.random.split(step_rng)

        def compute_loss(params, model_state):
            out, new_model_state = models.apply_train(
                model, params, model_state, *runs.model_inputs(batch),
                rngs={"masking": mask_rng, "dropout": dropout_rng})
            return loss_fn(out, batch["labels"], batch["valid"]), new_model_state

        old_model_state = state.get("model_state", {})
        (loss, model_state), grads = jax.value_and_grad(compute_loss, has_aux=True)(
            state["params"], old_model_state)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        stats = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                 "lr": schedule(state["step"])}
        if hasattr(opt_state, "notfinite_count"):
            stats["skipped_updates"] = opt_state.total_notfinite
            # A skipped update keeps the running statistics too.
            model_state = jax.tree.map(lambda n, o: jnp.where(jnp.isfinite(loss), n, o),
                                       model_state, old_model_state)
        new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
        if "model_state" in state:
            new["model_state"] = model_state
        return new, stats

    return train_step


def train_keys(batch: dict) -> dict:
    """The arrays a train step reads: the model's inputs, labels and their valid masks."""
    return dict(runs.model_keys(batch), labels=batch["labels"], valid=batch["valid"])


def nonfinite_features_hint(features, videos: list[affwild2.Video]) -> str:
    """"; <store>: video V frame t holds NaN/inf features" for the first such frame, else "".

    Stores written by FeatureStoreWriter reject NaN, but files changed afterwards are read
    unchecked (checking every batch would cost a pass over the data), so the check runs here,
    once a step has already failed.
    """
    stores = (features.stores.values() if isinstance(features, features_lib.FeatureSets)
              else [features])
    for store in stores:
        for v in videos:
            if v.name not in store:
                continue
            rows = store.read(v.name)
            finite = np.isfinite(rows).all(axis=1) | ~store.present(v.name)
            if not finite.all():
                return (f"; {store.path}: video {v.name!r} frame index {int(np.argmin(finite))} "
                        f"holds NaN/inf features")
    return ""


@dataclasses.dataclass
class TemporalRun:
    """A temporal model's run (`run`, what `loop.execute` drives) and the parts it was built
    from."""
    run: loop.Run
    data: runs.Data
    setup: runs.TemporalSetup
    bank: device_bank.DeviceBank | None
    update: Any          # the un-jitted update step (`make_temporal_step`)
    loss_fn: Any


def build_run(config: ml_collections.ConfigDict, data: runs.Data | None = None) -> TemporalRun:
    """The run of `config` on its dataset (or on `data`); nothing is compiled or restored yet.

    With a device bank (config.data.device_bank) the train features live on the devices and the
    input delivers only indices, labels and masks; the bank's step gathers the windows.
    """
    mesh = sharding.make_mesh(config.mesh_data)
    sharding.check_batch_size(config.batch_size, mesh)
    repl = sharding.replicated(mesh)

    # Input.
    data = data if data is not None else runs.resolve_data(config)
    seq_len = config.data.seq_len
    plan = optim.resolve_steps(config, runs.steps_per_epoch(config, data.train))
    bank = device_bank.maybe_build(config.data.device_bank, data.train, data.features, seq_len,
                                   mesh)
    train_iter = pipeline.train_dataset(
        data.train, data.features, seq_len=seq_len, stride=config.data.train_stride or seq_len,
        batch_size=config.batch_size, seed=config.seed, num_threads=config.data.num_threads,
        prefetch=config.data.prefetch, process_index=jax.process_index(),
        process_count=jax.process_count(), read_features=bank is None)
    batch_keys = train_keys if bank is None else bank.batch_keys

    # Model, optimizer, loss and the update step: one pure jitted function whose old state's
    # buffers are donated.
    setup = runs.setup_model(config, data.feature_dims, mesh, plan)
    loss_fn = make_loss(config, data.train)
    update = make_temporal_step(setup.model, setup.tx, loss_fn, setup.schedule, setup.train_rng)
    if bank is None:
        train_step = sharding.jit(update, mesh,
                                  in_shardings=(repl, sharding.batch_sharding(mesh)),
                                  out_shardings=(repl, repl), donate_argnums=(0,))
    else:
        train_step = bank.jit_step(update, mesh)

    # The first state: config.init_from's parameters (and model state) when set, else scratch.
    def fresh_state():
        state = setup.init_fn(setup.init_rng)
        if config.init_from:
            _, source = checkpoints.restore_params(config.init_from, setup.abstract_state)
            state = dict(state, params=source["params"])
            if "model_state" in source:
                state["model_state"] = source["model_state"]
        return state

    # Evaluation on the validation split with the challenge metric.
    predict = runs.jit_predict(setup.model, mesh)

    def evaluate(state, step: int) -> loop.Evaluation:
        outputs = runs.predict_split(predict, models.model_variables(state), data.val,
                                     data.features, config, mesh)
        score, details = evaluation.score_split(config.task, outputs, data.val)
        return loop.Evaluation(score, metrics.named_values(config.task, score, details),
                               metrics.describe(config.task, score, details))

    run = loop.Run(
        mesh=mesh, plan=plan, abstract_state=setup.abstract_state, fresh_state=fresh_state,
        train_iter=train_iter, train_step=train_step,
        to_batch=lambda b: sharding.to_global(batch_keys(b), mesh),
        evaluate=evaluate if data.val else None, items_per_step=config.batch_size * seq_len,
        skip_nonfinite=config.skip_nonfinite,
        nonfinite_hint=lambda: nonfinite_features_hint(data.features, data.train))
    return TemporalRun(run, data, setup, bank, update, loss_fn)
