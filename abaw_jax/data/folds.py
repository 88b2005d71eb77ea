"""Folds of system B (its paper's table 1 reports five, fold 0 being the official split).

Fold 0 is the official split: Train_Set for training, Validation_Set for validation (the paper's
fold-0 scores are its ablation's "official training and validation sets" scores). How folds 1
to `num_folds - 1` are made the paper does not say; the authors' code makes them in three ways,
and this project adds a leak-free one (its default, a documented choice):

- "grouped" (default): the union of both sets is re-split into `num_folds - 1` parts, validating
  on part k - 1; the parts are video-disjoint by source video, so the `_left` / `_right` crops
  of one recording always land in the same part (scikit-learn's GroupKFold over the videos
  sorted by name: deterministic, it balances videos per part greedily).
- "ungrouped": the code's VA and AU fold scripts, KFold(num_folds - 1) without shuffling over
  the video list. The code listed the videos in file-system order, which differs between
  machines; sorted names are the reproducible stand-in. `_left` / `_right` crops of one
  recording can then fall into training and validation at once, which leaks the subject.
- "kfold_shuffled": the code's EXPR fold script, KFold(num_folds - 1, shuffle=True,
  random_state=42), over sorted names (the code globbed the files; the same leak).
- "windows": the code's released EXPR configs, whose folds 1-4 all train on Train_Set and
  validate on Validation_Set with other windows (`WINDOW_FOLDS`: w100/s50, w150/s100,
  w400/s200, w50/s10 against fold 0's w300/s200). The config's `data.seq_len` and strides
  must be the fold's (the task variant `folds=windows,fold=K` sets them).

`fold = -1` is accepted as the official split too.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold, KFold

from abaw_jax.data.affwild2 import Video, source_video

SCHEMES = ("grouped", "ungrouped", "kfold_shuffled", "windows")
# Scheme "windows": fold -> (window, stride) of system B's released EXPR configs (fold 0: 300, 200).
WINDOW_FOLDS = {1: (100, 50), 2: (150, 100), 3: (400, 200), 4: (50, 10)}


def fold_split(train: list[Video], val: list[Video], fold: int, num_folds: int = 5,
               scheme: str = "grouped") -> tuple[list[Video], list[Video]]:
    """(train, val) videos of `fold` (see the module docstring)."""
    if fold in (-1, 0):
        return train, val
    if not 0 < fold < num_folds:
        raise ValueError(f"fold {fold} is not in [0, {num_folds}) (0: the official split)")
    if scheme not in SCHEMES:
        raise ValueError(f"fold scheme {scheme!r} is not one of {SCHEMES}")
    if scheme == "windows":
        return train, val
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
        kfold = (KFold(n_splits=parts, shuffle=True, random_state=42) if scheme == "kfold_shuffled"
                 else KFold(n_splits=parts, shuffle=False))
        splits = list(kfold.split(np.zeros(len(videos))))
    train_idx, val_idx = splits[fold - 1]
    return [videos[i] for i in train_idx], [videos[i] for i in val_idx]
