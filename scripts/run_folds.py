"""Trains every fold of a config and reports the mean and spread of the validation score.

  python scripts/run_folds.py --config configs/va.py:model=tcn,demo --workdir runs/va_folds \
      [--folds 5] [--config.data.root=/data/affwild2 --config.total_steps=1000]

Fold 0 is the official split; fold k >= 1 validates on part k of Train_Set + Validation_Set cut
into `--folds - 1` video-disjoint parts (system B's five folds, abaw_jax.data.folds;
`--config.data.fold=k`); each fold gets `<workdir>/fold<k>` and resumes if re-run. The folds
validate on different videos, so their scores are reported side by side (mean and standard
deviation, also in `<workdir>/folds.json`); `python -m abaw_jax.evaluate --ensemble` averages the
fold models' outputs on a common split such as the test set.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.common import load_config_arg, parse_with_overrides, set_override  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", required=True, help="config file with optional :variants")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.epilog = "Config overrides: --config.KEY=VALUE, repeatable (e.g. --config.total_steps=300)"
    args, overrides = parse_with_overrides(parser)

    from abaw_jax import files, metrics, train
    scores = []
    for k in range(args.folds):
        config = load_config_arg(args.config)
        for item in overrides:
            set_override(config, item)
        config.data.fold, config.data.num_folds = k, args.folds
        result = train.train_and_evaluate(config, pathlib.Path(args.workdir) / f"fold{k}")
        score = result[f"val/{metrics.score_name(config.task)}"]
        scores.append(score)
        print(f"fold {k}: {score:.4f}", flush=True)
    summary = {"folds": scores, "mean": float(np.mean(scores)), "std": float(np.std(scores))}
    files.write_json(pathlib.Path(args.workdir) / "folds.json", summary)
    print(f"{args.folds} folds: {summary['mean']:.4f} +- {summary['std']:.4f}")


if __name__ == "__main__":
    main()
