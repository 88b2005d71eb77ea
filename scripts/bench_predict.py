"""`predict` end to end at system A's real sizes: frames/s per stage on one clip.

A VA run of system A at its published size (the masked temporal Transformer: d 768, 6 layers,
8 heads, windows of 100 frames; `configs/va.py`) is trained for one step on a small demo
dataset of 768-d features (its weights do not matter for timing), and
`python -m abaw_jax.predict` runs it on the clip with the ViT-B/16 encoder at 224 px (system
A's feature extractor, random weights: `--encoder vit:B/16`) and each face detector. The
stages are those of `predict --timings`: decoding (twice), detection, crops, the encoder, the
temporal model; one-time jit compilation is reported apart.

    python scripts/bench_predict.py [--video clip.mp4] [--detectors full_range,short_range,haar]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "videos" / "fer_woman2.mp4"
ENCODER = "vit:B/16"


def system_a_run(out: pathlib.Path) -> pathlib.Path:
    """A one-step VA run of system A at full size on a tiny 768-d demo dataset."""
    from abaw_jax import config as config_lib, train
    from abaw_jax.data import demo
    root = demo.build_demo(out / "demo", num_videos=6, seed=0, length_scale=0.02,
                           feature_sets={"vit": 768, "openface": 17})
    config = config_lib.load_config_file(ROOT / "configs" / "va.py")
    config.data.root = str(root)
    config.data.num_threads = 1
    config.batch_size = 2
    config.total_steps, config.num_epochs = 1, 0.0
    config.evals_per_epoch, config.early_stopping_patience = 0.0, 0
    config.eval_every = config.checkpoint_every = config.log_every = 1
    config.progress = False
    train.train_and_evaluate(config, out / "va")
    return out / "va"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/bench_predict.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", default=str(DEFAULT_VIDEO))
    parser.add_argument("--detectors", default="full_range,short_range,haar")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    from abaw_jax import predict
    from abaw_jax.data import faces as faces_lib

    with tempfile.TemporaryDirectory() as tmp:
        workdir = system_a_run(pathlib.Path(tmp))
        rows = {}
        for name in args.detectors.split(","):
            det = (faces_lib.HaarDetector() if name == "haar"
                   else faces_lib.BlazeFaceDetector(name))
            p = predict.Predictor([workdir], encoder=ENCODER, batch_size=args.batch_size,
                                  detector=det)
            table = p.predict_video(args.video)
            rows[name] = dict(p.timings, found=float(table["face_found"].mean()))
            print(f"{name}: {pathlib.Path(args.video).name}, {p.timings['frames']} frames, a face "
                  f"in {rows[name]['found']:.1%}", flush=True)
            print(predict.format_timings(p.timings), flush=True)
    print(f"\n{'stage':<10}" + "".join(f"{n:>14}" for n in rows))
    for stage in (*predict.STAGES, "total", "compile"):
        cells = []
        for r in rows.values():
            total = sum(r.get(s, 0.0) for s in predict.STAGES)
            s = total if stage == "total" else r.get(stage, 0.0)
            cells.append(f"{s:>8.1f} s" if stage == "compile" else
                         f"{r['frames'] / s if s > 0 else float('inf'):>10.1f} f/s")
        print(f"{stage:<10}" + "".join(f"{c:>14}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
