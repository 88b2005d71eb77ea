"""System B: MAE-pretrained ViT features, TCN and Transformer encoder (CtyunAI, 6th ABAW).

Used through the task files with `:model=tcn` (`configs/va.py:model=tcn`, ...). Its features come
from the MAE-pretrained, expression-fine-tuned encoder (`configs/mae_face.py`, then
`configs/finetune_expr.py`, then `configs/extract_vit.py:mae` into `<root>/features/mae_ft`).
`get_config(task, variants)` returns the full config of one task with the variants of
`VARIANTS` applied; `demo(config)` scales it to the demo data. Sources: the paper (seeds/ctyunai_mae_tcn_v2, "PB") and the authors' code (upczww/abaw6,
"code"); docs/systems.md lists every setting, its source and each deviation.
"""

from abaw_jax import config as config_lib

# Epochs per task (code: {VA,EXPR,AU}/config/config_fold0.yml).
# The multi-task challenge has no source for B: as many epochs as its longest task (VA).
EPOCHS = {"VA": 40, "EXPR": 10, "AU": 30, "MTL": 40}

# The variants of system B, after the colon of a task file (`configs/va.py:model=tcn,no_tcn`).
VARIANTS = dict(
    demo=False,             # laptop scale on the built-in demo data (`demo` below)
    seq_len=0,              # N > 0: windows of N frames at stride 2N/3 (the paper's 300 / 200)
    no_tcn=False,           # ablation (PB table 5): the Transformer on the features alone
    no_transformer=False,   # ablation: the TCN alone
    steps=0,                # N > 0: the run's length in steps
    **config_lib.SHARED_VARIANTS,   # fold=K, folds=SCHEME (the code's: windows, kfold_shuffled,
                                    # ungrouped), eval=tiled (the test code's windows)
)


def get_config(task: str, variants: str | None = None):
    v = config_lib.parse_arg(variants, **VARIANTS)
    config = config_lib.base_config(task)
    config.system = "B"
    config.data.feature_set = "mae_ft"

    m = config_lib.model_defaults("tcn")
    # TCN [768, 256, 128], kernel 5, dilations 1/2/4, weight norm, PReLU, causal (code).
    m.channels, m.kernel_size, m.dilations = (768, 256, 128), 5, (1, 2, 4)
    m.weight_norm, m.tcn_activation, m.causal = True, "prelu", True
    # 1x1 projection to 512, Transformer encoder d 512, 8 layers, 4 heads, feed-forward 512,
    # post-norm, no positional encoding (code); dropout .3 (PB 4.1.2; the released code sets 0).
    m.d_model, m.num_layers, m.num_heads, m.mlp_dim = 512, 8, 4, 512
    m.norm, m.activation = "post", "relu"
    m.dropout = 0.3
    m.pos_encoding = "none"
    # Head Linear(512, 256) -> BatchNorm -> Linear (code); no output activation, VA clipped to
    # [-1, 1] in the submission (code).
    m.head_dim, m.head_norm = 256, "batch"
    # The multi-task model has one such head per task (no source: B was built per task).
    m.head_sizes = (2, 8, 12) if task == "MTL" else ()
    m.output_activation = "none"
    config.model = m
    # 1 - CCC (PB Eq. 2), cross-entropy (Eq. 3), BCE with logits (Eq. 4).
    config.loss.tasks.update({"VA": "ccc", "EXPR": "ce", "AU": "bce"})
    config.loss.name = "mtl" if task == "MTL" else config.loss.tasks[task]

    # Windows of 300 frames with stride 200 (PB 4.1.2); overlapping predictions averaged.
    config.data.seq_len, config.data.train_stride, config.data.eval_stride = 300, 200, 200

    # AdamW 3e-5, weight decay 1e-5, batch 32, cosine schedule after a one-epoch warmup (PB
    # 4.1.2); epochs per task, four evaluations per epoch keeping the best, no clipping (code).
    config.batch_size = 32
    config.total_steps, config.num_epochs = 0, float(EPOCHS[task])
    o = config.optimizer
    o.lr, o.weight_decay, o.b1, o.b2, o.eps = 3e-5, 1e-5, 0.9, 0.999, 1e-8
    o.schedule, o.warmup_steps, o.warmup_epochs, o.end_lr_factor = "warmup_cosine", 0, 1.0, 0.0
    o.grad_clip = 0.0
    config.evals_per_epoch = 4.0
    # EXPR at test time: predictions smoothed by a 40-frame mode filter (code: EXPR/test.py).
    config.eval_mode_filter = 40 if task == "EXPR" else 0

    if v.demo:
        demo(config)
    if v.seq_len:
        config.data.seq_len = v.seq_len
        config.data.train_stride = config.data.eval_stride = max(1, v.seq_len * 2 // 3)
    config.model.use_tcn, config.model.use_transformer = not v.no_tcn, not v.no_transformer
    config_lib.apply_shared_variants(config, v)
    if v.steps:
        config.total_steps = v.steps
    return config


def demo(config) -> None:
    """Laptop scale: a small model and a short run. The features stay "mae_ft": with a dataset
    root the run reads `<root>/features/mae_ft` (the fine-tuned encoder's store); only the
    built-in demo dataset (no root) lends its synthetic "vit" set, and the log says so."""
    m = config.model
    m.channels, m.kernel_size, m.dilations = (128, 64, 64), 5, (1, 2, 4)
    m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.head_dim = 64, 2, 4, 128, 32
    m.dropout = 0.1
    config.data.seq_len, config.data.train_stride, config.data.eval_stride = 150, 100, 100
    config_lib.demo_run(config)
