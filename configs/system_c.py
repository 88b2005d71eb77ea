"""System C: multi-encoder feature fusion (HFUT, 7th ABAW), every hyperparameter in one place.

Used through the task files with `:model=fusion` (`configs/va.py:model=fusion`, ...) and by the
multi-task challenge (`configs/mtl.py`). `get_config(task, variants)` returns the full config
of one task with the variants of `VARIANTS` applied; `demo(config)` scales it to the demo data.
Sources: the paper (seeds/hfut_feature_fusion, "PC"), the group's temporal code (ABAW2023-HFUT/ABAW5, "code") and the paper's own static multi-task
code (ABAW2023-HFUT/ABAW7, "ABAW7 code"); docs/systems.md lists every setting, its source and
each deviation.
"""

from abaw_jax import config as config_lib

# The variants of system C, after the colon of a task file (`configs/mtl.py:demo,sets=vit`).
VARIANTS = dict(
    demo=False,     # laptop scale on the built-in demo data (`demo` below)
    seq_len=0,      # N > 0: windows of N frames
    sets="",        # "a+b": the feature sets fused (PC table 1's rows), in <root>/features/<name>
    steps=0,        # N > 0: the run's length in steps
)


def get_config(task: str, variants: str | None = None):
    v = config_lib.parse_arg(variants, **VARIANTS)
    config = config_lib.base_config(task)
    config.system = "C"
    m = config_lib.model_defaults("fusion")
    # The paper's best feature combination (PC table 1): ResNet-18 (MS-Celeb-1M, 512-d),
    # POSTER2 (768-d) and FAU (OpenFace 2.0's 17 AU intensities), each in <root>/features/<name>.
    m.feature_sets = ("resnet18", "poster2", "fau")
    # One linear map per feature set to d_affine (512 for VA, 256 otherwise), dropout .5 on the
    # concatenation, sinusoidal positional encoding per set (PC Eq. 1; code for the sizes).
    # The multi-task challenge: the paper's own code (ABAW7) maps every set to 384.
    m.d_affine = {"VA": 512, "MTL": 384}.get(task, 256)
    m.input_dropout = 0.5
    # Encoder d = d_affine x sets, feed-forward 2d, 4 heads, 4 layers, dropout .2, post-norm (code).
    m.num_layers, m.num_heads, m.mlp_ratio, m.dropout = 4, 4, 2, 0.2
    m.norm, m.activation = "post", "relu"
    # One head per output, Linear(d, d/2) -> BatchNorm -> Linear (code); VA through tanh.
    m.heads, m.head_norm = "per_output", "batch"
    # One head per output column (VA 2, AU 12, the multi-task model's 2 + 12), one for EXPR's 8
    # classes (the code's EXPR head).
    m.head_sizes = {"EXPR": (8,), "MTL": (1, 1, 8) + (1,) * 12}.get(task, ())
    m.output_activation = {"VA": "tanh", "MTL": "tanh_va"}.get(task, "none")
    config.model = m
    # MSE + CCC for VA (PC 4.3, weights of the ABAW7 code), cross-entropy for EXPR (Eq. 6), the
    # weighted asymmetric loss of Eq. 7 for AU, weights from each AU's occurrence rate in the
    # training split.
    config.loss.tasks.update({"VA": "mse_ccc", "EXPR": "ce", "AU": "wal"})
    config.loss.name = "mtl" if task == "MTL" else config.loss.tasks[task]

    # 256-frame non-overlapping chunks (code).
    config.data.seq_len = 256
    config.data.train_stride = config.data.eval_stride = 0

    # Adam lr 1e-4 (no weight decay), learning rate x0.9 after every epoch, batch 128, one
    # evaluation per epoch, early stopping after 15 evaluations without an improvement of 1e-4,
    # at most 999 epochs, no clipping (code).
    config.batch_size = 128
    config.total_steps, config.num_epochs = 0, 999.0
    o = config.optimizer
    o.lr, o.weight_decay, o.b1, o.b2, o.eps = 1e-4, 0.0, 0.9, 0.999, 1e-8
    o.schedule, o.decay_rate, o.warmup_steps, o.grad_clip = "exponential", 0.9, 0, 0.0
    config.evals_per_epoch = 1.0
    config.early_stopping_patience = 15
    config.early_stopping_min_delta = 1e-4

    if v.demo:
        demo(config)
    if v.seq_len:
        config.data.seq_len = v.seq_len
    if v.sets:
        config.model.feature_sets = tuple(x for x in v.sets.split("+") if x)
    if v.steps:
        config.total_steps = v.steps
    return config


def demo(config) -> None:
    """Laptop scale: a small model and a short run on the demo data, a few minutes on 2 cores.

    The demo dataset has two feature sets: 768-d frame features ("vit") and 17-d OpenFace AU
    intensities ("openface", the paper's FAU)."""
    m = config.model
    m.feature_sets = ("vit", "openface")
    m.d_affine, m.num_layers, m.num_heads, m.dropout, m.input_dropout = 32, 2, 4, 0.1, 0.2
    config.data.seq_len = 128
    config_lib.demo_run(config)
