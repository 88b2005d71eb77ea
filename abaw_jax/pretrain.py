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

from abaw_jax import checkpoints, cli, optim, sharding
from abaw_jax import config as config_lib
from abaw_jax import loop as loop_lib
from abaw_jax.data import image_sources
from abaw_jax.rngs import make_rngs
from abaw_jax.models import classifier
from abaw_jax.models import encoders
from abaw_jax.models import mae as mae_lib
from abaw_jax.models import vit as vit_lib


# ---------------------------------------------------------------------------------------------
# Data.


def make_sources(config: ml_collections.ConfigDict):
    """``(train, val)`` sources of the config (val may be empty); MAE pretraining adds the
    images of ``data.extra`` to the training source (`with_extra`)."""
    train, val = _main_sources(config)
    return with_extra(config, train), val


def with_extra(config: ml_collections.ConfigDict, train):
    """`train` plus the sources of `config.data.extra` (MAE only), named in the log."""
    d = config.data
    if not d.get("extra"):
        return train
    image_sources.check_extra(config.mode, d.extra)
    extra = image_sources.extra_sources(d.extra, split=d.train_split, every=d.every)
    main = (f"tfds:{d.tfds_name}" + (f"@{d.root}" if d.root else "") if d.source == "tfds"
            else f"{d.source}:{d.root}")
    names = [main] + [
        f"{k}:{w}" + (f"@{dd}" if dd else "") for k, w, dd in image_sources.parse_extra(d.extra)]
    mixture = image_sources.Mixture([train, *extra], names)
    print(f"MAE pretraining on {len(mixture)} images: {mixture.describe()}", file=sys.stderr)
    return mixture


def _main_sources(config: ml_collections.ConfigDict):
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


def resolve_num_classes(config: ml_collections.ConfigDict, source) -> bool:
    """`config.num_classes = 0` becomes the source's class count (8 on Aff-Wild2 frames); True
    when it changed."""
    if config.num_classes:
        return False
    config.num_classes = image_sources.num_classes(source)
    print(f"{config.num_classes} classes (from the {config.data.source} source)", file=sys.stderr)
    return True


def normalize(images: jax.Array, mean, std, dtype) -> jax.Array:
    """uint8 ``[B, H, W, 3]`` -> ``(x / 255 - mean) / std`` in ``dtype``."""
    x = images.astype(jnp.float32) / 255.0
    return ((x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)).astype(dtype)


# ---------------------------------------------------------------------------------------------
# Models and optimizer.


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


def make_optimizer(config: ml_collections.ConfigDict, params: Any, depth: int,
                   plan: optim.Plan | None = None):
    """AdamW on the config's schedule (warmup-cosine by default), decay on kernels only (as MAE),
    optional global-norm clipping and layer-wise lr decay."""
    o = config.optimizer
    plan = plan or optim.Plan(max(1, config.total_steps), min(o.warmup_steps, config.total_steps), 1)
    scales = layer_scales(params, depth, o.layer_decay) if o.layer_decay < 1.0 else None
    return optim.make_optimizer(o, plan, decay_mask=optim.kernels_only(params), lr_scales=scales)


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


def random_erase(rng: jax.Array, images: jax.Array, prob: float,
                 area: tuple[float, float] = (0.02, 1 / 3),
                 aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> jax.Array:
    """Random erasing (Zhong et al. 2020) of normalised images [B, H, W, C]: with probability
    `prob` per image, a rectangle of `area` of the image and log-uniform `aspect` (clipped to
    the image) is replaced by N(0, 1) noise per pixel, as the MAE fine-tuning recipe's timm
    RandomErasing (mode "pixel") does (one attempt where timm makes up to ten)."""
    b, h, w, _ = images.shape
    k_on, k_area, k_ar, k_y, k_x, k_fill = jax.random.split(rng, 6)
    on = jax.random.uniform(k_on, (b,)) < prob
    target = jax.random.uniform(k_area, (b,), minval=area[0], maxval=area[1]) * h * w
    ar = jnp.exp(jax.random.uniform(k_ar, (b,), minval=np.log(aspect[0]),
                                    maxval=np.log(aspect[1])))
    eh = jnp.clip(jnp.round(jnp.sqrt(target * ar)), 1, h).astype(jnp.int32)
    ew = jnp.clip(jnp.round(jnp.sqrt(target / ar)), 1, w).astype(jnp.int32)
    y0 = (jax.random.uniform(k_y, (b,)) * (h - eh + 1)).astype(jnp.int32)
    x0 = (jax.random.uniform(k_x, (b,)) * (w - ew + 1)).astype(jnp.int32)
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    box = ((rows >= y0[:, None, None]) & (rows < (y0 + eh)[:, None, None])
           & (cols >= x0[:, None, None]) & (cols < (x0 + ew)[:, None, None]) & on[:, None, None])
    noise = jax.random.normal(k_fill, images.shape, images.dtype)
    return jnp.where(box[..., None], noise, images)


def mix_batch(rng: jax.Array, images: jax.Array, mixup: float, cutmix: float,
              switch_prob: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with its reverse, as the
    MAE fine-tuning recipe's timm Mixup (mode "batch", prob 1): CutMix with probability
    `switch_prob` when both are on, lam ~ Beta(alpha, alpha); CutMix pastes a box of about
    1 - lam of the image and corrects lam to the pasted share. Returns (images, lam): the
    targets are lam y + (1 - lam) y[::-1]."""
    b, h, w, _ = images.shape
    k_switch, k_lam_m, k_lam_c, k_y, k_x = jax.random.split(rng, 5)
    use_cut = (jax.random.uniform(k_switch) < switch_prob) if mixup and cutmix else bool(cutmix)
    lam_mix = jax.random.beta(k_lam_m, mixup, mixup) if mixup else jnp.float32(1.0)
    lam_cut = jax.random.beta(k_lam_c, cutmix, cutmix) if cutmix else jnp.float32(1.0)
    flipped = images[::-1]
    mixed = (lam_mix * images + (1 - lam_mix) * flipped).astype(images.dtype)
    ratio = jnp.sqrt(1.0 - lam_cut)
    ch, cw = (h * ratio).astype(jnp.int32), (w * ratio).astype(jnp.int32)
    cy = (jax.random.uniform(k_y) * h).astype(jnp.int32)
    cx = (jax.random.uniform(k_x) * w).astype(jnp.int32)
    y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
    x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    cut = jnp.where(box[None, :, :, None], flipped, images)
    lam_box = 1.0 - ((y1 - y0) * (x1 - x0)) / (h * w)
    return (jnp.where(use_cut, cut, mixed),
            jnp.where(use_cut, lam_box, lam_mix).astype(jnp.float32))


def make_image_step(config, model, tx, schedule, rng, weights=None) -> Callable:
    """The pure update of an image model ``(state, batch) -> (state, metrics)``."""
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    dtype = jnp.dtype(getattr(model, "dtype", None) or getattr(model.encoder, "dtype"))
    aug = config.get("augment", {}) if config.mode == "finetune" else {}
    erase, mixup, cutmix = (float(aug.get(k, 0.0)) for k in ("erase", "mixup", "cutmix"))

    def train_step(state, batch):
        step_rng = jax.random.fold_in(rng, state["step"])
        mask_rng, dropout_rng = jax.random.split(step_rng)
        erase_rng, mix_rng = jax.random.split(jax.random.fold_in(step_rng, 1))
        images = normalize(batch["image"], mean, std, dtype)
        labels, lam = batch["label"], None
        if erase:
            images = random_erase(erase_rng, images, erase)
        if mixup or cutmix:
            images, lam = mix_batch(mix_rng, images, mixup, cutmix,
                                    float(aug.get("switch_prob", 0.5)))

        def compute_loss(params):
            rngs = {"masking": mask_rng, "dropout": dropout_rng}
            if config.mode == "mae":
                return model.apply({"params": params}, images, train=True, rngs=rngs).loss, {}
            logits = model.apply({"params": params}, images, train=True, rngs=rngs)
            w = jnp.asarray(weights)
            smoothing = config.loss.label_smoothing
            loss = classification_loss(logits, labels, w, smoothing)
            if lam is not None:
                # Cross-entropy is linear in the targets: the mixed targets' loss.
                loss = lam * loss + (1 - lam) * classification_loss(logits, labels[::-1], w,
                                                                     smoothing)
            return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

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
class ImageSetup:
    """What a run needs besides its data: model, optimizer, step functions and state shapes."""
    model: nn.Module
    tx: Any
    schedule: Any
    init_fn: Callable
    abstract_state: Any
    encoder_fields: dict | None


def setup_model(config, mesh, init_encoder=None, plan: optim.Plan | None = None) -> ImageSetup:
    """Model, optimizer and the abstract train state on ``mesh``."""
    repl = sharding.replicated(mesh)
    encoder_fields = None
    if init_encoder is not None:
        encoder_fields = {k: getattr(init_encoder[0], k) for k in init_encoder[0].__dataclass_fields__
                          if k not in ("parent", "name")}
    model = classifier.build_image_model(config, encoder_fields, sharding.compute_dtype(config.compute_dtype, mesh))
    hw = (vit_lib.image_hw(model.image_size) if config.mode == "mae"
          else vit_lib.image_hw(model.encoder.image_size))
    depth = model.depth if config.mode == "mae" else model.encoder.depth
    shapes = jax.eval_shape(lambda r: init_params(model, hw, r), jax.random.key(0))
    tx, schedule = make_optimizer(config, shapes, depth, plan)

    def init_state(rng):
        params = init_params(model, hw, rng)
        if init_encoder is not None:
            params = dict(params, encoder=init_encoder[1])
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    init_fn = sharding.jit(init_state, mesh, out_shardings=repl)
    abstract = checkpoints.abstract_like(jax.eval_shape(init_fn, jax.random.key(0)), repl)
    return ImageSetup(model, tx, schedule, init_fn, abstract, encoder_fields)


# ---------------------------------------------------------------------------------------------
# The run.


def build_run(config: ml_collections.ConfigDict, workdir: pathlib.Path,
              sources=None) -> loop_lib.Run:
    """The pretraining / fine-tuning run of `config` (reconstruction images and the exported
    encoder go to `workdir`), on `sources` (`make_sources(config)` when None); nothing is
    compiled or restored yet."""
    is_main = jax.process_index() == 0

    # Devices and mesh.
    mesh = sharding.make_mesh(config.mesh_data)
    sharding.check_batch_size(config.batch_size, mesh)
    eval_bs = config.eval_batch_size or config.batch_size
    sharding.check_batch_size(eval_bs, mesh, "eval_batch_size")
    repl, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh)

    # Input (its size decides the length of a run given in epochs).
    train_src, val_src = sources if sources is not None else make_sources(config)
    if config.mode == "finetune" and resolve_num_classes(config, train_src):
        loop_lib.prepare_workdir(config, workdir)   # config.json with the resolved count
    plan = optim.resolve_steps(config, max(1, len(train_src) // config.batch_size))

    # Models and optimizer (the encoder to start from decides the fine-tuned architecture).
    init_encoder = None
    if config.mode == "finetune" and config.init_from:
        init_encoder = load_init(config.init_from)
    setup = setup_model(config, mesh, init_encoder, plan)
    model = setup.model
    hw = vit_lib.image_hw(model.image_size if config.mode == "mae" else model.encoder.image_size)
    d = config.data
    train_iter = image_sources.train_batches(
        train_src, image_size=hw, batch_size=config.batch_size, seed=config.seed,
        scale=tuple(d.scale), ratio=tuple(d.ratio), hflip=d.hflip, num_threads=d.num_threads)

    # Steps.
    init_rng, train_rng = make_rngs(config.seed, config.rng_impl)
    weights = class_weights(config, train_src) if config.mode == "finetune" else None
    train_step = sharding.jit(
        make_image_step(config, model, setup.tx, setup.schedule, train_rng, weights), mesh,
        in_shardings=(repl, rows), out_shardings=(repl, repl), donate_argnums=(0,))
    eval_step = sharding.jit(make_eval_step(config, model, config.seed + 1), mesh,
                             in_shardings=(repl, rows, None), out_shardings=rows)

    def evaluate(state, s: int) -> loop_lib.Evaluation:
        outs, labels, first = [], [], None
        for i, batch in enumerate(image_sources.eval_batches(val_src, image_size=hw, batch_size=eval_bs)):
            out = jax.device_get(eval_step(state["params"], sharding.to_global(batch, mesh), i))
            keep = batch["mask"]
            if first is None:
                first = (batch["image"][keep], {k: v[keep] for k, v in out.items()})
            outs.append({k: v[keep] for k, v in out.items() if k != "pred"})
            labels.append(batch["label"][keep])
        if config.mode == "mae":
            values = {"loss": float(np.mean(np.concatenate([o["loss"] for o in outs])))}
            score = -values["loss"]
            line = f"MAE reconstruction loss {values['loss']:.4f}"
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
            values = {k.split("/", 1)[1]: v for k, v in
                      classification_metrics(pred, y, config.num_classes).items()}
            score = values["accuracy"]
            line = (f"accuracy {values['accuracy']:.4f}  macro F1 {values['macro_f1']:.4f}  "
                    f"balanced accuracy {values['balanced_accuracy']:.4f}")
        return loop_lib.Evaluation(score, values, line)

    return loop_lib.Run(
        mesh=mesh, plan=plan, abstract_state=setup.abstract_state,
        fresh_state=lambda: setup.init_fn(init_rng), train_iter=train_iter,
        train_step=train_step, to_batch=lambda b: sharding.to_global(b, mesh),
        evaluate=evaluate if len(val_src) else None, items_per_step=config.batch_size,
        unit="images", check_keys=("loss",),
        on_finish=lambda result: export_encoder(config, model, result.state["params"],
                                                workdir / "encoder"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Runs (or resumes) pretraining / fine-tuning in ``workdir``; returns the last evaluation.

    The workdir's own checkpoint wins over ``config.init_from``, which wins over scratch."""
    config_lib.validate_image(config)
    # The class count a source decides is resolved before the workdir is claimed, so that its
    # config.json (and a resume's comparison with it) holds the count the run trains with.
    sources = make_sources(config)
    if config.mode == "finetune":
        resolve_num_classes(config, sources[0])
    workdir = loop_lib.prepare_workdir(config, workdir)
    run = build_run(config, workdir, sources)
    optim.report(run.plan)
    return loop_lib.execute(run, config, workdir).last_eval


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
    cli.initialize_distributed()
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main, config_lib.validate_image)
