"""System A: the masked temporal Transformer (IMLAB, 6th ABAW), every hyperparameter in one place.

Used through the task files: `configs/va.py`, `configs/expr.py`, `configs/au.py` (system A is
their default). `get_config(task, variants)` returns the full config of one task with the
variants of `VARIANTS` applied; `demo(config)` scales it to the built-in demo data on a laptop. Sources: the paper (seeds/imlab_random_masking, "PA") and
the authors' code (msjae/ABAW, branch old, "code"); docs/systems.md lists every setting, its
source and each deviation.
"""

from abaw_jax import config as config_lib

# The variants of system A, after the colon of a task file (`configs/va.py:demo,mask=0`).
VARIANTS = dict(
    demo=False,     # laptop scale on the built-in demo data (`demo` below)
    seq_len=0,      # N > 0: windows of N frames
    mask=-1.0,      # P >= 0: the frame-masking probability (0 disables masking)
    windows="",     # "chunks": non-overlapping windows; "causal": the code's (the default)
    steps=0,        # N > 0: the run's length in steps
    **config_lib.SHARED_VARIANTS,   # fold=K, folds=SCHEME, eval=tiled
)


def get_config(task: str, variants: str | None = None):
    v = config_lib.parse_arg(variants, **VARIANTS)
    config = config_lib.base_config(task)
    config.system = "A"
    # Features: ViT-B/16 pretrained on ImageNet-21k, average of the last layer's patch tokens
    # (PA 3.1; configs/extract_vit.py, pool "gap"), in <root>/features/vit.
    config.data.feature_set = "vit"

    m = config_lib.model_defaults("transformer")
    # 6 layers, 8 heads, dropout .2 (PA 4.1); d 768 = the feature size with no input projection,
    # feed-forward 2048, ReLU, post-norm (code: torch TransformerEncoderLayer defaults).
    m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.dropout = 768, 6, 8, 2048, 0.2
    m.norm, m.activation = "post", "relu"
    m.pos_encoding = "sinusoidal"   # code
    # Whole frames masked with p = .2 during training only, zero fill (PA 3.2); the code's
    # element-wise masking is the variant mask_mode="element".
    m.mask_prob, m.mask_mode, m.mask_value = 0.2, "frame", "zero"
    # One linear layer per frame (PA fig. 1; for the multi-task model its 2 + 8 + 12 output
    # columns are three independent heads). VA through tanh (code); the multi-task model applies
    # it to its VA outputs only.
    m.output_activation = {"VA": "tanh", "MTL": "tanh_va"}.get(task, "none")
    config.model = m

    # CCC loss for VA (PA Eq. 2); focal loss, alpha .25, gamma 2 (PA Eq. 1) for EXPR (softmax)
    # and AU (sigmoid, one scalar alpha for positives and negatives as Eq. 1 writes it).
    config.loss.tasks.update({"VA": "ccc", "EXPR": "focal", "AU": "focal"})
    config.loss.name = "mtl" if task == "MTL" else config.loss.tasks[task]
    config.loss.alpha, config.loss.gamma = 0.25, 2.0

    # Sequences of 100 frames (PA 4.1). Windows as the code makes them (the paper is silent): one
    # window ending at every frame in training (stride 1), each frame predicted from the window
    # that ends at it, read at its last position. So an epoch, the early-stopping patience and
    # the 200 epochs below are the code's units. Non-overlapping windows (100x fewer per epoch,
    # 100x cheaper evaluation) are the variant `windows=chunks`.
    config.data.seq_len = 100
    config.data.train_stride, config.data.eval_stride = 1, 0
    config.data.eval_readout = "last"

    # AdamW, lr 1e-4, weight decay 1e-3, batch 512 sequences (PA 4.1); betas and eps torch's
    # defaults, weight decay on every parameter (code). No schedule, no warmup, no clipping
    # (code). Up to 200 epochs, one evaluation per epoch, early stopping after 3 evaluations
    # without a better challenge score (code).
    config.batch_size = 512
    config.total_steps, config.num_epochs = 0, 200.0
    o = config.optimizer
    o.lr, o.weight_decay, o.b1, o.b2, o.eps = 1e-4, 1e-3, 0.9, 0.999, 1e-8
    o.schedule, o.warmup_steps, o.grad_clip = "constant", 0, 0.0
    config.evals_per_epoch = 1.0
    config.early_stopping_patience = 3

    if v.demo:
        demo(config)
    if v.seq_len:
        config.data.seq_len = v.seq_len
    if v.mask >= 0:
        config.model.mask_prob = v.mask
    if v.windows:
        config_lib.set_windows(config, v.windows)
    config_lib.apply_shared_variants(config, v)
    if v.steps:
        config.total_steps = v.steps
    return config


def demo(config) -> None:
    """Laptop scale: a small model and a short run on the demo data, a few minutes on 2 cores.

    Non-overlapping windows (the variant `windows=chunks`): the code's one-window-per-frame
    evaluation costs 100x and a 600-step run does not reach the end of an epoch either way."""
    m = config.model
    config.data.train_stride = config.data.eval_stride = 0
    config.data.eval_readout = "average"
    m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.dropout = 64, 2, 4, 128, 0.1
    config_lib.demo_run(config)
