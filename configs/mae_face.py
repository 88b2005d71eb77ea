"""MAE pretraining of a ViT-B/16 on face images (system B's encoder). Paper (seeds/ctyunai_mae_tcn):
75% of the 16x16 patches masked, pixel L2 loss on the masked patches (no per-patch
normalisation), 500 epochs, AdamW, batch 1024, lr 5e-4 (absolute). Where the paper is silent,
facebookresearch/mae's recipe, which the authors name: a 8 x 512 decoder, betas (0.9, 0.95),
weight decay .05 on kernels only, 40 warmup epochs, then cosine to 0, random resized crops
(area .2 to 1) and flips.

  python -m abaw_jax.pretrain --config configs/mae_face.py --workdir runs/mae \
      --config.data.root=/data/affectnet/train --config.data.mapping=affectnet
Aff-Wild2 frames instead of a folder of images:
  python -m abaw_jax.pretrain --config configs/mae_face.py --workdir runs/mae \
      --config.data.source=affwild2 --config.data.root=/data/affwild2 --config.data.every=10
Several face datasets at once, as the paper pretrains on AffectNet, RAF-DB, FER2013 and FER+
(`data.extra`: comma-separated `folder:DIR` (class subfolders), `affwild2:ROOT` (its frames) or
`tfds:NAME[@DATA_DIR]` (a prepared dataset's train split); every image of every source once per
epoch, the log lists each source's count; MAE ignores labels; fine-tuning refuses extra sources):
  python -m abaw_jax.pretrain --config configs/mae_face.py --workdir runs/mae \
      --config.data.root=/data/affectnet/train --config.data.mapping=affectnet \
      --config.data.extra=folder:/data/rafdb/train,tfds:fer2013@/data/tfds,tfds:ferplus@/data/tfds
CK+ (48 px grey faces, subjects held out) on a laptop CPU in a few minutes:
  python -m abaw_jax.pretrain --config configs/mae_face.py:ckplus --workdir runs/mae_ckplus \
      --config.data.root=../shared/data/ckplus48
Variants after the colon: ckplus (small ViT at 48 px, CPU scale); tiny (tests); steps=N.
"""

from abaw_jax import config as config_lib

from abaw_jax.models import mae


def get_config(arg=None):
    v = config_lib.parse_arg(arg, ckplus=False, tiny=False, steps=0)
    config = config_lib.image_base_config("mae")
    config.model = mae.default_config()
    config.model.norm_pix_loss = False
    config.batch_size = 1024
    config.total_steps, config.num_epochs = 0, 500.0
    config.optimizer.lr = 5e-4
    config.optimizer.warmup_steps, config.optimizer.warmup_epochs = 0, 40.0
    if v.ckplus or v.tiny:
        _small(config, tiny=v.tiny)
    if v.steps:
        config.total_steps = v.steps
        config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, v.steps // 10)
    return config


def _small(config, tiny: bool) -> None:
    """A 48 px ViT (patch 6, 192 wide, 4 deep) with a 2 x 128 decoder; ``tiny``: 32 px, 2 x 32."""
    config.model.update(width=192, depth=4, num_heads=3, mlp_dim=768, patch_size=6, image_size=48,
                        decoder_width=128, decoder_depth=2, decoder_num_heads=4, decoder_mlp_dim=512,
                        norm_pix_loss=True)
    # No random resized crop: CK+ faces are aligned, and at 48 px even a 0.8-area crop shifts
    # the face by most of a patch, which a ViT trained on ~470 faces cannot absorb (from
    # scratch it stays at chance); masking 75% of the patches is augmentation enough.
    config.data.update(val_fraction=0.2, group_pattern=r"^(S\d+)_", mean=(0.5, 0.5, 0.5),
                       std=(0.25, 0.25, 0.25), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    config.batch_size = 64
    config.total_steps, config.num_epochs = 1500, 0.0
    config.optimizer.warmup_epochs = 0.0
    config.optimizer.update(lr=1.5e-3, warmup_steps=100)
    config.log_every = 50
    config.eval_every = 500
    config.checkpoint_every = 500
    config.eval_batch_size = 128
    if tiny:
        config.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, image_size=32,
                            decoder_width=32, decoder_depth=1, decoder_num_heads=2, decoder_mlp_dim=64)
        config.batch_size = 8
        config.eval_batch_size = 8
        config.total_steps = 6
        config.optimizer.warmup_steps = 2
        config.log_every = config.eval_every = config.checkpoint_every = 3
        config.num_recon_images = 4
        config.data.num_threads = 1
        config.progress = False
