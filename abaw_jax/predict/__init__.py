"""From a face video to per-frame valence-arousal, expression and action units, with plots.

  python -m abaw_jax.predict --video clip.mp4 --workdir runs/va --workdir runs/expr \
      --out clip.csv --plot clip.png --overlay clip_overlay.mp4 --timings

`--video` is a video file (anything OpenCV's FFmpeg backend decodes) or a folder of frame images
(natural name order, `--fps`, default 30). Each `--workdir` is a training run (its `config.json`
and best checkpoint); its task (VA, EXPR or AU) fills its columns, so one run per task fills the
whole table, and so does one run of the multi-task challenge (MTL; a single-feature-set model,
`configs/mtl.py:model=transformer` or `model=tcn`). Several runs of one task are averaged (EXPR
and AU in probability space).

Pipeline (`abaw_jax.data.faces` and `abaw_jax.data.video` have the details): the video is decoded
twice, in chunks, so memory holds a chunk of frames plus the per-frame features, whatever the
length. Pass one detects faces in batches of frames with MediaPipe's BlazeFace in Flax, jitted on
the default device (`--detector blazeface`, the default, with the full-range weights shipped in
the package: no file or download needed; `--face-model short_range` takes the shipped
short-range weights, which are faster and suit faces within ~2 m, and `--face-model` also takes
the path of MediaPipe's `face_detection_full_range.tflite` or `face_detection_short_range.tflite`,
as does $ABAW_FACE_MODEL), or with OpenCV's Haar cascade (`--detector haar`), links the
detections into tracks over frames and follows one (`--track subject`, the default: the track
that dominates the clip by presence and size; `largest`: the largest face of each frame; `all`:
every track, one CSV each, suffixed `_left` / `_right` like Aff-Wild2 when there are two).

Gaps in a track are bridged: when the followed face is missed for up to `--max-gap` seconds
(default 0.5 s, 15 frames at 30 fps; motion blur, a turned head) between two frames where it
was detected, its box and keypoints are interpolated linearly between those two detections, the
crop is taken there as on any other frame, and the row says so (`face_interpolated` 1). A longer
gap stays empty (`face_found` 0), and so do frames before the first or after the last
detection; `--max-gap 0` turns bridging off. Boxes and keypoints are then smoothed over time
(a Gaussian of 0.07 s within each run of frames with a face).

Pass two cuts 112x112 crops: aligned on the eyes, nose and mouth by a similarity transform, like Aff-Wild2's `cropped_aligned` (square box crops for Haar,
which gives no keypoints), and turns them into features with the image encoder; the temporal
models then run on sliding windows over the whole clip (their training `seq_len` and
`eval_stride`, overlaps averaged), batched and jitted. `python -m abaw_jax.data.faces` writes the
same crops to a folder for `abaw_jax.extract`.

The encoder must be the one the temporal model was trained on. It is read from the `extractor`
of the run's training feature store (meta.json) when that names something `--encoder` accepts;
otherwise `--encoder` is required, and its feature size must equal the model's input size. Models
trained on the built-in demo dataset saw synthetic features, not images: run them with a
random-weight encoder of the right width (e.g. `--encoder vit:B/16` for the default 768-d demo,
or `vit:Ti/16,width=32,depth=2,num_heads=2,mlp_dim=64,image_size=32` for 32-d features). The
whole path then runs, but the predictions mean nothing.

Encoder specs are those of `abaw_jax.models.encoders.load_encoder`: a weights file or folder
(`abaw_jax.models.weights`), an encoder directory with `encoder.json` (MAE pretraining or
fine-tuning), or random weights `vit:<variant>[,field=value...]` / `resnet:<variant>[,...]`
(fields override the model's, e.g. `width`, `depth`, `image_size`, `pool`). From a store written
by `abaw_jax.extract`, the recorded spec, pool, image size and seed rebuild the same encoder.

Frames without a face (none detected, and not inside a bridged gap) are kept:
`face_found` is 0, the box is empty, their feature is zeros and the temporal model runs with
`present=False` for them, exactly as in training, so their predictions come from the faces around
them in the window. A clip with no face at all is predicted from the model alone (a warning says
so): the values are then the model's prior, not information about the clip.

CSV columns, one row per decoded video frame:

  frame          1-based frame number
  timestamp_ms   (frame - 1) * 1000 / fps
  face_found     1 when the frame has a face box (detected, or bridged), else 0
  face_interpolated  1 when the box was interpolated across a gap of up to `--max-gap`
                 seconds (the face was not detected in this frame), else 0
  face_score     detector score in [0, 1); 0 where the box was interpolated or no face was found
  x, y, w, h     the square region of the frame the face crop shows, in frame pixels, before
                 rotation by `roll` about its centre (empty without a face)
  roll           the crop's rotation in degrees (0 for Haar box crops)
  kp_<name>_x, kp_<name>_y   the 6 BlazeFace keypoints in frame pixels (right_eye, left_eye,
                 nose_tip, mouth_center, right_ear_tragion, left_ear_tragion; empty for Haar)
  valence, arousal                  in [-1, 1]
  expression     the most probable class name
  prob_Neutral ... prob_Other       the 8 expression probabilities
  AU1 ... AU26                      the 12 action-unit probabilities
Columns of a task without a workdir are empty. In the Python API (`Predictor`), the same
columns are numpy arrays; empty cells are NaN there (and "" for `expression`).
"""

from abaw_jax.predict.cli import format_timings, main
from abaw_jax.predict.overlay import write_overlay
from abaw_jax.predict.plot import plot
from abaw_jax.predict.predictor import STAGES, Predictor, load_encoder
from abaw_jax.predict.table import (AU_COLUMNS, COLUMNS, EXPR_COLUMNS, KEYPOINT_COLUMNS,
                                    KEYPOINT_NAMES, TASK_COLUMNS, PredictError, build_table,
                                    read_csv, write_csv)
from abaw_jax.predict.temporal import Compiled, Run, load_run, run_temporal

__all__ = ["AU_COLUMNS", "COLUMNS", "Compiled", "EXPR_COLUMNS", "KEYPOINT_COLUMNS",
           "KEYPOINT_NAMES", "PredictError", "Predictor", "Run", "STAGES", "TASK_COLUMNS",
           "build_table", "format_timings", "load_encoder", "load_run", "main", "plot",
           "read_csv", "run_temporal", "write_csv", "write_overlay"]
