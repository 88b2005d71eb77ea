"""Trains a temporal model on per-frame features for one ABAW challenge.

  python -m abaw_jax.train --config configs/va.py:demo --workdir runs/va_demo

Sections, top to bottom: devices and mesh, input, model and optimizer, update step, checkpoint
resume, evaluation, loop. Re-running the same command resumes from the workdir's checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import signal
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from abaw_jax import checkpoints, losses, metrics, sharding, writers
from abaw_jax import config as config_lib
from abaw_jax.data import affwild2, device_bank, features as features_lib, pipeline
from abaw_jax.models import build_model


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient; the message names the step."""


@dataclasses.dataclass
class Data:
    """The datasets of a run, resolved from the config."""
    root: pathlib.Path
    train: list[affwild2.Video]
    val: list[affwild2.Video]
    features: Any  # FeatureStore, or FeatureSets for the fusion model

    @property
    def feature_dims(self) -> int | dict[str, int]:
        """The input width, or {set: width} for several feature sets."""
        if isinstance(self.features, features_lib.FeatureSets):
            return dict(self.features.dims)
        return self.features.dim


def open_features(config: ml_collections.ConfigDict, root: pathlib.Path):
    """The feature store of the run, or the aligned feature sets a fusion model reads."""
    if config.model.name != "fusion":
        return features_lib.FeatureStore(config.data.features or root / "features" / "vit")
    given = dict(item.split("=", 1) for item in config.data.features.split(",") if "=" in item)
    if config.data.features and not given:
        raise config_lib.ConfigError(
            f"config.data.features = {config.data.features!r}: a fusion model needs "
            f"'name=path,name=path' (or empty for <root>/features/<name>)")
    return features_lib.FeatureSets(
        {name: given.get(name, root / "features" / name) for name in config.model.feature_sets})


def resolve_data(config: ml_collections.ConfigDict) -> Data:
    """Loads annotations and opens the features; builds the demo dataset when none is set."""
    if config.data.root:
        root = pathlib.Path(config.data.root).expanduser()
    else:
        from abaw_jax.data import demo
        d = config.data.demo
        root = demo.ensure_demo(num_videos=d.num_videos, seed=d.seed, length_scale=d.length_scale,
                                feature_sets={"vit": d.dim, "openface": 17})
        if jax.process_index() == 0:
            print(f"No dataset configured (config.data.root): using the built-in demo dataset at "
                  f"{root}", file=sys.stderr, flush=True)
    store = open_features(config, root)
    train = affwild2.load_split(root, config.task, "train")
    val = affwild2.load_split(root, config.task, "val")
    if config.data.fold >= 0:
        from abaw_jax.data.folds import fold_split
        train, val = fold_split(train + val, config.data.fold, config.data.num_folds)
    for split, videos in (("train", train), ("val", val)):
        missing = [v.name for v in videos if v.name not in store]
        if missing:
            raise features_lib.StoreError(
                f"features at {config.data.features or root / 'features'} lack {len(missing)} "
                f"{split} videos of {config.task}, e.g. {missing[:3]}")
    return Data(root=root, train=train, val=val, features=store)


def make_optimizer(config: ml_collections.ConfigDict):
    """AdamW on a warmup-cosine schedule, with global-norm clipping."""
    o = config.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps,
        decay_steps=config.total_steps, end_value=o.lr * o.end_lr_factor)
    chain = []
    if o.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip))
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
    tx = optax.chain(*chain)
    if config.skip_nonfinite:
        # Skips (and counts) updates whose gradients are not finite instead of stopping the run.
        tx = optax.apply_if_finite(tx, max_consecutive_errors=1_000_000)
    return tx, schedule


def make_loss(config: ml_collections.ConfigDict, train_videos: list[affwild2.Video]):
    """The task loss named by `config.loss.name`, with its hyperparameters."""
    name = config.loss.name
    kwargs: dict[str, Any] = {}
    if name == "focal":
        kwargs = dict(alpha=config.loss.alpha, gamma=config.loss.gamma)
    elif name == "ce" and config.loss.label_smoothing:
        kwargs = dict(label_smoothing=config.loss.label_smoothing)
    elif name == "wal":
        # Per-AU weights from each AU's occurrence rate over the valid frames of the train split.
        labels = np.concatenate([v.labels for v in train_videos]).astype(np.float64)
        valid = np.concatenate([v.valid for v in train_videos])
        rates = (labels * valid).sum(0) / np.maximum(valid.sum(0), 1)
        kwargs = dict(weights=losses.au_weights_from_rates(np.clip(rates, 1e-3, 1.0)))
    return losses.get_loss(config.task, name, **kwargs)


def model_inputs(batch: dict) -> tuple:
    """(features, present, frame_mask); features is {set: array} when several sets are read."""
    sets = {k.split("/", 1)[1]: v for k, v in batch.items() if k.startswith("features/")}
    return (sets or batch["features"]), batch["present"], batch["frame_mask"]


def init_state(model, tx, feature_dims: int | dict[str, int], seq_len: int, rng) -> dict:
    """Params and optimizer state of a fresh run (traceable: jitted with output shardings)."""
    x = jax.tree.map(lambda d: jnp.zeros((1, seq_len, d), jnp.float32), feature_dims)
    m = jnp.ones((1, seq_len), bool)
    params = model.init({"params": rng}, x, m, m, train=False)["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


@dataclasses.dataclass
class ModelSetup:
    """The model, optimizer and the (abstract) train state of a config, shared by train and evaluate."""
    model: Any
    tx: Any
    schedule: Any
    init_fn: Any          # jitted rng -> state, replicated over the mesh
    init_rng: Any
    train_rng: Any
    abstract_state: Any   # shapes, dtypes and shardings: the orbax restore target


def setup_model(config: ml_collections.ConfigDict, feature_dims, mesh) -> ModelSetup:
    """Builds the model and optimizer of `config` and the shape of their state on `mesh`."""
    repl = sharding.replicated(mesh)
    dtype = sharding.compute_dtype(config.compute_dtype)
    model = build_model(config.model, affwild2.NUM_OUTPUTS[config.task], dtype)
    tx, schedule = make_optimizer(config)
    init_rng, train_rng = make_rngs(config.seed, config.rng_impl)
    init_fn = jax.jit(lambda r: init_state(model, tx, feature_dims, config.data.seq_len, r),
                      out_shardings=repl)
    abstract_state = checkpoints.abstract_like(jax.eval_shape(init_fn, init_rng), repl)
    return ModelSetup(model, tx, schedule, init_fn, init_rng, train_rng, abstract_state)


def make_rngs(seed: int, impl: str = "threefry2x32") -> tuple[jax.Array, jax.Array]:
    """(init_rng, train_rng) of a run: parameters come from a threefry key of `seed` whatever
    `impl` is; the per-step randomness (dropout, masking) from a key of PRNG `impl`.

    On the 2-core CPU, "rbg" makes the small train steps of systems A, B and C 4 to 16% faster
    than threefry (docs/performance.md): threefry's bits are computed by XLA loops, RngBitGenerator's by one op.
    """
    init_rng, train_rng = jax.random.split(jax.random.key(seed))
    if impl != "threefry2x32":
        train_seed = int(jax.random.bits(train_rng, (), jnp.uint32))
        train_rng = jax.random.key(train_seed, impl=impl)
    return init_rng, train_rng


def make_train_step(model, tx, loss_fn, schedule, rng):
    """The pure update: (state, batch) -> (state, metrics)."""

    def train_step(state, batch):
        step_rng = jax.random.fold_in(rng, state["step"])
        mask_rng, dropout_rng = jax.random.split(step_rng)

        def compute_loss(params):
            out = model.apply({"params": params}, *model_inputs(batch), train=True,
                              rngs={"masking": mask_rng, "dropout": dropout_rng})
            return loss_fn(out, batch["labels"], batch["valid"])

        loss, grads = jax.value_and_grad(compute_loss)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        stats = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                 "lr": schedule(state["step"])}
        if hasattr(opt_state, "notfinite_count"):
            stats["skipped_updates"] = opt_state.total_notfinite
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, stats

    return train_step


def make_predict(model):
    """Per-frame outputs of a batch at evaluation (no masking, no dropout)."""

    def predict(params, batch):
        return model.apply({"params": params}, *model_inputs(batch), train=False)

    return predict


def predict_split(predict_fn, params, videos, store, config, mesh) -> list[np.ndarray]:
    """Per-frame outputs [T, C] for every frame of every video (sliding windows, overlaps averaged)."""
    seq_len = config.data.seq_len
    bs = config.eval_batch_size or config.batch_size
    sharding.check_batch_size(bs, mesh, "eval_batch_size")
    assembler = pipeline.Assembler(videos, affwild2.NUM_OUTPUTS[config.task])
    batches = pipeline.eval_batches(
        videos, store, seq_len=seq_len, stride=config.data.eval_stride or seq_len, batch_size=bs,
        process_index=jax.process_index(), process_count=jax.process_count())
    for batch in batches:
        out = predict_fn(params, sharding.to_global(_model_keys(batch), mesh))
        rows = {"out": out}
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            rows = multihost_utils.process_allgather(
                {"out": out, "video": batch["video"], "start": batch["start"],
                 "frame_mask": batch["frame_mask"], "batch_mask": batch["batch_mask"]}, tiled=True)
            local = rows
        else:
            local = batch
        keep = np.asarray(local["batch_mask"])
        assembler.add(np.asarray(rows["out"], np.float32)[keep], np.asarray(local["video"])[keep],
                      np.asarray(local["start"])[keep], np.asarray(local["frame_mask"])[keep])
    return assembler.result()


def score_split(task: str, outputs: list[np.ndarray], videos: list[affwild2.Video]) -> tuple[float, dict]:
    """The official metric over all valid frames of a split."""
    out = np.concatenate(outputs)
    labels = np.concatenate([v.labels for v in videos])
    valid = np.concatenate([v.valid for v in videos])
    return metrics.task_score(task, out, labels, valid)


def _install_sigterm() -> dict:
    """SIGTERM (preemption) sets a flag; the loop saves a checkpoint and exits cleanly.

    With several processes the flag of one would not stop the others, so the handler stays
    JAX's: `jax.distributed.initialize` starts a preemption service that catches SIGTERM and
    agrees on a step at which every process saves (`reached_preemption` in the loop).
    """
    flag = {"stop": False, "installed": False, "previous": None}
    if jax.process_count() > 1:
        return flag

    def handler(signum, frame):
        flag["stop"] = True

    try:
        flag["previous"] = signal.signal(signal.SIGTERM, handler)
        flag["installed"] = True
    except ValueError:  # not the main thread (e.g. inside some test runners)
        pass
    return flag


def _restore_sigterm(flag: dict) -> None:
    """Puts back the SIGTERM handler that `_install_sigterm` replaced.

    A previous handler installed outside Python reads as None and cannot be put back; the
    default action is restored then.
    """
    if flag["installed"]:
        previous = flag["previous"]
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Runs (or resumes) training in `workdir`; returns the last validation metrics."""
    config_lib.validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        checkpoints.write_atomic(workdir / "config.json",
                                 config.to_json_best_effort(indent=2) + "\n")

    # Devices and mesh.
    mesh = sharding.make_mesh(config.mesh_data)
    sharding.check_batch_size(config.batch_size, mesh)
    repl = sharding.replicated(mesh)

    # Input.
    data = resolve_data(config)
    seq_len = config.data.seq_len
    # With a device bank the train features live on the devices; grain delivers only indices,
    # labels and masks.
    bank = device_bank.maybe_build(config.data.device_bank, data.train, data.features, seq_len,
                                   mesh)
    train_iter = pipeline.train_dataset(
        data.train, data.features, seq_len=seq_len, stride=config.data.train_stride or seq_len,
        batch_size=config.batch_size, seed=config.seed, num_threads=config.data.num_threads,
        prefetch=config.data.prefetch, process_index=jax.process_index(),
        process_count=jax.process_count(), read_features=bank is None)
    batch_keys = _train_keys if bank is None else bank.batch_keys

    # Model and optimizer.
    setup = setup_model(config, data.feature_dims, mesh)
    model, tx, schedule = setup.model, setup.tx, setup.schedule
    abstract_state = setup.abstract_state
    loss_fn = make_loss(config, data.train)

    # Update step: one pure jitted function; the old state's buffers are donated.
    step_fn = make_train_step(model, tx, loss_fn, schedule, setup.train_rng)
    if bank is None:
        train_step = jax.jit(step_fn, in_shardings=(repl, sharding.batch_sharding(mesh)),
                             out_shardings=(repl, repl), donate_argnums=(0,))
    else:
        train_step = bank.jit_step(step_fn, mesh)
    predict = jax.jit(make_predict(model), in_shardings=(repl, sharding.batch_sharding(mesh)),
                      out_shardings=sharding.batch_sharding(mesh))

    # Checkpoint resume: the workdir's own checkpoint, then config.model_init, then scratch.
    ckpt = checkpoints.RunCheckpoints(workdir, keep=config.keep_checkpoints)
    if ckpt.latest_step() is not None:
        step, state = ckpt.restore_latest(abstract_state, train_iter)
        logging.info("resumed from %s at step %d", workdir, step)
        if is_main:
            print(f"Resuming from step {step} in {workdir}", file=sys.stderr, flush=True)
    else:
        state = setup.init_fn(setup.init_rng)
        if config.model_init:
            _, init_from = checkpoints.restore_params(config.model_init, abstract_state)
            state = dict(state, params=init_from["params"])
    step = int(state["step"])

    writer = writers.MetricWriter(workdir)
    progress = writers.Progress(config.total_steps, config.batch_size * seq_len, step,
                                enabled=is_main and config.progress)
    pending: list[tuple[int, dict]] = []   # device-side step metrics not yet fetched
    last_eval: dict = {}

    def flush_metrics() -> None:
        """Fetches pending step metrics, stops on a non-finite loss or gradient, logs the mean."""
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched):
            # A finite loss can still come with NaN gradients (and so NaN parameters).
            bad = [k for k in ("loss", "grad_norm") if not np.isfinite(m[k])]
            if not config.skip_nonfinite and bad:
                ckpt.wait()
                what = " and ".join(f"{k} ({m[k]})" for k in bad)
                raise NonFiniteLossError(
                    f"non-finite training {what} at step {s}; the last good checkpoint in "
                    f"{workdir / 'checkpoints'} is intact"
                    f"{_nonfinite_features_hint(data.features, data.train)}")
        last_step = pending[-1][0]
        # Losses are averaged over the logging interval; the schedule and counters are current.
        mean = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        for k in ("lr", "skipped_updates"):
            if k in fetched[-1]:
                mean[f"train/{k}"] = float(fetched[-1][k])
        mean.update({f"perf/{k}": v for k, v in progress.update(
            last_step, f"loss {mean['train/loss']:.4f}").items()})
        writer.write(last_step, mean)
        pending.clear()

    def evaluate_now(s: int) -> dict:
        flush_metrics()   # the state offered as the best must have followed finite steps
        outputs = predict_split(predict, state["params"], data.val, data.features, config, mesh)
        score, details = score_split(config.task, outputs, data.val)
        result = {"val/score": score, **{f"val/{k}": v for k, v in details.items()
                                         if isinstance(v, (int, float))}}
        writer.write(s, result)
        if is_main:
            shown = "  ".join(f"{k}={v:.4f}" for k, v in result.items())
            print(f"eval at step {s}: {shown}", file=sys.stderr, flush=True)
        ckpt.save_best(s, state, score)
        return result

    # Loop. A SIGTERM before it (loading, restoring) ends the process: nothing new to save yet.
    stop = _install_sigterm()
    try:
        while step < config.total_steps:
            batch = sharding.to_global(batch_keys(next(train_iter)), mesh)
            state, stats = train_step(state, batch)
            step += 1
            pending.append((step, stats))
            final = step == config.total_steps
            if step % config.log_every == 0 or final or stop["stop"]:
                flush_metrics()
            preempted = stop["stop"] or ckpt.latest.reached_preemption(step)
            if step % config.checkpoint_every == 0 or final or preempted:
                flush_metrics()   # never save a state that followed a non-finite loss
                ckpt.save(step, state, train_iter, force=True)
                if preempted:
                    ckpt.wait()
                    if is_main:
                        print(f"Preempted: saved step {step}; re-run the same command to resume",
                              file=sys.stderr, flush=True)
                    return last_eval
            if step % config.eval_every == 0 or final:
                last_eval = evaluate_now(step)
        if not last_eval and data.val:
            last_eval = evaluate_now(step)
    finally:
        _restore_sigterm(stop)
        ckpt.wait()
        ckpt.close()
        writer.close()
    if is_main:
        checkpoints.write_atomic(workdir / "final_metrics.json",
                                 json.dumps({"step": step, **last_eval}, indent=2) + "\n")
    return last_eval


def _nonfinite_features_hint(features, videos: list[affwild2.Video]) -> str:
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


def _model_keys(batch: dict) -> dict:
    """The arrays the model reads (features, or features/<set>, and the two frame masks)."""
    return {k: v for k, v in batch.items()
            if k in ("features", "present", "frame_mask") or k.startswith("features/")}


def _train_keys(batch: dict) -> dict:
    return dict(_model_keys(batch), labels=batch["labels"], valid=batch["valid"])


def main(argv) -> None:
    del argv
    from absl import flags
    cfg = flags.FLAGS.config
    sharding.initialize_distributed(flags.FLAGS.coordinator, flags.FLAGS.num_processes,
                                    flags.FLAGS.process_id)
    train_and_evaluate(cfg, flags.FLAGS.workdir)


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "config file (with :variants)", lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, predictions)")
    flags.DEFINE_string("coordinator", "", "host:port of process 0 for multi-process runs "
                        "launched by hand (SLURM, Open MPI and TPU pods are detected)")
    flags.DEFINE_integer("num_processes", 0, "number of processes (with --coordinator)")
    flags.DEFINE_integer("process_id", -1, "this process's index (with --coordinator)")
    flags.mark_flags_as_required(["config", "workdir"])


def _is_input_error(e: BaseException) -> bool:
    """Errors that describe bad input or a failed run, not a bug: shown as one line at the CLI.

    These are the project's ValueError subclasses (AnnotationError, LayoutError, StoreError,
    ConfigError, SubmissionError, WeightsError, ...; each names the file, line or key),
    NonFiniteLossError, and missing files.
    """
    if isinstance(e, (NonFiniteLossError, FileNotFoundError)):
        return True
    return isinstance(e, ValueError) and type(e).__module__.startswith("abaw_jax.")


def run(main_fn, validate_fn=config_lib.validate) -> None:
    """The absl entry of every config-driven command (train, evaluate, extract, pretrain).

    Defines --config, --workdir and the multi-process flags, validates the config with
    `validate_fn` before anything touches a device, and prints the project's input errors as one
    `error:` line.
    """
    from absl import app, flags
    _define_flags()

    def wrapped(argv):
        from absl import logging as absl_logging
        if not flags.FLAGS["verbosity"].present:
            # Library INFO lines (every orbax save) drown the progress line; -v 0 brings them back.
            absl_logging.set_verbosity(absl_logging.WARNING)
        try:
            validate_fn(flags.FLAGS.config)
            main_fn(argv)
        except Exception as e:
            if not _is_input_error(e):
                raise   # a bug: keep the traceback
            sys.exit(f"error: {e}")

    app.run(wrapped)


if __name__ == "__main__":
    run(main)
