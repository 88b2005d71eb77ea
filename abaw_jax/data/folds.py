"""Video-disjoint folds over the union of Train_Set and Validation_Set (system B's 5 folds).

Videos are grouped by source video, so the `_left` / `_right` crops of one recording always land
in the same fold, and split with scikit-learn's GroupKFold (deterministic: it balances the number
of videos per fold greedily, largest groups first, with no randomness).
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold

from abaw_jax.data.affwild2 import Video, source_video


def fold_split(videos: list[Video], fold: int, num_folds: int = 5) -> tuple[list[Video], list[Video]]:
    """(train, val) for `fold`: val is fold `fold` of `videos`, train the other folds."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold {fold} is not in [0, {num_folds})")
    videos = sorted(videos, key=lambda v: v.name)
    groups = [source_video(v.name) for v in videos]
    if len(set(groups)) < num_folds:
        raise ValueError(f"{len(set(groups))} source videos cannot make {num_folds} folds")
    splits = list(GroupKFold(n_splits=num_folds).split(np.zeros(len(videos)), groups=groups))
    train_idx, val_idx = splits[fold]
    return [videos[i] for i in train_idx], [videos[i] for i in val_idx]
