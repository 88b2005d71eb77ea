"""Restores a trained model, scores it and writes ABAW submission files (the logic lives in
`abaw_jax.evaluation`).

  python -m abaw_jax.evaluate --workdir runs/va_demo

The run's own config (`<workdir>/config.json`, as train saved it) is used unless `--config`
names another (a config file, or a saved config.json); `--config.key=value` overrides either.
Predicts every frame of every video of the validation split (official metrics) and of the
test-set video list when the dataset has one, with sliding windows whose overlaps are averaged.
Writes to `<workdir>/predictions/<split>/`: `<TASK>.txt` (the submission format, one row per
frame, frames without a face image included), `<TASK>_outputs.npz` (raw per-frame outputs by
video, for ensembling) and, for labelled splits, `metrics.json`. `--ensemble=a,b` averages the
outputs of several runs (folds or systems) per frame instead.
"""

from __future__ import annotations

import pathlib
import sys

from abaw_jax import cli, ensemble, evaluation


def main(argv) -> None:
    del argv
    from absl import flags
    f = flags.FLAGS
    cli.initialize_distributed()
    splits = tuple(s for s in f.splits.split(",") if s)
    if f.ensemble:
        # Members: this workdir and the listed ones; each is evaluated with its own config.
        members = [f.workdir, *[w for w in f.ensemble.split(",") if w]]
        out = f.out or pathlib.Path(f.workdir) / "ensemble"
        for split, m in ensemble.ensemble(members, out, splits).items():
            ensemble.report(split, m)
        return
    evaluation.evaluate(f.config, f.workdir, checkpoint=f.checkpoint, splits=splits, out_dir=f.out or None,
                        allow_incomplete=f.allow_incomplete)


if __name__ == "__main__":
    from absl import flags
    flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number")
    flags.DEFINE_string("splits", "val,test", "comma-separated splits to predict")
    flags.DEFINE_string("out", "", "output directory (default <workdir>/predictions)")
    flags.DEFINE_string("ensemble", "", "comma-separated further workdirs (folds or systems) to "
                        "average with --workdir, per frame; writes to <workdir>/ensemble")
    flags.DEFINE_boolean("allow_incomplete", False, "write the test submission even when test-list "
                         "videos have no features (without their rows)")
    cli.run(main, config_from_workdir=True)
