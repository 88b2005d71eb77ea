"""Ensembles of several runs (folds or systems) by averaging their per-frame outputs.

Each workdir's `evaluate` writes raw per-frame outputs (`predictions/<split>/<TASK>_outputs.npz`).
The ensemble averages them in probability space (EXPR softmax, AU sigmoid; VA as is), as the
overlapping windows of one run are averaged (`pipeline.Assembler`), scores the average on the
validation split and writes the submission files like `evaluate` does. Members whose
validation videos differ (the folds of one system) are scored on the validation split one by
one, each on its own videos; their test-split outputs are still averaged.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

from abaw_jax import evaluation, files, runs
from abaw_jax.data import pipeline


class EnsembleError(ValueError):
    """Members that cannot be averaged (the message names the workdirs)."""


# The space in which outputs are averaged, shared with the overlapping windows of one run
# (data/pipeline.py), so that an ensemble of runs and the windows of one run agree.
to_probabilities = pipeline.to_probabilities
from_probabilities = pipeline.from_probabilities


def member_outputs(workdir: pathlib.Path, task: str, split: str) -> dict[str, np.ndarray]:
    """A member's per-video outputs, produced by its `evaluate` run if not there yet."""
    path = workdir / "predictions" / split / f"{task}_outputs.npz"
    if not path.exists():
        evaluation.evaluate(runs.load_run_config(workdir), workdir, splits=(split,))
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def ensemble(workdirs: list[str | pathlib.Path], out_dir: str | pathlib.Path,
             splits: tuple[str, ...] = ("val", "test")) -> dict:
    """Averages the members' outputs per frame; returns {split: metrics} (metrics for "val")."""
    workdirs = [pathlib.Path(w) for w in workdirs]
    configs = [runs.load_run_config(w) for w in workdirs]
    tasks = {c.task for c in configs}
    if len(tasks) != 1:
        raise EnsembleError(f"ensemble members must share one task, got {sorted(tasks)} from "
                            f"{[str(w) for w in workdirs]}")
    task = tasks.pop()
    out_dir = pathlib.Path(out_dir)
    results = {}
    # The dataset (validation labels, MTL image lists), resolved once for every split.
    data = runs.resolve_data(configs[0]) if task == "MTL" or "val" in splits else None
    for w, config in zip(workdirs, configs):
        # One evaluate per member for every split it lacks: one restore and one compile.
        lacking = tuple(s for s in splits
                        if not (w / "predictions" / s / f"{task}_outputs.npz").exists())
        if lacking:
            evaluation.evaluate(config, w, splits=lacking)
    for split in splits:
        try:
            members = [member_outputs(w, task, split) for w in workdirs]
        except FileNotFoundError:
            if split == "test":
                continue
            raise
        names = sorted(members[0])
        if split == "val" and any(sorted(m) != names for m in members):
            results[split] = score_members(workdirs, configs, members, out_dir / split)
            continue
        for w, m in zip(workdirs, members):
            if sorted(m) != names:
                raise EnsembleError(f"{w}: predicted videos of {split} differ from {workdirs[0]}")
            for n in names:
                if m[n].shape != members[0][n].shape:
                    raise EnsembleError(f"{w}: video {n} has {m[n].shape[0]} frames, "
                                        f"{workdirs[0]} has {members[0][n].shape[0]}")
        outputs = [from_probabilities(task, np.mean(
            [to_probabilities(task, m[n]) for m in members], axis=0)) for n in names]
        split_dir = out_dir / split
        decided = evaluation.smoothed(configs[0], outputs)
        inputs = None
        if task == "MTL":
            inputs = evaluation.split_inputs(configs[0], data, split)
            if inputs is None:
                continue
        evaluation.write_split(split_dir, task, inputs, names, outputs, decided)
        metrics: dict = {"task": task, "members": [str(w) for w in workdirs],
                         "wrote": [str(split_dir / (f"{task}.txt"))]}
        if split == "val":
            by_name = {v.name: v for v in data.val}
            metrics.update(evaluation.split_metrics(task, decided, [by_name[n] for n in names]))
            files.write_json(split_dir / "metrics.json", metrics)
        results[split] = metrics
    return results


def score_members(workdirs: list[pathlib.Path], configs, members: list[dict[str, np.ndarray]],
                  split_dir: pathlib.Path) -> dict:
    """Validation scores of members whose validation videos differ (folds): each member on its
    own videos, as its `evaluate` scores them; written to `<split_dir>/metrics.json`."""
    task = configs[0].task
    print(f"note: the members validate on different videos (folds): the validation split is "
          f"scored per member, not averaged", file=sys.stderr)
    scores = {}
    for w, config, outputs in zip(workdirs, configs, members):
        videos = runs.resolve_data(config).val
        names = [v.name for v in videos]
        if sorted(names) != sorted(outputs):
            raise EnsembleError(f"{w}: its saved validation outputs do not cover its validation "
                                f"videos; delete {w / 'predictions' / 'val'} and rerun")
        score, _ = evaluation.score_split(task, evaluation.smoothed(config, [outputs[n] for n in names]),
                                          videos)
        scores[str(w)] = float(score)
    result = {"task": task, "members": [str(w) for w in workdirs], "member_scores": scores,
              "wrote": [str(split_dir / "metrics.json")]}
    files.write_json(split_dir / "metrics.json", result)
    return result


def report(split: str, result: dict) -> None:
    """Prints an ensemble's result on `split`: its score (or the members' scores) and its files."""
    from abaw_jax import metrics
    n = len(result["members"])
    if "score" in result:
        print(f"ensemble of {n} on {split}: "
              f"{metrics.describe(result['task'], result['score'], result)}", file=sys.stderr)
    for member, score in result.get("member_scores", {}).items():
        print(f"{split}: {member}: {score:.4f}", file=sys.stderr)
    for path in result.get("wrote", []):
        print(f"wrote {path}", file=sys.stderr)
