"""The multi-task challenge (7th ABAW, Challenge 1): one model predicts valence-arousal, the
expression and the 12 AUs of every frame of s-Aff-Wild2, ranked by
P_MTL = (CCC_V + CCC_A) / 2 + F1_EXPR + F1_AU. System C (multi-encoder fusion), built for this
challenge, is the default; each system's per-task losses are summed over each task's valid
labels (`--config.loss.task_weights.VA=...` weighs them).

  python -m abaw_jax.train --config configs/mtl.py --workdir runs/mtl \
      --config.data.root=/data/affwild2
  python -m abaw_jax.evaluate --workdir runs/mtl
Laptop run on the built-in demo data (its MTL split, in the official form):
  python -m abaw_jax.train --config configs/mtl.py:demo --workdir runs/mtl_demo
Variants after the colon: demo; model=transformer (system A) or model=tcn (system B);
sets=a+b (system C feature sets); seq_len=N; steps=N.
"""

import pathlib

from abaw_jax import config as config_lib


def get_config(arg=None):
    # `model=` picks the system; its file applies the other variants (its VARIANTS).
    return config_lib.system_config("MTL", arg, "fusion", pathlib.Path(__file__).parent)
