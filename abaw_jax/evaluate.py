"""Restores a trained model, scores it and writes ABAW submission files.

  python -m abaw_jax.evaluate --config configs/va.py:demo --workdir runs/va_demo

Predicts every frame of every video of the validation split (official metrics) and of the
test-set video list when the dataset has one, with sliding windows whose overlaps are averaged.
Writes to `<workdir>/predictions/<split>/`: `<TASK>.txt` (the submission format, one row per
frame, frames without a face image included), `<TASK>_outputs.npz` (raw per-frame outputs by
video, for ensembling) and, for labelled splits, `metrics.json`.
"""

from __future__ import annotations

import io
import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np

from abaw_jax import checkpoints, sharding, submission
from abaw_jax import config as config_lib
from abaw_jax import train as train_lib
from abaw_jax.data import affwild2


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
             checkpoint: str = "best", splits: tuple[str, ...] = ("val", "test"),
             out_dir: str | pathlib.Path | None = None) -> dict:
    """Scores `splits` with the checkpoint `checkpoint` of `workdir`; returns metrics by split."""
    config_lib.validate(config)
    workdir = pathlib.Path(workdir)
    out_dir = pathlib.Path(out_dir) if out_dir else workdir / "predictions"
    mesh = sharding.make_mesh(config.mesh_data)
    data = train_lib.resolve_data(config)
    setup = train_lib.setup_model(config, data.feature_dims, mesh)
    step, state = checkpoints.restore_params(workdir, setup.abstract_state, checkpoint)
    predict = jax.jit(train_lib.make_predict(setup.model),
                      in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                      out_shardings=sharding.batch_sharding(mesh))
    is_main = jax.process_index() == 0
    if is_main:
        print(f"Evaluating {workdir} ({checkpoint} checkpoint, step {step})", file=sys.stderr)

    results = {}
    for split in splits:
        if split == "val":
            videos = data.val
        elif split == "test":
            try:
                # Frame counts from the feature store, which covers frames past the last face.
                videos = affwild2.test_videos(
                    data.root, config.task,
                    frame_counts={v: data.features.num_frames(v) for v in data.features.videos})
            except FileNotFoundError as e:
                if is_main:
                    print(f"No test-set video list for {config.task}: skipping the test split "
                          f"({e})", file=sys.stderr)
                continue
        else:
            raise ValueError(f"unknown split {split!r}; use 'val' and/or 'test'")
        outputs = train_lib.predict_split(predict, state["params"], videos, data.features,
                                          config, mesh)
        split_dir = out_dir / split
        names = [v.name for v in videos]
        metrics = {"step": step, "checkpoint": checkpoint}
        if split == "val":
            score, details = train_lib.score_split(config.task, outputs, videos)
            metrics.update(score=score, **details)
        if is_main:
            submission.write_submission(split_dir / f"{config.task}.txt", config.task, names, outputs)
            save_outputs(split_dir / f"{config.task}_outputs.npz", names, outputs)
            if split == "val":
                write_json(split_dir / "metrics.json", metrics)
                shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                  if isinstance(v, float))
                print(f"{split}: {shown}", file=sys.stderr)
            print(f"wrote {split_dir / (config.task + '.txt')} ({sum(len(o) for o in outputs)} "
                  f"frames of {len(names)} videos)", file=sys.stderr)
        results[split] = metrics
    return results


def save_outputs(path: pathlib.Path, names: list[str], outputs: list[np.ndarray]) -> None:
    """Raw per-frame outputs keyed by video name, written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **{n: o for n, o in zip(names, outputs)})
    checkpoints.write_atomic(path, buffer.getvalue())


def write_json(path: pathlib.Path, obj: dict) -> None:
    """`obj` as indented JSON (numpy scalars and arrays as plain values), written atomically."""
    checkpoints.write_atomic(path, json.dumps(obj, indent=2, default=_plain) + "\n")


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x))


def main(argv) -> None:
    del argv
    from absl import flags
    f = flags.FLAGS
    sharding.initialize_distributed(f.coordinator, f.num_processes, f.process_id)
    splits = tuple(s for s in f.splits.split(",") if s)
    if f.ensemble:
        # Members: this workdir and the listed ones; each is evaluated with its own config.
        from abaw_jax import ensemble
        members = [f.workdir, *[w for w in f.ensemble.split(",") if w]]
        out = f.out or pathlib.Path(f.workdir) / "ensemble"
        for split, m in ensemble.ensemble(members, out, splits).items():
            if "score" in m:
                print(f"ensemble of {len(members)} on {split}: score={m['score']:.4f}",
                      file=sys.stderr)
        return
    evaluate(f.config, f.workdir, checkpoint=f.checkpoint, splits=splits, out_dir=f.out or None)


if __name__ == "__main__":
    from absl import flags
    flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number")
    flags.DEFINE_string("splits", "val,test", "comma-separated splits to predict")
    flags.DEFINE_string("out", "", "output directory (default <workdir>/predictions)")
    flags.DEFINE_string("ensemble", "", "comma-separated further workdirs (folds or systems) to "
                        "average with --workdir, per frame; writes to <workdir>/ensemble")
    train_lib.run(main)
