"""System A, the masked temporal Transformer, on valence-arousal (CCC loss).

Paper defaults, for precomputed ViT-B/16 features of real Aff-Wild2 on accelerators:
  python -m abaw_jax.train --config configs/va.py --workdir runs/va \
      --config.data.root=/data/affwild2 --config.data.features=/data/feats/vit
Laptop run on the built-in demo data (a few minutes on a 2-core CPU):
  python -m abaw_jax.train --config configs/va.py:demo --workdir runs/va_demo
Variants after the colon (comma separated): demo; model=tcn (system B) or model=fusion (system C),
each with its paper's hyperparameters; seq_len=N; mask=P (system A, 0 disables masking);
no_tcn / no_transformer (system B ablations); sets=vit+openface (system C feature sets); steps=N;
windows=chunks (non-overlapping) or windows=causal (system A's default); fold=K, folds=SCHEME
(data/folds.py: grouped, ungrouped, kfold_shuffled, windows); eval=tiled (evaluation windows side by
side, the last one truncated: system B's test code).
"""

import pathlib

from abaw_jax import config as config_lib


def get_config(arg=None):
    # `model=` picks the system; its file applies the other variants (its VARIANTS).
    return config_lib.system_config("VA", arg, "transformer", pathlib.Path(__file__).parent)
