"""Configuration plumbing: variant strings, config files, one validation helper, and the shared
fields of every command's config.

The task files users type (`configs/va.py`, `expr.py`, `au.py`, `mtl.py`) pick a system by the
variant `model=` and load that system's file (`configs/system_a.py`, `system_b.py`,
`system_c.py`), which holds all of its hyperparameters with their sources and its own variants;
`system_config` does this. The string after a colon in `--config configs/va.py:demo,seq_len=10`
is decoded by `parse_arg` into named variants. Everything here runs before JAX touches a
device, so a bad config fails in a second with the offending key in the message.
"""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable
from typing import Any

import ml_collections

from abaw_jax import checks, models, optim
from abaw_jax.data.affwild2 import TASKS as VIDEO_TASKS

# The three video challenges, and the multi-task challenge on s-Aff-Wild2 (data/mtl.py).
TASKS = VIDEO_TASKS + ("MTL",)

RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
IMAGE_MODES = ("mae", "finetune")
IMAGE_SOURCES = ("folder", "affwild2", "tfds")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
# The config file of each temporal model's system (A, B, C).
SYSTEM_FILES = {"transformer": "system_a.py", "tcn": "system_b.py", "fusion": "system_c.py"}


class ConfigError(ValueError):
    """A config value is missing, of the wrong type or out of range (the message names the key)."""


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Decodes `"demo,seq_len=10,model=tcn"` into a ConfigDict, typed by `defaults`.

    A bare word `x` means `x=True`; every key must be one of `defaults` (unknown variants are an
    error, not silently ignored), and values are converted to the type of their default.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return out
    for raw in arg.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"unknown config variant {key!r} in {arg!r}; known: {', '.join(sorted(defaults))}")
        if not sep:
            out[key] = True
            continue
        out[key] = _convert(key, value.strip(), defaults[key])
    return out


def _convert(key: str, value: str, default: Any) -> Any:
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config variant {key!r} expects a boolean, got {value!r}")
    try:
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ConfigError(
            f"config variant {key!r} expects {type(default).__name__}, got {value!r}") from None
    return value


# The one validation helper (abaw_jax.checks), under the names configs and callers use.
get = checks.get


def checker(config: Any, *, prefix: str = "config.",
            error: type[Exception] = ConfigError) -> Callable[[bool, str, str], None]:
    """`need(ok, key, why)`: raises ConfigError("config.<key> = <value>: <why>") when not `ok`."""
    return checks.checker(config, prefix=prefix, error=error)


def load_config_file(path: str | pathlib.Path, arg: str | None = None,
                     function: str = "get_config", *args) -> ml_collections.ConfigDict:
    """Calls `function(arg)` (or `function(*args)`) of the config file at `path`."""
    module = load_module(path)
    if not hasattr(module, function):
        raise ConfigError(f"{path}: defines no {function}()")
    return getattr(module, function)(*(args or (arg,)))


def load_module(path: str | pathlib.Path):
    """The module of a config file (for files that expose several functions)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"abaw_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Temporal models (train, evaluate).


def base_config(task: str) -> ml_collections.ConfigDict:
    """Fields every training config has: data plumbing, logging cadence, devices.

    A system file (configs/system_*.py) fills in the model, loss, optimizer, schedule, batch
    and windows of its system; the values here are only the structure and neutral defaults.
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    c = ml_collections.ConfigDict()
    c.task = task
    c.system = ""                  # "A", "B" or "C": the system file that set the hyperparameters
    c.seed = 0
    # PRNG of the per-step randomness (dropout, frame masking): "rbg" draws its bits with XLA's
    # RngBitGenerator, cheaper than threefry inside a train step; parameters are always
    # initialised from a threefry key of `seed`.
    c.rng_impl = "rbg"             # "threefry2x32" | "rbg" | "unsafe_rbg"

    c.data = ml_collections.ConfigDict()
    # Empty root: the built-in demo dataset (generated once and cached).
    c.data.root = ""
    # Feature store directory; empty: `<root>/features/<feature_set>`. Fusion models read several
    # sets, `<root>/features/<name>` for each name in model.feature_sets unless given here as
    # "name=path,name=path".
    c.data.features = ""
    c.data.feature_set = "vit"
    c.data.seq_len = 100
    c.data.train_stride = 0        # 0: equal to seq_len (non-overlapping windows)
    c.data.eval_stride = 0         # 0: equal to seq_len
    # "average": overlapping window outputs averaged; "last": frame t from the window ending at
    # t, read at its last position (causal; seq_len x the evaluation cost; system A's code).
    c.data.eval_readout = "average"
    # The last evaluation window of a video: "aligned" ends at the video's last frame (every
    # window full); "truncated" starts at the next multiple of eval_stride and stops at the end
    # (system B's test code, with eval_stride = seq_len: the variant `eval=tiled`).
    c.data.eval_last = "aligned"
    # Folds (system B's table 1, data/folds.py): 0 (or -1) trains on Train_Set and validates on
    # Validation_Set; k in [1, num_folds) validates on part k of Train_Set + Validation_Set split
    # into num_folds - 1 parts, video-disjoint by source video ("grouped"), or as the authors'
    # code did ("ungrouped", "kfold_shuffled", "windows": see data/folds.py).
    c.data.fold = 0
    c.data.num_folds = 5
    c.data.fold_scheme = "grouped"
    c.data.num_threads = 4         # grain reader threads
    c.data.prefetch = 4            # batches read ahead per thread pool
    # Train features held on the devices, windows gathered in the step ("auto": when they fit).
    c.data.device_bank = "auto"    # "auto" | "on" | "off"
    c.data.demo = ml_collections.ConfigDict()
    c.data.demo.num_videos = 40
    c.data.demo.seed = 0
    c.data.demo.length_scale = 0.1
    c.data.demo.dim = 768
    c.data.demo.sets = ""          # "": vit (dim) and openface (17); else "name:dim,name:dim"

    c.model = ml_collections.ConfigDict({"name": ""})

    c.loss = ml_collections.ConfigDict()
    c.loss.name = ""               # the task's loss; "mtl" for the multi-task challenge
    # The system's loss of each task; the multi-task loss sums them with task_weights.
    c.loss.tasks = ml_collections.ConfigDict({"VA": "", "EXPR": "", "AU": ""})
    c.loss.task_weights = ml_collections.ConfigDict({"VA": 1.0, "EXPR": 1.0, "AU": 1.0})
    c.loss.alpha = 0.25            # focal losses
    c.loss.gamma = 2.0
    c.loss.alpha_mode = "scalar"   # AU focal: "scalar" (Eq. 1 of system A) or "balanced"
    c.loss.class_weights = ""      # focal: "" or "one_minus_frequency" (1 - n_c / sum(n), A's code)
    c.loss.label_smoothing = 0.0   # cross-entropy

    c.batch_size = 32              # global, in windows of seq_len frames
    # The run's length: total_steps when > 0, else num_epochs passes over the training windows.
    c.total_steps = 0
    c.num_epochs = 0.0
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 1e-4
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "warmup_cosine"   # optim.SCHEDULES
    c.optimizer.warmup_steps = 0
    c.optimizer.warmup_epochs = 0.0          # > 0 wins over warmup_steps
    c.optimizer.decay_rate = 1.0             # "exponential": factor per epoch
    c.optimizer.end_lr_factor = 0.0
    c.optimizer.grad_clip = 0.0              # global norm; 0 disables
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    cadence_fields(c, eval_every=500)
    # VA and MTL: also keep the best parameters of each output (valence, arousal; the multi-task
    # model's four tasks) by its own metric, and let `evaluate` read each output from its own
    # best parameters (abaw_jax/best_parts.py; system C's code).
    c.best_per_output = False
    # EXPR at `evaluate`: each frame's class becomes the most frequent class of the frames within
    # eval_mode_filter // 2 of it (0: off; system B's code uses 40). Training's evaluations and
    # the saved raw outputs are not smoothed.
    c.eval_mode_filter = 0
    c.skip_nonfinite = False       # skip updates with non-finite gradients instead of stopping
    c.init_from = ""               # a training workdir whose best checkpoint starts the run
    return c


def cadence_fields(c: ml_collections.ConfigDict, eval_every: int) -> None:
    """The fields of every training command's config (train, pretrain) that time the run and
    place it on the devices: logging, evaluation and checkpoint cadence, early stopping, the
    compute dtype and the mesh."""
    # Early stopping on the validation score: evaluations without an improvement of more than
    # min_delta; 0 disables it.
    c.early_stopping_patience = 0
    c.early_stopping_min_delta = 0.0
    c.log_every = 50
    c.eval_every = eval_every
    c.checkpoint_every = eval_every
    # > 0: evaluate and checkpoint this many times per epoch instead (eval_every is ignored).
    c.evals_per_epoch = 0.0
    c.keep_checkpoints = 2
    c.eval_batch_size = 0          # 0: same as batch_size
    c.compute_dtype = "auto"       # "auto": bfloat16 on GPU/TPU, float32 on CPU
    c.mesh_data = -1               # devices on the 'data' axis; -1: all
    c.progress = True


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects out-of-range values before any work starts; raises ConfigError naming the key."""
    need = checker(config)
    need(config.task in TASKS, "task", f"must be one of {TASKS}")
    need(config.rng_impl in RNG_IMPLS, "rng_impl", f"must be one of {RNG_IMPLS}")
    for key in ("batch_size", "data.seq_len", "log_every", "eval_every", "checkpoint_every"):
        need(get(config, key) >= 1, key, "must be >= 1")
    for key in ("data.train_stride", "data.eval_stride", "eval_batch_size"):
        need(get(config, key) >= 0, key, "must be >= 0")
    for key in ("data.train_stride", "data.eval_stride"):
        # A stride past the window would leave frames between windows unseen.
        need(get(config, key) <= config.data.seq_len, key, "must be <= data.seq_len (0: equal)")
    need(config.data.eval_readout in ("average", "last"), "data.eval_readout",
         "'average' or 'last'")
    need(config.data.eval_last in ("aligned", "truncated"), "data.eval_last",
         "'aligned' or 'truncated'")
    need(config.data.num_folds >= 3, "data.num_folds", "must be >= 3 (the official split and at "
         "least two parts)")
    need(config.data.fold == -1 or 0 <= config.data.fold < config.data.num_folds, "data.fold",
         f"0 (official split) or in [1, data.num_folds={config.data.num_folds})")
    _check_folds(need, config)
    optim.check(need, config)
    need(config.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0 (0: off)")
    need(config.evals_per_epoch >= 0, "evals_per_epoch", "must be >= 0 (0: use eval_every)")
    need(config.eval_mode_filter >= 0, "eval_mode_filter", "must be >= 0 (0: off)")
    need(config.eval_mode_filter == 0 or config.task == "EXPR", "eval_mode_filter",
         "smooths expression classes: EXPR only")
    _check_model(config)
    need(config.model.get("max_len", config.data.seq_len) >= config.data.seq_len,
         "model.max_len", "must be >= data.seq_len")
    need(config.loss.alpha_mode in ("scalar", "balanced"), "loss.alpha_mode",
         "'scalar' or 'balanced'")
    need(config.loss.class_weights in ("", "one_minus_frequency"), "loss.class_weights",
         "'' or 'one_minus_frequency'")
    if config.task == "MTL":
        from abaw_jax import losses
        need(config.loss.name == "mtl", "loss.name", "the multi-task challenge trains 'mtl'")
        for t in VIDEO_TASKS:
            need(config.loss.tasks[t] in losses.loss_names(t), f"loss.tasks.{t}",
                 f"one of {losses.loss_names(t)}")
            need(config.loss.task_weights[t] >= 0, f"loss.task_weights.{t}", "must be >= 0")
    need(config.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"one of {COMPUTE_DTYPES}")
    need(config.mesh_data == -1 or config.mesh_data >= 1, "mesh_data", "-1 (all devices) or >= 1")
    need(config.data.num_threads >= 1, "data.num_threads", "must be >= 1")
    need(config.data.device_bank in ("auto", "on", "off"), "data.device_bank",
         "'auto', 'on' or 'off'")


def _check_folds(need, config: ml_collections.ConfigDict) -> None:
    from abaw_jax.data import folds
    need(config.data.fold_scheme in folds.SCHEMES, "data.fold_scheme", f"one of {folds.SCHEMES}")
    if config.data.fold_scheme == "windows" and config.data.fold > 0:
        need(config.data.fold in folds.WINDOW_FOLDS, "data.fold",
             f"scheme 'windows' has folds {sorted(folds.WINDOW_FOLDS)}")
        window, stride = folds.WINDOW_FOLDS[config.data.fold]
        need((config.data.seq_len, config.data.train_stride) == (window, stride), "data.seq_len",
             f"fold {config.data.fold} of scheme 'windows' trains windows of {window} at stride "
             f"{stride} (the variant folds=windows,fold={config.data.fold} sets them)")


def _check_model(config: ml_collections.ConfigDict) -> None:
    """Builds the model description (no parameters, no device): the model's own checks
    (`models.build_model`) reject bad model keys before any work starts."""
    from abaw_jax.data.affwild2 import NUM_OUTPUTS
    try:
        models.build_model(config.model, NUM_OUTPUTS[config.task], "float32")
    except ValueError as e:
        raise ConfigError(f"config.{e}" if str(e).startswith("model.") else str(e)) from None


def model_defaults(name: str) -> ml_collections.ConfigDict:
    """Every option of a model family at its default, and its `name` (for the system files)."""
    try:
        return models.default_config(name)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def demo_run(config: ml_collections.ConfigDict) -> None:
    """The run of every system's `:demo` variant: 600 steps of batch 32 at lr 1e-3 with a 50-step
    warmup, evaluated every 200 steps (two to four minutes on a 2-core CPU)."""
    config.batch_size = 32
    config.total_steps = 600
    config.num_epochs = 0.0
    config.early_stopping_patience = 0
    config.evals_per_epoch = 0.0
    o = config.optimizer
    o.lr, o.weight_decay, o.schedule = 1e-3, 1e-2, "warmup_cosine"
    o.warmup_steps, o.warmup_epochs, o.end_lr_factor = 50, 0.0, 0.0
    config.log_every = 50
    config.eval_every = 200
    config.checkpoint_every = 200
    config.data.num_threads = 2


def system_config(task: str, arg: str | None, default_model: str,
                  configs_dir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config of a task file: the variant `model=` (default `default_model`) picks the system
    file in `configs_dir`, whose `get_config(task, variants)` applies the other variants (each
    system file lists its own in `VARIANTS`)."""
    rest, model = [], default_model
    for item in (arg or "").split(","):
        key, sep, value = item.strip().partition("=")
        if key == "model" and sep:
            model = value.strip()
        elif item.strip():
            rest.append(item.strip())
    if model not in SYSTEM_FILES:
        raise ConfigError(f"unknown config variant model={model!r}; known: "
                          f"{', '.join(SYSTEM_FILES)}")
    system = load_module(pathlib.Path(configs_dir) / SYSTEM_FILES[model])
    try:
        return system.get_config(task, ",".join(rest))
    except ConfigError as e:
        raise ConfigError(f"{e} (model={model}: {SYSTEM_FILES[model]})") from None


# Variants every system file accepts (`configs/expr.py:model=tcn,folds=windows,fold=2`):
# fold=K, folds=SCHEME (data/folds.py) and eval=tiled.
SHARED_VARIANTS = dict(fold=-1, folds="", eval="")


def apply_shared_variants(config: ml_collections.ConfigDict, v: ml_collections.ConfigDict) -> None:
    """Applies the `SHARED_VARIANTS` found in the decoded variants `v`."""
    if v.folds or v.fold >= 0:
        set_fold(config, v.fold, v.folds)
    if v.eval:
        set_eval(config, v.eval)


def set_eval(config: ml_collections.ConfigDict, how: str) -> None:
    """The variant `eval=tiled`: evaluation windows side by side (stride = window), the last
    one truncated (system B's test code)."""
    if how != "tiled":
        raise ConfigError(f"variant eval={how!r}: known: tiled")
    config.data.eval_stride, config.data.eval_last = 0, "truncated"


def set_fold(config: ml_collections.ConfigDict, fold: int, scheme: str) -> None:
    """The variants `fold=K` and `folds=SCHEME` (data/folds.py); scheme "windows" also sets the
    fold's window and stride (system B's released EXPR configs)."""
    from abaw_jax.data import folds
    if scheme:
        if scheme not in folds.SCHEMES:
            raise ConfigError(f"variant folds={scheme!r}: known: {', '.join(folds.SCHEMES)}")
        config.data.fold_scheme = scheme
    if fold >= 0:
        config.data.fold = fold
    if config.data.fold_scheme == "windows" and config.data.fold in folds.WINDOW_FOLDS:
        window, stride = folds.WINDOW_FOLDS[config.data.fold]
        config.data.seq_len, config.data.train_stride = window, stride
        config.data.eval_stride = stride


def set_windows(config: ml_collections.ConfigDict, windows: str) -> None:
    """The variant `windows=` (system A): "causal" is system A's code (a window ending at every frame,
    stride 1, each frame predicted from the window that ends at it, read at its last position;
    A's default), "chunks" non-overlapping windows averaged (A's `:demo`)."""
    if windows == "causal":
        config.data.train_stride, config.data.eval_readout = 1, "last"
    elif windows == "chunks":
        config.data.train_stride = config.data.eval_stride = 0
        config.data.eval_readout = "average"
    else:
        raise ConfigError(f"variant windows={windows!r}: known: causal, chunks")


# ---------------------------------------------------------------------------------------------
# Image models (pretrain).


def image_base_config(mode: str) -> ml_collections.ConfigDict:
    """Fields shared by ``configs/mae_face.py`` and ``configs/finetune_expr.py``."""
    if mode not in IMAGE_MODES:
        raise ConfigError(f"mode must be one of {IMAGE_MODES}, got {mode!r}")
    from abaw_jax.models.weights import IMAGENET_MEAN, IMAGENET_STD
    c = ml_collections.ConfigDict()
    c.mode = mode
    c.seed = 0
    c.rng_impl = "rbg"          # PRNG of masking, augmentation noise and dropout (see rngs.make_rngs)
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
        extra="",               # mae: more image sources, "folder:DIR,affwild2:ROOT,tfds:NAME@DIR"
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        scale=(0.2, 1.0) if mode == "mae" else (0.08, 1.0),   # random resized crop area
        ratio=(3 / 4, 4 / 3),
        hflip=True,
        num_threads=2,
    ))
    # finetune, on the device after normalisation: random erasing with probability `erase` per
    # image, then Mixup (alpha `mixup`) or CutMix (alpha `cutmix`) of the batch with its
    # reverse, CutMix with probability `switch_prob` when both are on; 0 turns each off.
    c.augment = ml_collections.ConfigDict(dict(erase=0.0, mixup=0.0, cutmix=0.0, switch_prob=0.5))
    c.init_from = ""            # finetune: MAE / fine-tuning workdir, encoder dir or ViT weights
    c.num_classes = 8           # finetune: 0 takes the source's (8 on Aff-Wild2 frames)
    c.loss = ml_collections.ConfigDict(dict(label_smoothing=0.1, class_weights=""))
    c.batch_size = 256
    c.total_steps = 10000
    c.num_epochs = 0.0          # > 0 with total_steps = 0: the run's length in epochs
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=1.5e-4, weight_decay=0.05, warmup_steps=500, warmup_epochs=0.0, end_lr_factor=0.0,
        grad_clip=0.0, b1=0.9, b2=0.95, eps=1e-8, layer_decay=1.0, schedule="warmup_cosine",
        decay_rate=1.0))
    cadence_fields(c, eval_every=1000)
    c.num_recon_images = 8
    return c




def validate_image(config: ml_collections.ConfigDict) -> None:
    """Rejects bad values of a pretraining / fine-tuning config; raises ConfigError naming the key."""
    need = checker(config)

    need(config.mode in IMAGE_MODES, "mode", f"must be one of {IMAGE_MODES}")
    need(config.rng_impl in RNG_IMPLS, "rng_impl",
         f"must be one of {RNG_IMPLS}")
    need(config.data.source in IMAGE_SOURCES, "data.source", f"must be one of {IMAGE_SOURCES}")
    need(bool(config.data.root) or config.data.source == "tfds", "data.root",
         "must name the image folder / Aff-Wild2 root")
    need(config.data.source != "tfds" or bool(config.data.tfds_name), "data.tfds_name",
         "must name the TFDS dataset")
    for key in ("batch_size", "log_every", "eval_every", "checkpoint_every", "data.num_threads",
                "data.every"):
        need(get(config, key) >= 1, key, "must be >= 1")
    need(0.0 <= config.data.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    need(config.eval_batch_size >= 0, "eval_batch_size", "must be >= 0 (0: batch_size)")
    optim.check(need, config)
    need(0 < config.optimizer.layer_decay <= 1, "optimizer.layer_decay", "must be in (0, 1]")
    need(config.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0 (0: off)")
    need(len(config.data.mean) == 3 and len(config.data.std) == 3 and min(config.data.std) > 0,
         "data.std", "data.mean and data.std need 3 values, std > 0")
    need(config.compute_dtype in ("auto", "float32", "bfloat16", "float16"), "compute_dtype",
         "'auto', 'float32', 'bfloat16' or 'float16'")
    if config.data.get("extra"):
        from abaw_jax.data import image_sources
        image_sources.check_extra(config.mode, config.data.extra)
    if config.mode == "finetune":
        need(config.num_classes == 0 or config.num_classes >= 2, "num_classes",
             "must be >= 2 (0: the source's own class count)")
        for key in ("erase", "switch_prob"):
            need(0.0 <= config.augment[key] <= 1.0, f"augment.{key}", "must be in [0, 1]")
        for key in ("mixup", "cutmix"):
            need(config.augment[key] >= 0.0, f"augment.{key}", "must be >= 0 (0: off)")
        need(0.0 <= config.loss.label_smoothing < 1.0, "loss.label_smoothing", "must be in [0, 1)")
        need(config.loss.class_weights in ("", "balanced"), "loss.class_weights", "'' or 'balanced'")
    from abaw_jax.models import classifier
    try:
        classifier.build_image_model(config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model: {e}") from None




# ---------------------------------------------------------------------------------------------
# Feature extraction (extract).


def extraction_config() -> ml_collections.ConfigDict:
    """The fields of an extraction config (see configs/extract_vit.py)."""
    c = ml_collections.ConfigDict()
    c.frames = ""           # Aff-Wild2 root (uses cropped_aligned/) or a folder of video folders
    c.frame_counts = ""     # optional CSV `name,frames` (e.g. counter_frame.csv)
    c.videos = ""           # optional comma list restricting the videos
    c.encoder = ""          # weights path, encoder directory, or "vit:B/16"-style random init
    c.seed = 0              # random-init encoders only
    c.pool = "mean"         # ViT pooling: mean | gap | cls | "" (the checkpoint's own)
    c.image_size = 0        # encoder input; 0: the encoder's own
    c.decode_size = 0       # host decoding size; 0: image_size. Else the device resizes.
    c.batch_size = 256      # global, in frames
    c.dtype = "float16"     # store dtype
    c.compute_dtype = "auto"
    c.num_threads = 8       # decoding threads per process
    c.mesh_data = -1        # local devices used; -1: all
    c.progress = True
    return c


def validate_extraction(config: ml_collections.ConfigDict) -> None:
    """Rejects bad values of an extraction config; raises ConfigError naming the key."""
    from abaw_jax.data.features import DTYPES
    from abaw_jax.models.vit import POOLS
    pools = ("", *POOLS)
    need = checker(config)
    need(bool(config.frames), "frames", "set it to an Aff-Wild2 root or a folder of video folders")
    need(bool(config.encoder), "encoder", "set it to a weights path, an encoder directory or a "
         "random-init spec such as 'vit:B/16'")
    need(config.pool in pools, "pool", f"must be one of {pools} ('' keeps the checkpoint's own)")
    need(config.image_size >= 0, "image_size", "must be >= 0 (0: the encoder's own)")
    need(config.decode_size >= 0, "decode_size", "must be >= 0 (0: image_size)")
    need(config.batch_size >= 1, "batch_size", "must be >= 1")
    need(config.dtype in DTYPES, "dtype", f"must be one of {sorted(DTYPES)}")
    need(config.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"must be one of {COMPUTE_DTYPES}")
    need(config.num_threads >= 1, "num_threads", "must be >= 1")
    need(config.mesh_data == -1 or config.mesh_data >= 1, "mesh_data",
         "-1 (all local devices) or >= 1")
