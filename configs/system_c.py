"""System C: multi-encoder feature fusion (HFUT, 7th ABAW), every hyperparameter in one place.

Used through the task files with `:model=fusion` (`configs/va.py:model=fusion`, ...).
`get_config(task)` returns the full config of one task; `demo(config)` scales it to the demo data.
"""

from abaw_jax import config as config_lib


def get_config(task: str):
    config = config_lib.base_config(task)
    config.system = "C"
    m = config_lib.model_defaults("fusion")
    m.feature_sets = ("vit", "openface")
    # One linear map per feature set to d_affine (512 for VA, 256 otherwise), dropout .5.
    m.d_affine = 512 if task == "VA" else 256
    m.input_dropout = 0.5
    # Encoder d = d_affine x number of sets, feed-forward 2d, 4 heads, 4 layers, dropout .2.
    m.num_layers, m.num_heads, m.mlp_ratio, m.dropout = 4, 4, 2, 0.2
    m.head_norm = "layer"
    m.output_activation = "tanh" if task == "VA" else "none"
    config.model = m
    config.loss.name = {"VA": "mse_ccc", "EXPR": "ce", "AU": "wal"}[task]
    # 256-frame non-overlapping chunks.
    config.data.seq_len = 256
    config.batch_size = 32
    config.total_steps = 4000
    o = config.optimizer
    o.lr, o.weight_decay = 1e-4, 0.0
    o.schedule, o.warmup_steps, o.end_lr_factor, o.grad_clip = "warmup_cosine", 200, 0.0, 1.0
    return config


def demo(config) -> None:
    """Laptop scale: a small model and a short run on the demo data, a few minutes on 2 cores."""
    m = config.model
    m.d_affine, m.num_layers, m.num_heads, m.dropout, m.input_dropout = 32, 2, 4, 0.1, 0.2
    config.data.seq_len = 128
    config_lib.demo_run(config)
