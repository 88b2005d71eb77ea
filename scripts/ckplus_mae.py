"""MAE pretraining then fine-tuning on real faces (CK+48), against fine-tuning from scratch.

  python scripts/ckplus_mae.py --workdir runs/ckplus [--quick]

CK+48 (594 grey 48x48 faces, 6 emotions) is split by subject (20% of subjects held out, the
same split for every run). Three runs in ``workdir``: ``mae`` (configs/mae_face.py:ckplus),
``ft_mae`` (configs/finetune_expr.py:ckplus from the MAE encoder) and ``ft_scratch`` (the same
fine-tuning from random weights, without layer-wise decay, which only makes sense for a
pretrained encoder). Prints a table and writes ``results.json``. ``--quick`` is the reduced
version the slow test runs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abaw_jax import config as config_lib  # noqa: E402
from abaw_jax import pretrain  # noqa: E402
from abaw_jax.data import image_sources  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ckplus48"


def _config(name: str, arg: str):
    return config_lib.load_config_file(ROOT / "configs" / f"{name}.py", arg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--mae_steps", type=int, default=0, help="0: the config's (1500; quick 300)")
    parser.add_argument("--ft_steps", type=int, default=0, help="0: the config's (600; quick 200)")
    parser.add_argument("--quick", action="store_true", help="the reduced run (about 10 min on 2 cores)")
    args = parser.parse_args()
    work = pathlib.Path(args.workdir)
    mae_steps = args.mae_steps or (300 if args.quick else 1500)
    ft_steps = args.ft_steps or (200 if args.quick else 600)

    mae = _config("mae_face", f"ckplus,steps={mae_steps}")
    mae.data.root = args.data
    mae.progress = False
    mae.eval_every = mae.checkpoint_every = max(mae_steps // 3, 1)
    t0 = time.perf_counter()
    pretrain.train_and_evaluate(mae, work / "mae")
    t_mae = time.perf_counter() - t0
    rows = [json.loads(line) for line in (work / "mae" / "metrics.jsonl").read_text().splitlines()]
    val_losses = [r["val/loss"] for r in rows if "val/loss" in r]
    train_losses = [r["train/loss"] for r in rows if "train/loss" in r]

    results = {}
    timings = {}
    for name, init in (("pretrained", str(work / "mae")), ("scratch", "")):
        ft = _config("finetune_expr", f"ckplus,steps={ft_steps}")
        ft.data.root = args.data
        ft.init_from = init
        ft.progress = False
        ft.eval_every = ft.checkpoint_every = ft_steps
        if not init:
            ft.optimizer.layer_decay = 1.0
        t0 = time.perf_counter()
        results[name] = pretrain.train_and_evaluate(ft, work / f"ft_{name}")
        timings[name] = time.perf_counter() - t0

    source = image_sources.ImageFolder(args.data)
    _, val, held = image_sources.split_by_group(source, mae.data.val_fraction,
                                                pattern=mae.data.group_pattern, seed=mae.data.split_seed)
    majority = float(np.bincount(val.labels).max() / len(val))
    out = dict(mae_steps=mae_steps, ft_steps=ft_steps, held_out_subjects=held,
               val_images=len(val), majority=majority, mae_seconds=t_mae,
               mae_train_loss_first=train_losses[0], mae_train_loss_last=train_losses[-1],
               mae_val_loss_first=val_losses[0], mae_val_loss_last=val_losses[-1],
               ft_seconds=timings, **results)
    (work / "results.json").write_text(json.dumps(out, indent=2) + "\n")

    print(f"CK+48, {len(held)} held-out subjects ({len(val)} images); MAE {mae_steps} steps "
          f"({t_mae:.0f} s), fine-tuning {ft_steps} steps")
    print(f"MAE loss (norm-pix, masked patches): train {train_losses[0]:.4f} -> {train_losses[-1]:.4f}, "
          f"held-out {val_losses[0]:.4f} -> {val_losses[-1]:.4f}")
    print(f"{'model':<28}{'accuracy':>10}{'macro F1':>10}{'bal. acc':>10}{'seconds':>9}")
    print(f"{'majority class':<28}{majority:>10.4f}")
    for name in ("scratch", "pretrained"):
        r = results[name]
        label = "fine-tuned from MAE" if name == "pretrained" else "trained from scratch"
        print(f"{label:<28}{r['val/accuracy']:>10.4f}{r['val/macro_f1']:>10.4f}"
              f"{r['val/balanced_accuracy']:>10.4f}{timings[name]:>9.0f}")

    # The claims of the experiment, checked: exit status 1 names any that does not hold.
    checks = {
        "MAE training loss falls by more than 20%": train_losses[-1] < 0.8 * train_losses[0],
        "held-out reconstruction loss falls by more than 10%": val_losses[-1] < 0.9 * val_losses[0],
        "fine-tuned from MAE beats the majority class by 0.10":
            results["pretrained"]["val/accuracy"] > majority + 0.1,
        "fine-tuned from MAE beats training from scratch":
            results["pretrained"]["val/accuracy"] > results["scratch"]["val/accuracy"],
    }
    failed = [name for name, ok in checks.items() if not ok]
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
