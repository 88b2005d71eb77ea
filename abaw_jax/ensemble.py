"""Ensembles of several runs (folds or systems) by averaging their per-frame outputs.

Each workdir's `evaluate` writes raw per-frame outputs (`predictions/<split>/<TASK>_outputs.npz`).
The ensemble averages them in probability space (EXPR softmax, AU sigmoid; VA as is), scores the
average on the validation split and writes the submission files like `evaluate` does.
"""

from __future__ import annotations

import pathlib

import numpy as np

from abaw_jax import evaluation, files, runs


def to_probabilities(task: str, outputs: np.ndarray) -> np.ndarray:
    """Raw outputs -> the space in which members are averaged (per task's columns for "MTL")."""
    x = np.asarray(outputs, np.float64)
    if task == "MTL":
        return _per_task(to_probabilities, x)
    if task == "EXPR":
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if task == "AU":
        return 1.0 / (1.0 + np.exp(-x))
    return x


def _per_task(fn, x: np.ndarray) -> np.ndarray:
    """`fn` applied to each task's columns of packed multi-task outputs."""
    from abaw_jax.data import mtl
    out = np.empty_like(x)
    for task, cols in mtl.OUTPUT_COLUMNS.items():
        out[..., cols] = fn(task, x[..., cols])
    return out


def from_probabilities(task: str, probs: np.ndarray) -> np.ndarray:
    """Averaged probabilities -> raw-output form (log-probabilities / logits) for scoring."""
    if task == "MTL":
        return _per_task(from_probabilities, np.asarray(probs, np.float64))
    p = np.clip(probs, 1e-7, 1 - 1e-7) if task != "VA" else probs
    if task == "EXPR":
        return np.log(p)
    if task == "AU":
        return np.log(p) - np.log1p(-p)
    return p


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
        raise ValueError(f"ensemble members must share one task, got {sorted(tasks)} from "
                         f"{[str(w) for w in workdirs]}")
    task = tasks.pop()
    out_dir = pathlib.Path(out_dir)
    results = {}
    # The dataset (validation labels, MTL image lists), resolved once for every split.
    data = runs.resolve_data(configs[0]) if task == "MTL" or "val" in splits else None
    for split in splits:
        try:
            members = [member_outputs(w, task, split) for w in workdirs]
        except FileNotFoundError:
            if split == "test":
                continue
            raise
        names = sorted(members[0])
        for w, m in zip(workdirs, members):
            if sorted(m) != names:
                raise ValueError(f"{w}: predicted videos of {split} differ from {workdirs[0]}")
            for n in names:
                if m[n].shape != members[0][n].shape:
                    raise ValueError(f"{w}: video {n} has {m[n].shape[0]} frames, "
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
        metrics: dict = {"task": task, "members": [str(w) for w in workdirs]}
        if split == "val":
            by_name = {v.name: v for v in data.val}
            metrics.update(evaluation.split_metrics(task, decided, [by_name[n] for n in names]))
            files.write_json(split_dir / "metrics.json", metrics)
        results[split] = metrics
    return results
