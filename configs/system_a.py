"""System A: the masked temporal Transformer (IMLAB, 6th ABAW), every hyperparameter in one place.

Used through the task files: `configs/va.py`, `configs/expr.py`, `configs/au.py` (system A is
their default). `get_config(task)` returns the full config of one task; `demo(config)` scales
it to the built-in demo data on a laptop.
"""

from abaw_jax import config as config_lib


def get_config(task: str):
    config = config_lib.base_config(task)
    config.system = "A"
    m = config_lib.model_defaults("transformer")
    # ViT-B/16 frame features -> 6-layer Transformer (8 heads, dropout .2) -> one FC per frame.
    m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.dropout = 768, 6, 8, 2048, 0.2
    m.norm = "post"                 # post-norm encoder layers, as the authors' code
    m.pos_encoding = "sinusoidal"
    # Random masking of whole frames with p = .2, in training only.
    m.mask_prob, m.mask_mode, m.mask_value = 0.2, "frame", "zero"
    m.output_activation = "tanh" if task == "VA" else "none"
    config.model = m
    # CCC loss for VA; focal loss (alpha .25, gamma 2) for EXPR (softmax) and AU (sigmoid).
    config.loss.name = {"VA": "ccc", "EXPR": "focal", "AU": "focal"}[task]
    config.loss.alpha, config.loss.gamma = 0.25, 2.0
    config.data.seq_len = 100
    # AdamW, lr 1e-4, weight decay 1e-3, batch 512 sequences.
    config.batch_size = 512
    config.total_steps = 4000
    o = config.optimizer
    o.lr, o.weight_decay = 1e-4, 1e-3
    o.schedule, o.warmup_steps, o.end_lr_factor, o.grad_clip = "warmup_cosine", 200, 0.0, 1.0
    return config


def demo(config) -> None:
    """Laptop scale: a small model and a short run on the demo data, a few minutes on 2 cores."""
    m = config.model
    m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.dropout = 64, 2, 4, 128, 0.1
    config_lib.demo_run(config)
