"""The `python -m abaw_jax.predict` command: arguments, the detector, the written files."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Mapping, Sequence

from abaw_jax import cli
from abaw_jax.data import faces as faces_lib
from abaw_jax.data import video as video_lib
from abaw_jax.predict.overlay import write_overlay
from abaw_jax.predict.plot import plot
from abaw_jax.predict.predictor import STAGES, Predictor
from abaw_jax.predict.table import PredictError, write_csv


def format_timings(timings: Mapping[str, float]) -> str:
    """A small table of seconds and frames/s per stage."""
    n = timings.get("frames", 0)
    lines = [f"{'stage':<10}{'seconds':>10}{'frames/s':>12}"]
    total = 0.0
    for stage in STAGES:
        s = timings.get(stage, 0.0)
        total += s
        lines.append(f"{stage:<10}{s:>10.2f}{(n / s if s > 0 else float('inf')):>12.1f}")
    lines.append(f"{'total':<10}{total:>10.2f}{(n / total if total > 0 else float('inf')):>12.1f}")
    lines.append(f"(plus {timings.get('compile', 0.0):.2f} s of one-time jit compilation, "
                 f"not in the stages; {n} frames)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The `python -m abaw_jax.predict` command."""
    parser = argparse.ArgumentParser(
        prog="python -m abaw_jax.predict",
        description="Per-frame valence-arousal, expression and AU predictions for a face video.")
    parser.add_argument("--video", required=True, help="video file or folder of frame images")
    parser.add_argument("--workdir", required=True, action="append",
                        help="training run (repeat for several tasks or an ensemble)")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--plot", help="PNG of the predictions over time")
    parser.add_argument("--overlay", help="mp4 of the video with the box and predictions drawn")
    parser.add_argument("--encoder", help="image encoder spec (see the module doc); default: the "
                        "extractor recorded with the training features")
    parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step")
    parser.add_argument("--fps", type=float, help="frame rate (frame folders; overrides a file's)")
    parser.add_argument("--batch-size", type=int, default=32, help="encoder / window batch size")
    parser.add_argument("--detector", default="blazeface", choices=faces_lib.DETECTORS,
                        help="face detector: MediaPipe's BlazeFace (weights shipped with the "
                        "package) or OpenCV's Haar cascade")
    parser.add_argument("--face-model", help="BlazeFace weights: full_range or short_range "
                        "(shipped), or a face_detection_{full,short}_range.tflite file (default: "
                        f"${faces_lib.MODEL_ENV}, else full_range)")
    parser.add_argument("--min-score", type=float, help="BlazeFace score threshold (default: "
                        "MediaPipe's, 0.6 full range, 0.5 short range)")
    parser.add_argument("--track", default="subject", choices=faces_lib.TRACK_MODES,
                        help="whose face: the clip's dominant track, the largest face of each "
                        "frame, or every track (one CSV each)")
    parser.add_argument("--max-gap", type=float, default=0.5,
                        help="longest gap in seconds inside a track that is bridged by "
                        "interpolating the face's box and keypoints (0: none)")
    parser.add_argument("--min-face", type=float, default=0.1,
                        help="haar: smallest face side as a fraction of the frame's short side "
                        "(larger is faster)")
    parser.add_argument("--detect-size", type=int, default=320,
                        help="haar: long side in pixels of the frame copy the detector scans")
    parser.add_argument("--timings", action="store_true", help="print frames/s per stage")
    args = parser.parse_args(argv)
    try:
        source = video_lib.open_source(args.video, args.fps)   # a bad video fails before loading
        if args.detector == "haar":
            detector = faces_lib.HaarDetector(detect_size=args.detect_size, min_face=args.min_face)
        else:
            from abaw_jax.models import blazeface, tflite
            try:
                detector = faces_lib.BlazeFaceDetector(args.face_model, min_score=args.min_score)
            except (blazeface.BlazeFaceError, tflite.TFLiteError) as e:
                raise PredictError(str(e)) from None
        predictor = Predictor(args.workdir, encoder=args.encoder, checkpoint=args.checkpoint,
                              batch_size=args.batch_size, detector=detector, track=args.track,
                              max_gap_s=args.max_gap)
        tables = predictor.predict_tracks(source)
    except Exception as e:   # bad input (a run, a checkpoint, a video) is one line, a bug is not
        if not cli.is_input_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2

    def named(path: str, suffix: str) -> str:
        p = pathlib.Path(path)
        return str(p.with_name(p.stem + suffix + p.suffix))

    for suffix, table in tables.items():
        out = named(args.out, suffix)
        write_csv(table, out)
        n = len(table["frame"])
        print(f"wrote {out}: {n} frames, a face in {int(table['face_found'].sum())} "
              f"({100 * table['face_found'].mean():.1f}%), tasks {', '.join(predictor.tasks)}",
              file=sys.stderr)
        if args.plot:
            plot(table, named(args.plot, suffix), title=pathlib.Path(args.video).name + suffix)
            print(f"wrote {named(args.plot, suffix)}", file=sys.stderr)
        if args.overlay:
            write_overlay(source, table, named(args.overlay, suffix))
            print(f"wrote {named(args.overlay, suffix)}", file=sys.stderr)
    if args.timings:
        print(format_timings(predictor.timings), file=sys.stderr)
    return 0

