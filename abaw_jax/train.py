"""Trains a temporal model on per-frame features for one ABAW challenge.

  python -m abaw_jax.train --config configs/va.py:demo --workdir runs/va_demo

Sections, top to bottom: devices and mesh, input, model and optimizer, update step, checkpoint
resume, evaluation, loop (`abaw_jax.loop`). Re-running the same command resumes from the
workdir's checkpoint.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from abaw_jax import best_parts, checkpoints, cli, files, losses, loop as loop_lib, metrics, models, optim, runs
from abaw_jax import sharding, writers
from abaw_jax import config as config_lib
from abaw_jax.data import affwild2, device_bank, features as features_lib, mtl, pipeline

def task_loss(config: ml_collections.ConfigDict, task: str, name: str, labels: np.ndarray,
              valid: np.ndarray):
    """The loss `name` of `task` with its hyperparameters; `labels` / `valid` are the training
    split's (the weighted asymmetric loss takes its AU weights from them)."""
    kwargs: dict[str, Any] = {}
    if name == "focal":
        kwargs = dict(alpha=config.loss.alpha, gamma=config.loss.gamma)
        if task == "AU":
            kwargs["alpha_mode"] = config.loss.alpha_mode
        if config.loss.class_weights == "inverse_frequency":
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


def make_train_step(model, tx, loss_fn, schedule, rng):
    """The pure update: (state, batch) -> (state, metrics)."""

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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Runs (or resumes) training in `workdir`; returns the last validation metrics."""
    config_lib.validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        files.write_atomic(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")

    # Devices and mesh.
    mesh = sharding.make_mesh(config.mesh_data)
    sharding.check_batch_size(config.batch_size, mesh)
    repl = sharding.replicated(mesh)

    # Input.
    data = runs.resolve_data(config)
    seq_len = config.data.seq_len
    plan = optim.resolve_steps(config, runs.steps_per_epoch(config, data.train))
    optim.report(plan)
    # With a device bank the train features live on the devices; grain delivers only indices,
    # labels and masks.
    bank = device_bank.maybe_build(config.data.device_bank, data.train, data.features, seq_len,
                                   mesh)
    train_iter = pipeline.train_dataset(
        data.train, data.features, seq_len=seq_len, stride=config.data.train_stride or seq_len,
        batch_size=config.batch_size, seed=config.seed, num_threads=config.data.num_threads,
        prefetch=config.data.prefetch, process_index=jax.process_index(),
        process_count=jax.process_count(), read_features=bank is None)
    batch_keys = train_keys if bank is None else bank.batch_keys

    # Model and optimizer.
    setup = runs.setup_model(config, data.feature_dims, mesh, plan)
    loss_fn = make_loss(config, data.train)

    # Update step: one pure jitted function; the old state's buffers are donated.
    step_fn = make_train_step(setup.model, setup.tx, loss_fn, setup.schedule, setup.train_rng)
    if bank is None:
        train_step = sharding.jit(step_fn, mesh, in_shardings=(repl, sharding.batch_sharding(mesh)),
                                  out_shardings=(repl, repl), donate_argnums=(0,))
    else:
        train_step = bank.jit_step(step_fn, mesh)
    predict = runs.jit_predict(setup.model, mesh)

    # Checkpoint resume: the workdir's own checkpoint, then config.model_init, then scratch.
    def fresh_state():
        state = setup.init_fn(setup.init_rng)
        if config.model_init:
            _, init_from = checkpoints.restore_params(config.model_init, setup.abstract_state)
            state = dict(state, params=init_from["params"])
            if "model_state" in init_from:
                state["model_state"] = init_from["model_state"]
        return state

    ckpt, state, step = loop_lib.start(workdir, setup.abstract_state, fresh_state, train_iter,
                                       config.keep_checkpoints)

    # Evaluation on the validation split with the challenge metric.
    tracker = best_parts.Tracker(workdir, config.task) if best_parts.enabled(config) else None

    def evaluate(state, s: int) -> loop_lib.Evaluation:
        outputs = runs.predict_split(predict, models.model_variables(state), data.val, data.features, config,
                                     mesh)
        score, details = runs.score_split(config.task, outputs, data.val)
        if tracker:
            tracker.update(s, state, details)
        values = {"score": score, **{k: v for k, v in details.items()
                                     if isinstance(v, (int, float))}}
        return loop_lib.Evaluation(score, values, metrics.describe(config.task, score, details))

    eval_every, checkpoint_every = loop_lib.cadence(config, plan.steps_per_epoch)
    writer = writers.MetricWriter(workdir)
    progress = writers.Progress(plan.total_steps, config.batch_size * seq_len, step,
                                enabled=is_main and config.progress)
    loop = loop_lib.Loop(
        workdir=workdir, total_steps=plan.total_steps, log_every=config.log_every,
        eval_every=eval_every, checkpoint_every=checkpoint_every, ckpt=ckpt,
        writer=writer, progress=progress, mesh=mesh, skip_nonfinite=config.skip_nonfinite,
        patience=config.early_stopping_patience,
        min_delta=config.early_stopping_min_delta,
        nonfinite_hint=lambda: nonfinite_features_hint(data.features, data.train))
    try:
        result = loop.run(state, step, train_iter, train_step,
                          lambda b: sharding.to_global(batch_keys(b), mesh),
                          evaluate if data.val else None)
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
    if is_main and not result.preempted:
        files.write_json(workdir / "final_metrics.json", {"step": result.step, **result.last_eval})
    return result.last_eval


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


def train_keys(batch: dict) -> dict:
    """The arrays a train step reads: the model's inputs, labels and their valid masks."""
    return dict(runs.model_keys(batch), labels=batch["labels"], valid=batch["valid"])


def main(argv) -> None:
    del argv
    from absl import flags
    cli.initialize_distributed()
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
