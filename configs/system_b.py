"""System B: MAE-pretrained ViT features, TCN and Transformer encoder (CtyunAI, 6th ABAW).

Used through the task files with `:model=tcn` (`configs/va.py:model=tcn`, ...). The encoder that
produces its features is trained by `configs/mae_face.py` then `configs/finetune_expr.py`.
`get_config(task)` returns the full config of one task; `demo(config)` scales it to the demo data.
"""

from abaw_jax import config as config_lib


def get_config(task: str):
    config = config_lib.base_config(task)
    config.system = "B"
    m = config_lib.model_defaults("tcn")
    # TCN [768, 256, 128], kernel 5, dilations 1/2/4, weight norm, PReLU (authors' code).
    m.channels, m.kernel_size, m.dilations = (768, 256, 128), 5, (1, 2, 4)
    m.weight_norm, m.tcn_activation, m.causal = True, "prelu", False
    # Transformer encoder d 512, 8 layers, 4 heads, feed-forward 512 (authors' code).
    m.d_model, m.num_layers, m.num_heads, m.mlp_dim = 512, 8, 4, 512
    m.dropout = 0.3
    m.pos_encoding = "sinusoidal"
    m.head_dim, m.head_norm = 256, "layer"
    m.output_activation = "tanh" if task == "VA" else "none"
    config.model = m
    config.loss.name = {"VA": "ccc", "EXPR": "ce", "AU": "bce"}[task]
    # Windows of 300 frames with stride 200.
    config.data.seq_len, config.data.train_stride, config.data.eval_stride = 300, 200, 200
    # AdamW 3e-5, weight decay 1e-5, batch 32.
    config.batch_size = 32
    config.total_steps = 4000
    o = config.optimizer
    o.lr, o.weight_decay = 3e-5, 1e-5
    o.schedule, o.warmup_steps, o.end_lr_factor, o.grad_clip = "warmup_cosine", 200, 0.0, 1.0
    return config


def demo(config) -> None:
    """Laptop scale: a small model and a short run on the demo data, a few minutes on 2 cores."""
    m = config.model
    m.channels, m.kernel_size, m.dilations = (128, 64, 64), 5, (1, 2, 4)
    m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.head_dim = 64, 2, 4, 128, 32
    m.dropout = 0.1
    config.data.seq_len, config.data.train_stride, config.data.eval_stride = 150, 100, 100
    config_lib.demo_run(config)
