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
# The official metric of each challenge, the key `evaluate` and best-checkpoint selection use.
TASK_METRIC = {"VA": "val/va_mean", "EXPR": "val/expr_f1", "AU": "val/au_f1"}


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


def base_config(task: str) -> ml_collections.ConfigDict:
    """Fields shared by every training config; task files override what differs."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    # Empty root: the built-in demo dataset (generated once and cached).
    c.data.root = ""
    # Feature store directory; empty: `<root>/features/vit`.
    c.data.features = ""
    c.data.seq_len = 100
    c.data.train_stride = 0        # 0: equal to seq_len (non-overlapping windows)
    c.data.eval_stride = 0         # 0: equal to seq_len
    c.data.num_threads = 4         # grain reader threads
    c.data.prefetch = 4            # batches read ahead per thread pool
    c.data.demo = ml_collections.ConfigDict()
    c.data.demo.num_videos = 40
    c.data.demo.seed = 0
    c.data.demo.length_scale = 0.1
    c.data.demo.dim = 768

    c.model = ml_collections.ConfigDict()
    c.model.name = "transformer"
    c.model.d_model = 768
    c.model.num_layers = 6
    c.model.num_heads = 8
    c.model.mlp_dim = 2048
    c.model.dropout = 0.2
    c.model.mask_prob = 0.2
    c.model.mask_mode = "frame"      # "frame" (paper) | "element" (authors' code)
    c.model.mask_value = "zero"      # "zero" | "token"
    c.model.pos_encoding = "sinusoidal"
    c.model.norm = "post"
    c.model.activation = "relu"
    c.model.max_len = 1024
    c.model.attend_absent = False
    c.model.output_activation = "none"

    c.loss = ml_collections.ConfigDict()
    c.loss.name = ""
    c.loss.alpha = 0.25
    c.loss.gamma = 2.0

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
    for key in ("batch_size", "total_steps", "data.seq_len", "log_every", "eval_every",
                "checkpoint_every", "model.num_layers", "model.num_heads", "model.d_model"):
        need(_get(config, key) >= 1, key, "must be >= 1")
    for key in ("data.train_stride", "data.eval_stride", "eval_batch_size", "optimizer.warmup_steps"):
        need(_get(config, key) >= 0, key, "must be >= 0")
    need(math.isfinite(config.optimizer.lr) and config.optimizer.lr > 0, "optimizer.lr",
         "must be a positive finite number")
    need(config.optimizer.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    need(config.optimizer.grad_clip >= 0, "optimizer.grad_clip", "must be >= 0 (0 disables)")
    need(0.0 <= config.optimizer.end_lr_factor <= 1.0, "optimizer.end_lr_factor", "must be in [0, 1]")
    need(config.optimizer.warmup_steps <= config.total_steps, "optimizer.warmup_steps",
         "must not exceed total_steps")
    need(0.0 <= config.model.mask_prob < 1.0, "model.mask_prob", "must be in [0, 1)")
    need(0.0 <= config.model.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    need(config.model.d_model % config.model.num_heads == 0, "model.d_model",
         f"must be divisible by model.num_heads={config.model.num_heads}")
    need(config.model.max_len >= config.data.seq_len, "model.max_len", "must be >= data.seq_len")
    need(config.model.mask_mode in ("frame", "element"), "model.mask_mode", "'frame' or 'element'")
    need(config.model.mask_value in ("zero", "token"), "model.mask_value", "'zero' or 'token'")
    need(config.model.pos_encoding in ("sinusoidal", "learned"), "model.pos_encoding",
         "'sinusoidal' or 'learned'")
    need(config.model.norm in ("pre", "post"), "model.norm", "'pre' or 'post'")
    need(config.compute_dtype in ("auto", "float32", "bfloat16", "float16"), "compute_dtype",
         "'auto', 'float32', 'bfloat16' or 'float16'")
    need(config.mesh_data == -1 or config.mesh_data >= 1, "mesh_data", "-1 (all devices) or >= 1")
    need(config.data.num_threads >= 1, "data.num_threads", "must be >= 1")


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def apply_variants(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the variant string shared by the task configs (see configs/va.py)."""
    v = parse_arg(arg, demo=False, seq_len=0, mask=-1.0, steps=0)
    if v.demo:
        # Laptop scale: a small model and a short run on the demo data, a few minutes on 2 cores.
        config.model.d_model = 64
        config.model.num_layers = 2
        config.model.num_heads = 4
        config.model.mlp_dim = 128
        config.model.dropout = 0.1
        config.batch_size = 32
        config.total_steps = 600
        config.optimizer.lr = 1e-3
        config.optimizer.weight_decay = 1e-2
        config.optimizer.warmup_steps = 50
        config.log_every = 50
        config.eval_every = 200
        config.checkpoint_every = 200
        config.data.num_threads = 2
    if v.seq_len:
        config.data.seq_len = v.seq_len
    if v.mask >= 0:
        config.model.mask_prob = v.mask
    if v.steps:
        config.total_steps = v.steps
    return config
