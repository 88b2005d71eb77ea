"""MAE pretraining and fine-tuning of the frame encoder on face images (system B).

  python -m abaw_jax.pretrain --config configs/mae_face.py --workdir runs/mae
  python -m abaw_jax.pretrain --config configs/finetune_expr.py --workdir runs/ft \\
      --config.init_from=runs/mae

``config.mode`` picks the job: ``"mae"`` trains a masked autoencoder (``abaw_jax.models.mae``) and
writes a PNG of reconstructions at each evaluation; ``"finetune"`` trains a ViT with a linear
classification head, initialised from ``config.init_from`` (an MAE or fine-tuning workdir, an
encoder directory, or any ViT weights ``abaw_jax.models.encoders.load_encoder`` reads), with
layer-wise learning-rate decay, label smoothing and class weights. Both end by writing
``<workdir>/encoder/`` (``encoder.json`` + ``params.npz``, ``abaw_jax.models.encoders``' encoder
directory format), which ``python -m abaw_jax.extract --config.encoder=<workdir>/encoder`` loads.

Sections, top to bottom: config checks, data, models and optimizer, steps, evaluation, loop.
Re-running the same command resumes from the workdir's checkpoint (train state and data
iterator); SIGTERM saves and exits.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from abaw_jax import checkpoints, sharding, writers
from abaw_jax import config as config_lib
from abaw_jax.data import image_sources
from abaw_jax.models import encoders
from abaw_jax.models import mae as mae_lib
from abaw_jax.models import vit as vit_lib
from abaw_jax.models.encoders import IMAGENET_MEAN, IMAGENET_STD

MODES = ("mae", "finetune")
SOURCES = ("folder", "affwild2", "tfds")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step."""


# ---------------------------------------------------------------------------------------------
# Config.


def base_config(mode: str) -> ml_collections.ConfigDict:
    """Fields shared by ``configs/mae_face.py`` and ``configs/finetune_expr.py``."""
    if mode not in MODES:
        raise config_lib.ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    c = ml_collections.ConfigDict()
    c.mode = mode
    c.seed = 0
    c.rng_impl = "rbg"          # PRNG of masking, augmentation noise and dropout (see train.make_rngs)
    c.data = ml_collections.ConfigDict(dict(
        source="folder",        # "folder" (one subfolder per class), "affwild2", "tfds"
        root="",                # image folder, Aff-Wild2 root, or the TFDS data_dir
        mapping="",             # folder -> class: "" sorted folders, "names" / "rafdb" / "affectnet", or JSON
        val_root="",            # a separate validation folder (folder source)
        val_fraction=0.0,       # else hold out this fraction of groups (folder source)
        group_pattern=r"^(.*)$",  # regex on file names; its first group is the group (subject)
        split_seed=0,
        train_split="train",    # affwild2: "train" / "val"; tfds: split names
        val_split="val",
        tfds_name="",
        every=1,                # affwild2: one frame in `every` per video
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        scale=(0.2, 1.0) if mode == "mae" else (0.08, 1.0),   # random resized crop area
        ratio=(3 / 4, 4 / 3),
        hflip=True,
        num_threads=2,
    ))
    c.init_from = ""            # finetune: MAE / fine-tuning workdir, encoder dir or ViT weights
    c.num_classes = 8
    c.loss = ml_collections.ConfigDict(dict(label_smoothing=0.1, class_weights=""))
    c.batch_size = 256
    c.total_steps = 10000
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=1.5e-4, weight_decay=0.05, warmup_steps=500, end_lr_factor=0.0,
        grad_clip=0.0, b1=0.9, b2=0.95, layer_decay=1.0))
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.eval_batch_size = 0
    c.num_recon_images = 8
    c.compute_dtype = "auto"
    c.mesh_data = -1
    c.progress = True
    return c




def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects bad values before any work starts; raises ``ConfigError`` naming the key."""
    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            node: Any = config
            for part in key.split("."):
                node = node[part]
            raise config_lib.ConfigError(f"config.{key} = {node!r}: {why}")

    need(config.mode in MODES, "mode", f"must be one of {MODES}")
    need(config.rng_impl in config_lib.RNG_IMPLS, "rng_impl",
         f"must be one of {config_lib.RNG_IMPLS}")
    need(config.data.source in SOURCES, "data.source", f"must be one of {SOURCES}")
    need(bool(config.data.root) or config.data.source == "tfds", "data.root",
         "must name the image folder / Aff-Wild2 root")
    need(config.data.source != "tfds" or bool(config.data.tfds_name), "data.tfds_name",
         "must name the TFDS dataset")
    for key in ("batch_size", "total_steps", "log_every", "eval_every", "checkpoint_every",
                "data.num_threads", "data.every"):
        need(_get(config, key) >= 1, key, "must be >= 1")
    need(0.0 <= config.data.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    need(config.eval_batch_size >= 0, "eval_batch_size", "must be >= 0 (0: batch_size)")
    o = config.optimizer
    need(o.lr > 0, "optimizer.lr", "must be > 0")
    need(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    need(0 <= o.warmup_steps <= config.total_steps, "optimizer.warmup_steps", "must be in [0, total_steps]")
    need(0 < o.layer_decay <= 1, "optimizer.layer_decay", "must be in (0, 1]")
    need(o.grad_clip >= 0, "optimizer.grad_clip", "must be >= 0 (0 disables)")
    need(len(config.data.mean) == 3 and len(config.data.std) == 3 and min(config.data.std) > 0,
         "data.std", "data.mean and data.std need 3 values, std > 0")
    need(config.compute_dtype in ("auto", "float32", "bfloat16", "float16"), "compute_dtype",
         "'auto', 'float32', 'bfloat16' or 'float16'")
    if config.mode == "finetune":
        need(config.num_classes >= 2, "num_classes", "must be >= 2")
        need(0.0 <= config.loss.label_smoothing < 1.0, "loss.label_smoothing", "must be in [0, 1)")
        need(config.loss.class_weights in ("", "balanced"), "loss.class_weights", "'' or 'balanced'")
    try:
        build_model(config)
    except (TypeError, ValueError) as e:
        raise config_lib.ConfigError(f"config.model: {e}") from None


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------------
# Data.


def make_sources(config: ml_collections.ConfigDict):
    """``(train, val)`` sources of the config (val may be empty)."""
    d = config.data
    if d.source == "folder":
        mapping = d.mapping or None
        if d.mapping and d.mapping not in image_sources.LAYOUTS:
            mapping = json.loads(d.mapping)
        source = image_sources.ImageFolder(d.root, mapping)
        if d.val_root:
            return source, image_sources.ImageFolder(d.val_root, mapping)
        if d.val_fraction > 0:
            train, val, _ = image_sources.split_by_group(
                source, d.val_fraction, pattern=d.group_pattern, seed=d.split_seed)
            return train, val
        return source, source.subset([])
    if d.source == "affwild2":
        train = image_sources.AffWild2Frames(d.root, d.train_split, every=d.every)
        val = image_sources.AffWild2Frames(d.root, d.val_split, every=d.every) if d.val_split else train.subset([])
        return train, val
    train = image_sources.TfdsImages(d.tfds_name, d.train_split, d.root or None)
    val = image_sources.TfdsImages(d.tfds_name, d.val_split, d.root or None) if d.val_split else []
    return train, val


def normalize(images: jax.Array, mean, std, dtype) -> jax.Array:
    """uint8 ``[B, H, W, 3]`` -> ``(x / 255 - mean) / std`` in ``dtype``."""
    x = images.astype(jnp.float32) / 255.0
    return ((x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)).astype(dtype)


# ---------------------------------------------------------------------------------------------
# Models and optimizer.


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


def build_model(config: ml_collections.ConfigDict, encoder_fields: dict | None = None) -> nn.Module:
    """The MAE, or the classifier (its ViT fields overridden by ``encoder_fields`` from init_from)."""
    dtype = sharding.compute_dtype(config.compute_dtype)
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


def layer_scales(params: Any, depth: int, decay: float) -> Any:
    """Per-parameter lr multipliers ``decay ** (depth + 1 - layer)`` (BEiT / MAE layer-wise decay).

    Layer 0 is the patch embedding, class token and position table; block ``i`` is layer ``i + 1``;
    the final norms and the head are layer ``depth + 1`` (multiplier 1).
    """
    def scale(path, _):
        names = [getattr(p, "key", str(p)) for p in path]
        layer = depth + 1
        if any(n in ("embedding", "cls", "pos_embedding") for n in names):
            layer = 0
        for n in names:
            if n.startswith("encoderblock_"):
                layer = int(n.split("_")[1]) + 1
        return decay ** (depth + 1 - layer)
    return jax.tree_util.tree_map_with_path(scale, params)


def decay_mask(params: Any) -> Any:
    """Weight decay on kernels only: not on biases, norms, tokens or position tables (as MAE)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: getattr(path[-1], "key", "") == "kernel", params)


def make_optimizer(config: ml_collections.ConfigDict, params: Any, depth: int):
    """AdamW on a warmup-cosine schedule, global-norm clipping, optional layer-wise lr decay."""
    o = config.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps,
        decay_steps=config.total_steps, end_value=o.lr * o.end_lr_factor)
    chain = []
    if o.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip))
    chain += [optax.scale_by_adam(b1=o.b1, b2=o.b2),
              optax.add_decayed_weights(o.weight_decay, mask=decay_mask(params)),
              optax.scale_by_learning_rate(schedule)]
    if o.layer_decay < 1.0:
        scales = layer_scales(params, depth, o.layer_decay)
        chain.append(optax.stateless(lambda updates, _: jax.tree.map(jnp.multiply, updates, scales)))
    return optax.chain(*chain), schedule


def init_params(model: nn.Module, hw: tuple[int, int], rng: jax.Array) -> Any:
    """Fresh parameters for ``[1, H, W, 3]`` images."""
    x = jnp.zeros((1, *hw, 3), jnp.float32)
    return model.init({"params": rng, "masking": rng, "dropout": rng}, x)["params"]


# ---------------------------------------------------------------------------------------------
# Steps.


def class_weights(config: ml_collections.ConfigDict, train) -> np.ndarray:
    """Per-class loss weights: ones, or ``n / (C * n_c)`` ("balanced", mean 1 over images)."""
    if config.loss.class_weights != "balanced" or not hasattr(train, "labels"):
        return np.ones(config.num_classes, np.float32)
    counts = image_sources.class_counts(train, config.num_classes).astype(np.float64)
    weights = counts.sum() / (config.num_classes * np.maximum(counts, 1))
    return np.where(counts > 0, weights, 0.0).astype(np.float32)


def classification_loss(logits, labels, weights, label_smoothing: float) -> jax.Array:
    """Class-weighted cross-entropy with label smoothing: ``sum(w_y * ce) / sum(w_y)``."""
    n = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, n), label_smoothing)
    ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    w = weights[labels]
    return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-9)


def make_train_step(config, model, tx, schedule, rng, weights=None) -> Callable:
    """The pure update ``(state, batch) -> (state, metrics)``."""
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    dtype = jnp.dtype(getattr(model, "dtype", None) or getattr(model.encoder, "dtype"))

    def train_step(state, batch):
        step_rng = jax.random.fold_in(rng, state["step"])
        mask_rng, dropout_rng = jax.random.split(step_rng)
        images = normalize(batch["image"], mean, std, dtype)

        def compute_loss(params):
            rngs = {"masking": mask_rng, "dropout": dropout_rng}
            if config.mode == "mae":
                return model.apply({"params": params}, images, train=True, rngs=rngs).loss, {}
            logits = model.apply({"params": params}, images, train=True, rngs=rngs)
            loss = classification_loss(logits, batch["label"], jnp.asarray(weights),
                                       config.loss.label_smoothing)
            return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

        (loss, extra), grads = jax.value_and_grad(compute_loss, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        stats = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"]),
                 **extra}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, stats

    return train_step


def make_eval_step(config, model, seed: int) -> Callable:
    """``(params, batch, index) -> outputs``: per-image MAE loss with fixed masks, or logits."""
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    dtype = jnp.dtype(getattr(model, "dtype", None) or getattr(model.encoder, "dtype"))

    def eval_step(params, batch, index):
        images = normalize(batch["image"], mean, std, dtype)
        if config.mode != "mae":
            return {"logits": model.apply({"params": params}, images, train=False)}
        # Fixed masks per batch index, so evaluations at different steps are comparable.
        noise = jax.random.uniform(jax.random.fold_in(jax.random.key(seed), index),
                                   (images.shape[0], model.num_patches))
        out = model.apply({"params": params}, images, train=False, noise=noise)
        target = mae_lib.patch_targets(images, model.patch_size, model.norm_pix_loss)
        per_patch = jnp.mean(jnp.square(out.pred - target), axis=-1)
        per_image = jnp.sum(per_patch * out.mask, 1) / jnp.sum(out.mask, 1)
        return {"loss": per_image, "pred": out.pred, "mask": out.mask}

    return eval_step


# ---------------------------------------------------------------------------------------------
# Reconstruction images.


def reconstruction_grid(
    images: np.ndarray, pred: np.ndarray, mask: np.ndarray, *, patch_size: int,
    norm_pix_loss: bool, mean, std,
) -> np.ndarray:
    """uint8 grid, one row per image: original | masked (grey) | reconstruction with visible patches."""
    x = images.astype(np.float32) / 255.0
    norm = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    patches = np.asarray(mae_lib.patchify(jnp.asarray(norm), patch_size))
    pred = np.asarray(pred, np.float32)
    if norm_pix_loss:
        # Predictions are per-patch normalised: undo it with each true patch's statistics.
        mu = patches.mean(-1, keepdims=True)
        var = patches.var(-1, keepdims=True, ddof=1)
        pred = pred * np.sqrt(var + 1e-6) + mu
    m = np.asarray(mask, np.float32)[..., None]
    grid = (x.shape[1] // patch_size, x.shape[2] // patch_size)
    recon = np.asarray(mae_lib.unpatchify(jnp.asarray(patches * (1 - m) + pred * m), patch_size, grid))
    masked = np.asarray(mae_lib.unpatchify(jnp.asarray(patches * (1 - m)), patch_size, grid))
    to_pixels = lambda a: a * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    masked_px = np.where(np.asarray(mae_lib.unpatchify(jnp.asarray(np.broadcast_to(m, patches.shape)),
                                                       patch_size, grid)) > 0, 0.5, to_pixels(masked))
    rows = [np.concatenate([x[i], masked_px[i], to_pixels(recon[i])], axis=1) for i in range(len(x))]
    return (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Initialisation from another run.


def load_init(init_from: str):
    """``(ViT, params, info)`` of the encoder to fine-tune from (a workdir's ``encoder/`` first)."""
    path = pathlib.Path(init_from).expanduser()
    if (path / "encoder" / encoders.ENCODER_FILE).is_file():
        path = path / "encoder"
    encoder = encoders.load_encoder(str(path))
    module, variables, info = encoder.module, encoder.variables, encoder.info
    if not isinstance(module, vit_lib.ViT):
        raise config_lib.ConfigError(f"config.init_from = {init_from!r}: not a ViT encoder")
    return module, variables["params"], info


@dataclasses.dataclass
class Setup:
    """What a run needs besides its data: model, optimizer, step functions and state shapes."""
    model: nn.Module
    tx: Any
    schedule: Any
    init_fn: Callable
    abstract_state: Any
    encoder_fields: dict | None


def setup_model(config, mesh, init_encoder=None) -> Setup:
    """Model, optimizer and the abstract train state on ``mesh``."""
    repl = sharding.replicated(mesh)
    encoder_fields = None
    if init_encoder is not None:
        encoder_fields = {k: getattr(init_encoder[0], k) for k in init_encoder[0].__dataclass_fields__
                          if k not in ("parent", "name")}
    model = build_model(config, encoder_fields)
    hw = (vit_lib.image_hw(model.image_size) if config.mode == "mae"
          else vit_lib.image_hw(model.encoder.image_size))
    depth = model.depth if config.mode == "mae" else model.encoder.depth
    shapes = jax.eval_shape(lambda r: init_params(model, hw, r), jax.random.key(0))
    tx, schedule = make_optimizer(config, shapes, depth)

    def init_state(rng):
        params = init_params(model, hw, rng)
        if init_encoder is not None:
            params = dict(params, encoder=init_encoder[1])
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    init_fn = jax.jit(init_state, out_shardings=repl)
    abstract = checkpoints.abstract_like(jax.eval_shape(init_fn, jax.random.key(0)), repl)
    return Setup(model, tx, schedule, init_fn, abstract, encoder_fields)


# ---------------------------------------------------------------------------------------------
# The run.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Runs (or resumes) pretraining / fine-tuning in ``workdir``; returns the last evaluation."""
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")

    # Devices and mesh.
    mesh = sharding.make_mesh(config.mesh_data)
    sharding.check_batch_size(config.batch_size, mesh)
    eval_bs = config.eval_batch_size or config.batch_size
    sharding.check_batch_size(eval_bs, mesh, "eval_batch_size")
    repl, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh)

    # Models and optimizer (the encoder to start from decides the fine-tuned architecture).
    init_encoder = None
    if config.mode == "finetune" and config.init_from:
        init_encoder = load_init(config.init_from)
    setup = setup_model(config, mesh, init_encoder)
    model = setup.model
    hw = vit_lib.image_hw(model.image_size if config.mode == "mae" else model.encoder.image_size)

    # Input.
    train_src, val_src = make_sources(config)
    d = config.data
    train_iter = image_sources.train_batches(
        train_src, image_size=hw, batch_size=config.batch_size, seed=config.seed,
        scale=tuple(d.scale), ratio=tuple(d.ratio), hflip=d.hflip, num_threads=d.num_threads)

    # Steps.
    from abaw_jax.train import make_rngs
    init_rng, train_rng = make_rngs(config.seed, config.rng_impl)
    weights = class_weights(config, train_src) if config.mode == "finetune" else None
    train_step = jax.jit(make_train_step(config, model, setup.tx, setup.schedule, train_rng, weights),
                         in_shardings=(repl, rows), out_shardings=(repl, repl), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(config, model, config.seed + 1),
                        in_shardings=(repl, rows, None), out_shardings=rows)

    # Checkpoint resume: the workdir's own checkpoint, then init_from (inside init_fn), then scratch.
    ckpt = checkpoints.RunCheckpoints(workdir, keep=config.keep_checkpoints)
    if ckpt.latest_step() is not None:
        step, state = ckpt.restore_latest(setup.abstract_state, train_iter)
        if is_main:
            print(f"Resuming from step {step} in {workdir}", file=sys.stderr, flush=True)
    else:
        state = setup.init_fn(init_rng)
    step = int(state["step"])

    writer = writers.MetricWriter(workdir)
    progress = writers.Progress(config.total_steps, config.batch_size, step,
                                enabled=is_main and config.progress)
    from abaw_jax.train import _install_sigterm
    stop = _install_sigterm()
    pending: list[tuple[int, dict]] = []
    last_eval: dict = {}

    def flush_metrics() -> None:
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched):
            if not np.isfinite(m["loss"]):
                ckpt.wait()
                raise NonFiniteLossError(f"non-finite training loss ({m['loss']}) at step {s}; the "
                                         f"last good checkpoint in {workdir / 'checkpoints'} is intact")
        mean = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        mean["train/lr"] = float(fetched[-1]["lr"])
        stats = progress.update(pending[-1][0], f"loss {mean['train/loss']:.4f}")
        mean.update({"perf/steps_per_sec": stats["steps_per_sec"],
                     "perf/images_per_sec": stats["frames_per_sec"]})
        writer.write(pending[-1][0], mean)
        pending.clear()

    def evaluate_now(s: int) -> dict:
        if not len(val_src):
            return {}
        outs, labels, first = [], [], None
        for i, batch in enumerate(image_sources.eval_batches(val_src, image_size=hw, batch_size=eval_bs)):
            out = jax.device_get(eval_step(state["params"], sharding.to_global(batch, mesh), i))
            keep = batch["mask"]
            if first is None:
                first = (batch["image"][keep], {k: v[keep] for k, v in out.items()})
            outs.append({k: v[keep] for k, v in out.items() if k != "pred"})
            labels.append(batch["label"][keep])
        if config.mode == "mae":
            result = {"val/loss": float(np.mean(np.concatenate([o["loss"] for o in outs])))}
            score = -result["val/loss"]
            if is_main:
                n = min(config.num_recon_images, len(first[0]))
                grid = reconstruction_grid(first[0][:n], first[1]["pred"][:n], first[1]["mask"][:n],
                                           patch_size=model.patch_size, norm_pix_loss=model.norm_pix_loss,
                                           mean=config.data.mean, std=config.data.std)
                (workdir / "reconstructions").mkdir(exist_ok=True)
                Image.fromarray(grid).save(workdir / "reconstructions" / f"step_{s:08d}.png")
        else:
            pred = np.argmax(np.concatenate([o["logits"] for o in outs]), -1)
            y = np.concatenate(labels)
            result = classification_metrics(pred, y, config.num_classes)
            score = result["val/accuracy"]
        writer.write(s, result)
        if is_main:
            print(f"eval at step {s}: " + "  ".join(f"{k}={v:.4f}" for k, v in result.items()),
                  file=sys.stderr, flush=True)
        ckpt.save_best(s, state, score)
        return result

    # Loop.
    try:
        while step < config.total_steps:
            batch = sharding.to_global(next(train_iter), mesh)
            state, stats = train_step(state, batch)
            step += 1
            pending.append((step, stats))
            final = step == config.total_steps
            if step % config.log_every == 0 or final or stop["stop"]:
                flush_metrics()
            preempted = stop["stop"] or ckpt.latest.reached_preemption(step)
            if step % config.checkpoint_every == 0 or final or preempted:
                flush_metrics()
                ckpt.save(step, state, train_iter, force=True)
                if preempted:
                    ckpt.wait()
                    if is_main:
                        print(f"Preempted: saved step {step}; re-run the same command to resume",
                              file=sys.stderr, flush=True)
                    return last_eval
            if step % config.eval_every == 0 or final:
                last_eval = evaluate_now(step)
        if not last_eval:
            last_eval = evaluate_now(step)
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
    if is_main:
        export_encoder(config, model, state["params"], workdir / "encoder")
        (workdir / "final_metrics.json").write_text(json.dumps({"step": step, **last_eval}, indent=2))
    return last_eval


def classification_metrics(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, macro F1 over the classes present in ``labels`` or ``pred``, balanced accuracy."""
    f1s, recalls = [], []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (labels == c))
        fp = np.sum((pred == c) & (labels != c))
        fn = np.sum((pred != c) & (labels == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
        if tp + fn:
            recalls.append(tp / (tp + fn))
    return {"val/accuracy": float(np.mean(pred == labels)), "val/macro_f1": float(np.mean(f1s)),
            "val/balanced_accuracy": float(np.mean(recalls))}


def export_encoder(config, model, params, directory: pathlib.Path) -> pathlib.Path:
    """Writes the trained encoder as an encoder directory (``abaw_jax.models.encoders``)."""
    if config.mode == "mae":
        vit = mae_lib.encoder_vit(model, dtype=jnp.float32)
        enc = mae_lib.encoder_params(model, params)
    else:
        vit = model.encoder.clone(dtype=jnp.float32, parent=None)
        enc = params["encoder"]
    return encoders.save_encoder(directory, vit, {"params": jax.device_get(enc)},
                                 mean=config.data.mean, std=config.data.std)


def main(argv) -> None:
    del argv
    from absl import flags
    sharding.initialize_distributed(flags.FLAGS.coordinator, flags.FLAGS.num_processes,
                                    flags.FLAGS.process_id)
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from abaw_jax import train as _train
    _train.run(main, validate)
