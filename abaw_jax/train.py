"""Trains a temporal model on per-frame features for one ABAW challenge.

  python -m abaw_jax.train --config configs/va.py:demo --workdir runs/va_demo

The run (data, length, device bank, model, loss, jitted step, evaluation) is built by
`abaw_jax.training.build_run` and driven by `abaw_jax.loop.execute`. Re-running the same command
resumes from the workdir's checkpoint.
"""

from __future__ import annotations

import pathlib

import ml_collections

from abaw_jax import best_parts, cli, loop, optim, training
from abaw_jax import config as config_lib


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Runs (or resumes) training in `workdir`; returns the last validation metrics."""
    config_lib.validate(config)
    workdir = loop.prepare_workdir(config, workdir)
    built = training.build_run(config)
    optim.report(built.run.plan)
    run = best_parts.tracking(built.run, workdir, config)
    return loop.execute(run, config, workdir).last_eval


def main(argv) -> None:
    del argv
    from absl import flags
    cli.initialize_distributed()
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
