"""The five folds of system B (its paper's table 1).

Fold 0 is the official split: Train_Set for training, Validation_Set for validation (the paper's
fold-0 scores are its ablation's "official training and validation sets" scores). Folds 1 to
`num_folds - 1` re-split the union of both sets into `num_folds - 1` parts and validate on part
k - 1, training on the rest.

- "grouped" (default): the parts are video-disjoint by source video, so the `_left` / `_right`
  crops of one recording always land in the same part (scikit-learn's GroupKFold over the
  videos sorted by name: deterministic, it balances videos per part greedily).
- "ungrouped": the authors' code's split, KFold(num_folds - 1) without shuffling over the video
  list. The code listed the videos in file-system order, which differs between machines; sorted
  names are the reproducible stand-in. `_left` / `_right` crops of one recording can then fall
  into training and validation at once, which leaks the subject and the scene.

`fold = -1` is accepted as the official split too.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold, KFold

from abaw_jax.data.affwild2 import Video, source_video

SCHEMES = ("grouped", "ungrouped")


def fold_split(train: list[Video], val: list[Video], fold: int, num_folds: int = 5,
               scheme: str = "grouped") -> tuple[list[Video], list[Video]]:
    """(train, val) videos of `fold` (see the module docstring)."""
    if fold in (-1, 0):
        return train, val
    if not 0 < fold < num_folds:
        raise ValueError(f"fold {fold} is not in [0, {num_folds}) (0: the official split)")
    if scheme not in SCHEMES:
        raise ValueError(f"fold scheme {scheme!r} is not one of {SCHEMES}")
    videos = sorted(train + val, key=lambda v: v.name)
    parts = num_folds - 1
    if scheme == "grouped":
        groups = [source_video(v.name) for v in videos]
        if len(set(groups)) < parts:
            raise ValueError(f"{len(set(groups))} source videos cannot make {parts} parts")
        splits = list(GroupKFold(n_splits=parts).split(np.zeros(len(videos)), groups=groups))
    else:
        if len(videos) < parts:
            raise ValueError(f"{len(videos)} videos cannot make {parts} parts")
        splits = list(KFold(n_splits=parts, shuffle=False).split(np.zeros(len(videos))))
    train_idx, val_idx = splits[fold - 1]
    return [videos[i] for i in train_idx], [videos[i] for i in val_idx]
