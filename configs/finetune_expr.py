"""Fine-tuning an MAE-pretrained ViT on expression labels (system B). Paper: an FC head on the
encoder, AdamW, batch 256, lr 1e-4. Where it is silent, facebookresearch/mae's fine-tuning
recipe for a ViT-B (B's encoder; not the paper's): 100 epochs with 5 warmup epochs then cosine,
weight decay .05, layer-wise lr decay .65, drop path .1, label smoothing .1, average-pooled patch
tokens, random erasing .25, mixup .8 and cutmix 1.0 switching with probability .5 (its ViT-L
values, 50 epochs and layer decay .75, are `--config.num_epochs=50
--config.optimizer.layer_decay=0.75`). No class weights (no source uses them;
`--config.loss.class_weights=balanced` adds them).

  python -m abaw_jax.pretrain --config configs/finetune_expr.py --workdir runs/ft_expr \
      --config.init_from=runs/mae --config.data.source=affwild2 --config.data.root=/data/affwild2
CK+ (6 classes, subjects held out), from a CK+ MAE run:
  python -m abaw_jax.pretrain --config configs/finetune_expr.py:ckplus --workdir runs/ft_ckplus \
      --config.data.root=../shared/data/ckplus48 --config.init_from=runs/mae_ckplus
The encoder's architecture comes from init_from; config.model sets pooling and regularisation.
The class count is the source's (num_classes = 0): 8 on Aff-Wild2 frames, 6 on CK+'s folders.
Variants after the colon: ckplus; tiny (tests); steps=N.
"""

from abaw_jax import config as config_lib

from abaw_jax.models import vit


def get_config(arg=None):
    v = config_lib.parse_arg(arg, ckplus=False, tiny=False, steps=0)
    config = config_lib.image_base_config("finetune")
    config.model = vit.default_config()
    config.model.update(pool="gap", drop_path_rate=0.1)
    config.model.head_dropout = 0.0
    # The classes of the source: Aff-Wild2's 8 expressions, a folder's class folders (CK+: 6).
    config.num_classes = 0
    config.batch_size = 256
    config.total_steps, config.num_epochs = 0, 100.0
    config.optimizer.update(lr=1e-4, weight_decay=0.05, warmup_steps=0, warmup_epochs=5.0,
                            b2=0.999, layer_decay=0.65)
    config.loss.class_weights = ""
    config.augment.update(erase=0.25, mixup=0.8, cutmix=1.0, switch_prob=0.5)
    config.eval_every = config.checkpoint_every = 2000
    if v.ckplus or v.tiny:
        config.model.update(variant=None, width=192, depth=4, num_heads=3, mlp_dim=768, patch_size=6,
                            image_size=48)
        # Whole aligned faces and flips only: random resized crops (even 0.8 of the area) keep a
        # ViT trained from scratch on ~470 faces at chance level (see configs/mae_face.py).
        config.data.update(val_fraction=0.2, group_pattern=r"^(S\d+)_", mean=(0.5, 0.5, 0.5),
                           std=(0.25, 0.25, 0.25), scale=(1.0, 1.0), ratio=(1.0, 1.0))
        config.batch_size = 64
        config.total_steps, config.num_epochs = 600, 0.0
        config.optimizer.warmup_epochs = 0.0
        config.optimizer.update(lr=1e-3, warmup_steps=60)
        # CK+ is small and skewed (36 sadness against 171 surprise faces): balanced class
        # weights keep the 6-class experiment from collapsing onto the largest classes.
        config.loss.class_weights = "balanced"
        # Whole faces: no erasing or mixing either (ckplus, see above; `tiny` turns them on).
        config.augment.update(erase=0.0, mixup=0.0, cutmix=0.0)
        config.log_every = 50
        config.eval_every = config.checkpoint_every = 200
        config.eval_batch_size = 128
    if v.tiny:
        config.augment.update(erase=0.25, mixup=0.8, cutmix=1.0)   # every code path
        config.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, image_size=32)
        config.batch_size = config.eval_batch_size = 8
        config.total_steps = 6
        config.optimizer.warmup_steps = 2
        config.log_every = config.eval_every = config.checkpoint_every = 3
        config.data.num_threads = 1
        config.progress = False
    if v.steps:
        config.total_steps = v.steps
        config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, v.steps // 10)
    return config
