"""System A, the masked temporal Transformer, on valence-arousal (CCC loss).

Paper defaults, for precomputed ViT-B/16 features of real Aff-Wild2 on accelerators:
  python -m abaw_jax.train --config configs/va.py --workdir runs/va \
      --config.data.root=/data/affwild2 --config.data.features=/data/feats/vit
Laptop run on the built-in demo data (a few minutes on a 2-core CPU):
  python -m abaw_jax.train --config configs/va.py:demo --workdir runs/va_demo
Variants after the colon (comma separated): demo, seq_len=N, mask=P (0 disables masking), steps=N.
"""

from abaw_jax import config as config_lib


def get_config(arg=None):
    config = config_lib.base_config("VA")
    config.loss.name = "ccc"
    # Valence and arousal live in [-1, 1].
    config.model.output_activation = "tanh"
    return config_lib.apply_variants(config, arg)
