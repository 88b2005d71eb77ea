"""Configuration: the shared base config, variant strings and validation.

Config files in `configs/` build on `base_config(task)` and expose `get_config(arg)`. The string
after a colon in `--config configs/va.py:demo,seq_len=10` is decoded by `parse_arg` into named
variants. Everything here runs before JAX touches a device, so a bad config fails in a second with
the offending key in the message.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

TASKS = ("VA", "EXPR", "AU")




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


RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def base_config(task: str) -> ml_collections.ConfigDict:
    """Fields shared by every training config; task files override what differs."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0
    # PRNG of the per-step randomness (dropout, frame masking): "rbg" draws its bits with XLA's
    # RngBitGenerator, cheaper than threefry inside a train step; parameters are always
    # initialised from a threefry key of `seed`.
    c.rng_impl = "rbg"             # "threefry2x32" | "rbg" | "unsafe_rbg"

    c.data = ml_collections.ConfigDict()
    # Empty root: the built-in demo dataset (generated once and cached).
    c.data.root = ""
    # Feature store directory; empty: `<root>/features/vit`. Fusion models read several sets,
    # `<root>/features/<name>` for each name in model.feature_sets unless given here as
    # "name=path,name=path".
    c.data.features = ""
    c.data.seq_len = 100
    c.data.train_stride = 0        # 0: equal to seq_len (non-overlapping windows)
    c.data.eval_stride = 0         # 0: equal to seq_len
    # Folds: -1 trains on Train_Set and validates on Validation_Set; k in [0, num_folds) validates
    # on fold k of their union (video-disjoint, _left/_right of a source video together).
    c.data.fold = -1
    c.data.num_folds = 5
    c.data.num_threads = 4         # grain reader threads
    c.data.prefetch = 4            # batches read ahead per thread pool
    # Train features held on the devices, windows gathered in the step ("auto": when they fit).
    c.data.device_bank = "auto"    # "auto" | "on" | "off"
    c.data.demo = ml_collections.ConfigDict()
    c.data.demo.num_videos = 40
    c.data.demo.seed = 0
    c.data.demo.length_scale = 0.1
    c.data.demo.dim = 768

    c.model = _model_config("transformer")

    c.loss = ml_collections.ConfigDict()
    c.loss.name = ""
    c.loss.alpha = 0.25            # focal losses
    c.loss.gamma = 2.0
    c.loss.label_smoothing = 0.0   # cross-entropy

    c.batch_size = 512             # global, in windows of seq_len frames
    c.total_steps = 4000
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 1e-4
    c.optimizer.weight_decay = 1e-3
    c.optimizer.warmup_steps = 200
    c.optimizer.end_lr_factor = 0.0
    c.optimizer.grad_clip = 1.0    # global norm; 0 disables
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999

    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.eval_batch_size = 0          # 0: same as batch_size
    c.skip_nonfinite = False       # skip updates with non-finite gradients instead of stopping
    c.compute_dtype = "auto"       # "auto": bfloat16 on GPU/TPU, float32 on CPU
    c.mesh_data = -1               # devices on the 'data' axis; -1: all
    c.model_init = ""              # checkpoint directory to initialise params from
    c.progress = True
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects out-of-range values before any work starts; raises ConfigError naming the key."""
    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"config.{key} = {_get(config, key)!r}: {why}")

    need(config.task in TASKS, "task", f"must be one of {TASKS}")
    need(config.rng_impl in RNG_IMPLS, "rng_impl", f"must be one of {RNG_IMPLS}")
    for key in ("batch_size", "total_steps", "data.seq_len", "log_every", "eval_every",
                "checkpoint_every"):
        need(_get(config, key) >= 1, key, "must be >= 1")
    for key in ("data.train_stride", "data.eval_stride", "eval_batch_size", "optimizer.warmup_steps"):
        need(_get(config, key) >= 0, key, "must be >= 0")
    for key in ("data.train_stride", "data.eval_stride"):
        # A stride past the window would leave frames between windows unseen.
        need(_get(config, key) <= config.data.seq_len, key, "must be <= data.seq_len (0: equal)")
    need(config.data.fold == -1 or 0 <= config.data.fold < config.data.num_folds, "data.fold",
         f"-1 (official split) or in [0, data.num_folds={config.data.num_folds})")
    need(math.isfinite(config.optimizer.lr) and config.optimizer.lr > 0, "optimizer.lr",
         "must be a positive finite number")
    need(config.optimizer.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    need(config.optimizer.grad_clip >= 0, "optimizer.grad_clip", "must be >= 0 (0 disables)")
    need(0.0 <= config.optimizer.end_lr_factor <= 1.0, "optimizer.end_lr_factor", "must be in [0, 1]")
    need(config.optimizer.warmup_steps < config.total_steps, "optimizer.warmup_steps",
         "must be below total_steps (the cosine decay needs at least one step)")
    need(config.model.get("max_len", config.data.seq_len) >= config.data.seq_len,
         "model.max_len", "must be >= data.seq_len")
    if "mask_prob" in config.model:
        need(0.0 <= config.model.mask_prob < 1.0, "model.mask_prob", "must be in [0, 1)")
    if "norm" in config.model:
        need(config.model.norm in ("pre", "post"), "model.norm", "'pre' or 'post'")
    if "d_model" in config.model and "num_heads" in config.model:
        need(config.model.num_heads >= 1 and config.model.d_model % config.model.num_heads == 0,
             "model.d_model", f"must be divisible by model.num_heads={config.model.num_heads}")
    _check_model(config)
    need(config.compute_dtype in ("auto", "float32", "bfloat16", "float16"), "compute_dtype",
         "'auto', 'float32', 'bfloat16' or 'float16'")
    need(config.mesh_data == -1 or config.mesh_data >= 1, "mesh_data", "-1 (all devices) or >= 1")
    need(config.data.num_threads >= 1, "data.num_threads", "must be >= 1")
    need(config.data.device_bank in ("auto", "on", "off"), "data.device_bank",
         "'auto', 'on' or 'off'")


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


MODELS = ("transformer", "tcn", "fusion")   # systems A, B and C


def _model_module(name: str):
    from abaw_jax.models import fusion, tcn, temporal
    return {"transformer": temporal, "tcn": tcn, "fusion": fusion}[name]


def _model_config(name: str) -> ml_collections.ConfigDict:
    """The defaults of a model family (its module's default_config) plus its `name`."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    model = _model_module(name).default_config()
    model.name = name
    return model


def _check_model(config: ml_collections.ConfigDict) -> None:
    """Builds the model description (no parameters, no device) to reject bad model keys early."""
    if config.model.name not in MODELS:
        raise ConfigError(f"config.model.name = {config.model.name!r}: known: {', '.join(MODELS)}")
    from abaw_jax.data.affwild2 import NUM_OUTPUTS
    from abaw_jax.models import build_model
    try:
        build_model(config.model, NUM_OUTPUTS[config.task], "float32")
    except ValueError as e:
        raise ConfigError(f"config.{e}" if str(e).startswith("model.") else str(e)) from None


# Per-task losses of each system (REFERENCE.md).
_LOSSES = {
    "transformer": {"VA": "ccc", "EXPR": "focal", "AU": "focal"},
    "tcn": {"VA": "ccc", "EXPR": "ce", "AU": "bce"},
    "fusion": {"VA": "mse_ccc", "EXPR": "ce", "AU": "wal"},
}


def use_model(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Switches `config` to system A ("transformer"), B ("tcn") or C ("fusion") with its paper
    hyperparameters: model, window, optimizer, batch and loss."""
    config.model = _model_config(name)
    config.loss.name = _LOSSES[name][config.task]
    if config.task == "VA":
        config.model.output_activation = "tanh"
    if name == "tcn":
        # Windows of 300 frames with stride 200; AdamW 3e-5, weight decay 1e-5, batch 32.
        config.data.seq_len = 300
        config.data.train_stride = 200
        config.data.eval_stride = 200
        config.batch_size = 32
        config.optimizer.lr = 3e-5
        config.optimizer.weight_decay = 1e-5
    elif name == "fusion":
        # 256-frame non-overlapping chunks; d_affine 512 for VA, 256 otherwise; lr 1e-4.
        config.data.seq_len = 256
        config.model.d_affine = 512 if config.task == "VA" else 256
        config.batch_size = 32
        config.optimizer.lr = 1e-4
        config.optimizer.weight_decay = 0.0
    return config


def apply_variants(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the variant string shared by the task configs (see configs/va.py)."""
    v = parse_arg(arg, demo=False, model="transformer", seq_len=0, mask=-1.0, steps=0,
                  no_tcn=False, no_transformer=False, sets="")
    if v.model != "transformer":
        use_model(config, v.model)
    if v.demo:
        _demo_scale(config)
    if v.seq_len:
        config.data.seq_len = v.seq_len
        if v.model == "tcn":
            config.data.train_stride = config.data.eval_stride = max(1, v.seq_len * 2 // 3)
    if v.mask >= 0:
        if "mask_prob" not in config.model:
            raise ConfigError(f"variant mask={v.mask} applies to model=transformer only")
        config.model.mask_prob = v.mask
    if v.no_tcn or v.no_transformer:
        if v.model != "tcn":
            raise ConfigError("variants no_tcn / no_transformer apply to model=tcn only")
        config.model.use_tcn = not v.no_tcn
        config.model.use_transformer = not v.no_transformer
    if v.sets:
        if v.model != "fusion":
            raise ConfigError("variant sets=a+b applies to model=fusion only")
        config.model.feature_sets = tuple(x for x in v.sets.split("+") if x)
    if v.steps:
        config.total_steps = v.steps
    return config


def _demo_scale(config: ml_collections.ConfigDict) -> None:
    """Laptop scale: a small model and a short run on the demo data, a few minutes on 2 cores."""
    m = config.model
    if m.name == "transformer":
        m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.dropout = 64, 2, 4, 128, 0.1
    elif m.name == "tcn":
        m.channels, m.kernel_size, m.dilations = (128, 64, 64), 5, (1, 2, 4)
        m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.head_dim = 64, 2, 4, 128, 32
        m.dropout = 0.1
        config.data.seq_len, config.data.train_stride, config.data.eval_stride = 150, 100, 100
    else:
        m.d_affine, m.num_layers, m.num_heads, m.dropout, m.input_dropout = 32, 2, 4, 0.1, 0.2
        config.data.seq_len = 128
    config.batch_size = 32
    config.total_steps = 600
    config.optimizer.lr = 1e-3
    config.optimizer.weight_decay = 1e-2
    config.optimizer.warmup_steps = 50
    config.log_every = 50
    config.eval_every = 200
    config.checkpoint_every = 200
    config.data.num_threads = 2
