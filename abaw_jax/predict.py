"""From a face video to per-frame valence-arousal, expression and action units, with plots.

  python -m abaw_jax.predict --video clip.mp4 --workdir runs/va --workdir runs/expr \
      --out clip.csv --plot clip.png --overlay clip_overlay.mp4 --timings

`--video` is a video file (anything OpenCV's FFmpeg backend decodes) or a folder of frame images
(natural name order, `--fps`, default 30). Each `--workdir` is a training run (its `config.json`
and best checkpoint); its task (VA, EXPR or AU) fills its columns, so one run per task fills the
whole table, and so does one run of the multi-task challenge (MTL; a single-feature-set model,
`configs/mtl.py:model=transformer` or `model=tcn`). Several runs of one task are averaged (EXPR and AU in probability space).

Pipeline (`abaw_jax.data.faces` and `abaw_jax.data.video` have the details): the video is decoded
twice, in chunks, so memory holds a chunk of frames plus the per-frame features, whatever the
length. Pass one detects faces in batches of frames with MediaPipe's BlazeFace in Flax, jitted on
the default device (`--detector blazeface`, the default; `--face-model` is the path of
`face_detection_full_range.tflite` or `face_detection_short_range.tflite`, else
$ABAW_FACE_MODEL), or with OpenCV's Haar cascade (`--detector haar`), links the detections into
tracks over frames and follows one (`--track subject`, the default: the track that dominates the
clip by presence and size; `largest`: the largest face of each frame; `all`: every track, one
CSV each, suffixed `_left` / `_right` like Aff-Wild2 when there are two); short gaps are filled
and boxes and keypoints smoothed. Pass two cuts 112x112 crops: aligned on the eyes, nose and
mouth by a similarity transform, like Aff-Wild2's `cropped_aligned` (square box crops for Haar,
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

Frames without a face (none detected, and not inside a short gap between detections) are kept:
`face_found` is 0, the box is empty, their feature is zeros and the temporal model runs with
`present=False` for them, exactly as in training, so their predictions come from the faces around
them in the window. A clip with no face at all is predicted from the model alone (a warning says
so): the values are then the model's prior, not information about the clip.

CSV columns, one row per decoded video frame:

  frame          1-based frame number
  timestamp_ms   (frame - 1) * 1000 / fps
  face_found     1 when the frame has a face box (detected, or filled in a short gap), else 0
  face_score     detector score in [0, 1); 0 where the box was filled or no face was found
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

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax import checkpoints, ensemble, files, models, runs, sharding
from abaw_jax.data import affwild2, pipeline
from abaw_jax.data import faces as faces_lib
from abaw_jax.data import video as video_lib
from abaw_jax.data import mtl as mtl_lib
from abaw_jax.models import encoders

EXPR_COLUMNS = tuple(f"prob_{c}" for c in affwild2.EXPR_CLASSES)
AU_COLUMNS = affwild2.AU_NAMES
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion",
                  "left_ear_tragion")
KEYPOINT_COLUMNS = tuple(f"kp_{n}_{a}" for n in KEYPOINT_NAMES for a in "xy")
COLUMNS = ("frame", "timestamp_ms", "face_found", "face_score", "x", "y", "w", "h", "roll",
           *KEYPOINT_COLUMNS, "valence", "arousal", "expression", *EXPR_COLUMNS, *AU_COLUMNS)
TASK_COLUMNS = {"VA": ("valence", "arousal"), "EXPR": ("expression", *EXPR_COLUMNS),
                "AU": AU_COLUMNS}
STAGES = ("decode", "detect", "crop", "encoder", "temporal")


class PredictError(ValueError):
    """A workdir, encoder or input that cannot be used for prediction; the message names it."""


def _load_encoder(spec: str, **kwargs) -> encoders.Encoder:
    """`encoders.load_encoder`, with its errors raised as PredictError naming the spec."""
    try:
        return encoders.load_encoder(spec, **kwargs)
    except (TypeError, ValueError) as e:   # encoders.EncoderError is a ValueError
        raise PredictError(f"encoder {spec!r}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Trained temporal models.


@dataclasses.dataclass
class Run:
    """One training workdir, restored: its task, model, parameters and input description."""

    workdir: pathlib.Path
    config: Any
    task: str
    step: int
    model: Any
    params: Any
    feature_dim: int
    store_dtype: np.dtype | None   # the training features' dtype on disk, when known
    extractor: str                 # the training store's extractor, "" when unknown
    store_path: pathlib.Path | None

    @property
    def seq_len(self) -> int:
        """Window length the model was trained with."""
        return int(self.config.data.seq_len)

    @property
    def stride(self) -> int:
        """Step between evaluation windows (the run's eval_stride, else seq_len)."""
        return int(self.config.data.eval_stride or self.config.data.seq_len)


def _store_path(config) -> pathlib.Path | None:
    """Where the run's training features were (runs.open_features' rule), if it can be told."""
    if config.data.features:
        return pathlib.Path(config.data.features).expanduser()
    if config.data.root:
        return pathlib.Path(config.data.root).expanduser() / "features" / config.data.get("feature_set", "vit")
    return runs.demo_root(config, build=False) / "features" / config.data.get("feature_set", "vit")


def _read_store_meta(path: pathlib.Path | None) -> dict:
    if path is None or not (path / "meta.json").is_file():
        return {}
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _checkpoint_dir(workdir: pathlib.Path, which: str) -> pathlib.Path:
    """The saved train state of checkpoint `which` ("best", "latest" or a step) of a workdir."""
    base = workdir / ("best" if which == "best" else "checkpoints")
    steps = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {base}: train first (python -m abaw_jax.train)")
    step = steps[-1] if which in ("best", "latest") else int(which)
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint at step {step} in {base}; have {steps}")
    return base / str(step) / "state"


def _input_dim(model, seq_len: int, saved: Mapping) -> int:
    """The model's input feature size, read off the saved parameter shapes.

    The parameters whose shapes change with the input size are found by building the model at
    two sizes; their saved shapes then give the size the run was trained with.
    """
    def shapes(dim):
        x = jnp.zeros((1, seq_len, dim), jnp.float32)
        m = jnp.ones((1, seq_len), bool)
        tree = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, m, m,
                                                 train=False)["params"])
        return {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(tree)}

    a, b = shapes(3), shapes(5)
    flat = {jax.tree_util.keystr(p): tuple(v.shape)
            for p, v in jax.tree_util.tree_leaves_with_path(saved)}
    for key, shape in a.items():
        if shape != b[key] and key in flat:
            axis = next(i for i, (u, v) in enumerate(zip(shape, b[key])) if u != v)
            return int(flat[key][axis])
    raise PredictError("cannot tell the model's input size from its checkpoint")


def load_run(workdir: str | os.PathLike, checkpoint: str = "best") -> Run:
    """Restores a training workdir's temporal model (one device) for prediction."""
    import orbax.checkpoint as ocp
    workdir = pathlib.Path(workdir)
    config = runs.load_run_config(workdir)
    if config.model.name == "fusion":
        raise PredictError(
            f"{workdir}: model 'fusion' reads several feature sets "
            f"({', '.join(config.model.feature_sets)}); predict computes one set from the video, "
            f"so it runs single-set models (transformer, tcn)")
    task = config.task
    mesh = sharding.make_mesh(1)
    dtype = sharding.compute_dtype(config.compute_dtype, mesh)
    from abaw_jax.models import build_model
    model = build_model(config.model, affwild2.NUM_OUTPUTS[task], dtype)
    state_dir = _checkpoint_dir(workdir.absolute(), checkpoint)
    saved = ocp.StandardCheckpointer().metadata(state_dir)
    saved = getattr(saved, "item_metadata", saved)
    dim = _input_dim(model, config.data.seq_len, saved["params"])
    setup = runs.setup_model(config, dim, mesh)
    step, state = checkpoints.restore_params(workdir, setup.abstract_state, checkpoint)
    store = _store_path(config)
    meta = _read_store_meta(store)
    store_dtype = None
    if meta.get("dtype") in ("float16", "bfloat16", "float32"):
        from abaw_jax.data.features import DTYPES
        store_dtype = DTYPES[meta["dtype"]]
    if meta and meta.get("dim") != dim:
        meta, store_dtype = {}, None   # not the store this model was trained on
    return Run(workdir=workdir, config=config, task=task, step=int(step), model=setup.model,
               params=models.model_variables(state), feature_dim=dim, store_dtype=store_dtype,
               extractor=str(meta.get("extractor", "")), store_path=store if meta else None)


# ---------------------------------------------------------------------------------------------
# Running the temporal models.


def _round_to_store(features: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """Features as training read them: stored in the store's dtype, read back as float32."""
    if dtype is None or dtype == np.float32:
        return features
    with np.errstate(over="ignore"):
        return features.astype(dtype).astype(np.float32)


def _bucket(n: int, cap: int) -> int:
    """Batch sizes are powers of two up to `cap`, so few shapes are compiled."""
    return min(cap, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


class _Compiled:
    """A jitted function compiled ahead of time per input shape; compile seconds go to
    `compile_times[name]`, so that stage timings can leave them out."""

    def __init__(self, fn, name: str, compile_times: dict):
        self.fn = sharding.jit(fn, None)   # one device: the default backend's
        self.name = name
        self.cache: dict = {}
        self.compile_times = compile_times

    def __call__(self, params, *args):
        key = tuple((a.shape, a.dtype) for a in jax.tree.leaves(args))
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = self.fn.lower(params, *args).compile()
            self.compile_times[self.name] = (self.compile_times.get(self.name, 0.0)
                                             + time.perf_counter() - t0)
        return self.cache[key](params, *args)


def run_temporal(run: Run, features: np.ndarray, present: np.ndarray, *, batch_size: int = 32,
                 compiled: _Compiled | None = None) -> np.ndarray:
    """Raw per-frame outputs ``[T, C]`` of one run: sliding windows, overlaps averaged (in
    probability space, as `evaluate` and ensembles do)."""
    t = len(present)
    seq_len = run.seq_len
    starts = pipeline.window_starts(t, seq_len, run.stride,
                                    run.config.data.get("eval_last", "aligned") == "truncated")
    bs = _bucket(len(starts), batch_size)
    compiled = compiled or _Compiled(runs.make_predict(run.model), "temporal", {})
    assembler = pipeline.Assembler([t], affwild2.NUM_OUTPUTS[run.task], task=run.task)
    feats = _round_to_store(features, run.store_dtype)
    for i in range(0, len(starts), bs):
        chunk = starts[i:i + bs]
        x = np.zeros((bs, seq_len, feats.shape[1]), np.float32)
        p = np.zeros((bs, seq_len), bool)
        m = np.zeros((bs, seq_len), bool)
        for row, s in enumerate(chunk):
            n = min(seq_len, t - s)
            x[row, :n], p[row, :n], m[row, :n] = feats[s:s + n], present[s:s + n], True
        batch = {"features": x, "present": p, "frame_mask": m}
        out = np.asarray(compiled(run.params, batch), np.float32)
        k = len(chunk)
        assembler.add(out[:k], np.zeros(k, np.int64), chunk, m[:k])
    return assembler.result()[0]


# ---------------------------------------------------------------------------------------------
# The predictor.


class _Clock:
    """Accumulates wall time per stage."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since
        return now


class Predictor:
    """Per-frame VA / expression / AU predictions for face videos, from trained workdirs.

    >>> p = Predictor(["runs/va", "runs/expr"], encoder="vit:B/16")
    >>> table = p.predict_video("clip.mp4")        # {column: array [T]}, see COLUMNS
    >>> table = p.predict_frames(frames, fps=30)   # frames: uint8 [T, H, W, 3] RGB
    """

    def __init__(self, workdirs: str | os.PathLike | Sequence[str | os.PathLike],
                 encoder: str | encoders.Encoder | None = None, *, checkpoint: str = "best",
                 batch_size: int = 32, detector: Any = None, track: str = "subject",
                 crop_size: int = 112, margin: float = 0.4, max_gap_s: float = 0.5,
                 smooth_s: float = 0.07, chunk_size: int = 64, zoom: float = 0.75):
        """Restores every workdir and resolves the encoder (module doc); raises PredictError.

        `detector`: a front-end of `abaw_jax.data.faces` (or a Haar `video.FaceDetector`);
        default BlazeFace with the model file of `faces.find_model`. `track`: "subject",
        "largest" or "all" (module doc).
        """
        if track not in faces_lib.TRACK_MODES:
            raise PredictError(f"track={track!r}: choose one of {', '.join(faces_lib.TRACK_MODES)}")
        if isinstance(workdirs, (str, os.PathLike)):
            workdirs = [workdirs]
        if not workdirs:
            raise PredictError("give at least one training workdir")
        self.runs = [load_run(w, checkpoint) for w in workdirs]
        # A multi-task run fills the columns of all three tasks.
        self.tasks = tuple(t for t in affwild2.TASKS
                           if any(r.task in (t, "MTL") for r in self.runs))
        self.encoder = (encoder if isinstance(encoder, encoders.Encoder)
                        else self._resolve_encoder(encoder))
        for run in self.runs:
            if run.feature_dim != self.encoder.dim:
                raise PredictError(
                    f"{run.workdir}: the model takes {run.feature_dim}-d features but encoder "
                    f"{self.encoder.spec!r} gives {self.encoder.dim}-d; use the encoder the "
                    f"model was trained on (--encoder)")
        if isinstance(detector, video_lib.FaceDetector):
            wrapped = faces_lib.HaarDetector.__new__(faces_lib.HaarDetector)
            wrapped.haar = detector
            detector = wrapped
        self.detector = detector   # None: BlazeFace, loaded at the first video (faces.find_model)
        self.track = track
        self.zoom = zoom
        self.last_faces: list[faces_lib.FollowedFace] = []
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.margin = margin
        self.max_gap_s = max_gap_s
        self.smooth_s = smooth_s
        self.chunk_size = chunk_size
        self.timings: dict[str, float] = {}
        self.last_features: np.ndarray | None = None
        self.last_present: np.ndarray | None = None
        self._compile_times: dict[str, float] = {}
        self._encode = _Compiled(self.encoder.fn, "encoder", self._compile_times)
        self._temporal = [_Compiled(runs.make_predict(r.model), "temporal", self._compile_times)
                          for r in self.runs]

    def _resolve_encoder(self, spec: str | None) -> encoders.Encoder:
        if spec:
            return _load_encoder(spec)
        found = {r.workdir: encoders.store_encoder(_read_store_meta(r.store_path)) for r in self.runs}
        named = {json.dumps(f, sort_keys=True) for f in found.values() if f is not None}
        if None in found.values() or len(named) != 1:
            said = "; ".join(
                f"{r.workdir}: " + (f"store {r.store_path} names extractor {r.extractor!r}"
                                    if r.store_path else "its training feature store was not found")
                for r in self.runs)
            why = ("the runs were trained on features of different encoders"
                   if len(named) > 1 else "cannot tell which image encoder made the training features")
            raise PredictError(f"{why} ({said}); pass --encoder (a weights path, an encoder "
                               f"directory or a spec such as vit:B/16)")
        spec, kwargs = json.loads(named.pop())
        return _load_encoder(spec, **kwargs)

    def predict_frames(self, frames: np.ndarray, fps: float = 30.0) -> dict[str, np.ndarray]:
        """Predicts frames ``uint8 [T, H, W, 3]`` (RGB) of one clip; returns the table."""
        return self.predict_video(video_lib.ArraySource(frames, fps))

    def predict_video(self, video: str | os.PathLike | video_lib.FrameSource,
                      fps: float | None = None) -> dict[str, np.ndarray]:
        """Predicts every frame of a video file or frame folder; returns {column: array [T]}.

        The followed face is the subject (or the largest face, per `track`); with track "all"
        this is the leftmost track's table, and `predict_tracks` gives every one.
        Per-stage wall times of this call (seconds; "compile" for first-time jit compiles) are
        left in `self.timings`, and the inputs of the temporal models in `self.last_features`
        (float32 [T, dim], zeros without a face) and `self.last_present` (bool [T]).
        """
        return next(iter(self.predict_tracks(video, fps).values()))

    def predict_tracks(self, video: str | os.PathLike | video_lib.FrameSource,
                       fps: float | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Like `predict_video`, one table per followed face: {name suffix: table}.

        The suffix is "" for a single face, "_left" / "_right" for two, "_face<k>" (left to
        right) for more; `self.last_faces` keeps the followed faces.
        """
        source = video_lib.open_source(video, fps)
        fps = source.info.fps
        self._compile_times.clear()
        clock = _Clock()

        if self.detector is None:
            self.detector = faces_lib.BlazeFaceDetector()
        # Pass 1: detect (batched), then link tracks and follow the chosen ones.
        detections: list[faces_lib.Faces] = []
        t0 = time.perf_counter()
        compiled_before = self._detector_compile_seconds()
        for chunk in source.chunks(self.chunk_size):
            t0 = clock.add("decode", t0)
            detections.extend(self.detector.detect_batch(chunk))
            t0 = clock.add("detect", t0)
        # The detector's first-time jit compile is reported with the others, not as detection.
        self._compile_times["detect"] = self._detector_compile_seconds() - compiled_before
        num_frames = len(detections)
        followed = faces_lib.faces_of_video(
            detections, (source.info.height, source.info.width), fps, mode=self.track,
            max_gap_s=self.max_gap_s, smooth_s=self.smooth_s)
        names = faces_lib.track_names(len(followed)) if self.track == "all" else [""]
        t0 = clock.add("detect", t0)

        # Pass 2: crops of the frames with a face -> features; zeros elsewhere.
        features = [np.zeros((num_frames, self.encoder.dim), np.float32) for _ in followed]
        if any(f.found.any() for f in followed):
            seen = 0
            for chunk in source.chunks(self.chunk_size):
                t0 = clock.add("decode", t0)
                for face, feats in zip(followed, features):
                    rows = np.flatnonzero(face.found[seen:seen + len(chunk)])
                    crops = faces_lib.face_crops(chunk[rows], face, seen + rows, size=self.crop_size,
                                                 zoom=self.zoom, margin=self.margin)
                    t0 = clock.add("crop", t0)
                    feats[seen + rows] = self._encode_crops(crops)
                    t0 = clock.add("encoder", t0)
                seen += len(chunk)
            if seen != num_frames:
                raise video_lib.VideoError(
                    f"{source.info.path}: decoded {seen} frames on the second pass, "
                    f"{num_frames} on the first")
        else:
            warnings.warn(
                f"{source.info.path}: no face found in any of its {num_frames} frames; the "
                f"predictions come from the models alone and say nothing about this clip",
                RuntimeWarning, stacklevel=2)

        self.last_features, self.last_present = features[0], followed[0].found.copy()
        self.last_faces = followed

        # Temporal models, averaged per task, for each followed face.
        tables = {}
        for name, face, feats in zip(names, followed, features):
            by_task: dict[str, list[np.ndarray]] = {}
            for run, compiled in zip(self.runs, self._temporal):
                out = run_temporal(run, feats, face.found, batch_size=self.batch_size,
                                   compiled=compiled)
                probs = ensemble.to_probabilities(run.task, out)
                if run.task == "MTL":
                    for task, cols in mtl_lib.OUTPUT_COLUMNS.items():
                        by_task.setdefault(task, []).append(probs[:, cols])
                else:
                    by_task.setdefault(run.task, []).append(probs)
            t0 = clock.add("temporal", t0)
            tables[name] = self._table(num_frames, fps, face,
                                       {task: np.mean(v, axis=0) for task, v in by_task.items()})
        # Compiles happen inside the encoder and temporal stages; they are reported apart.
        self.timings = dict(clock.seconds, frames=num_frames,
                            compile=sum(self._compile_times.values()))
        for stage, seconds in self._compile_times.items():
            self.timings[stage] = self.timings.get(stage, 0.0) - seconds
        return tables

    def _detector_compile_seconds(self) -> float:
        inner = getattr(self.detector, "detector", None)
        return float(getattr(inner, "compile_seconds", 0.0))

    def _encode_crops(self, crops: np.ndarray) -> np.ndarray:
        out = np.zeros((len(crops), self.encoder.dim), np.float32)
        for i in range(0, len(crops), self.batch_size):
            part = crops[i:i + self.batch_size]
            bs = _bucket(len(part), self.batch_size)
            padded = np.zeros((bs, *part.shape[1:]), np.uint8)
            padded[:len(part)] = part
            out[i:i + len(part)] = np.asarray(
                self._encode(self.encoder.variables, padded), np.float32)[:len(part)]
        return out

    def _table(self, num_frames: int, fps: float, track: faces_lib.FollowedFace,
               probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        frame = np.arange(1, num_frames + 1)
        nan = np.full(num_frames, np.nan)
        table: dict[str, np.ndarray] = {
            "frame": frame,
            "timestamp_ms": (frame - 1) * 1000.0 / fps,
            "face_found": track.found.astype(np.int64),
            "face_score": track.score.astype(np.float64),
        }
        boxes, roll = faces_lib.crop_boxes(track, size=self.crop_size, zoom=self.zoom,
                                           margin=self.margin)
        for j, key in enumerate("xywh"):
            table[key] = np.where(track.found, boxes[:, j].astype(np.float64), np.nan)
        table["roll"] = np.where(track.found, roll.astype(np.float64), np.nan)
        for j, col in enumerate(KEYPOINT_COLUMNS):
            table[col] = np.where(track.found, track.keypoints[:, j // 2, j % 2].astype(np.float64),
                                  np.nan)
        for task in affwild2.TASKS:
            p = probs.get(task)
            if p is not None and not np.isfinite(p).all():
                bad = np.flatnonzero(~np.isfinite(p).all(axis=1))
                raise FloatingPointError(
                    f"{task} predictions are not finite at frames {(bad[:5] + 1).tolist()}")
            if task == "VA":
                va = np.clip(p, -1.0, 1.0) if p is not None else np.stack([nan, nan], 1)
                table["valence"], table["arousal"] = va[:, 0], va[:, 1]
            elif task == "EXPR":
                names = np.array(affwild2.EXPR_CLASSES)
                table["expression"] = (names[p.argmax(1)] if p is not None
                                       else np.full(num_frames, "", dtype=names.dtype))
                for j, col in enumerate(EXPR_COLUMNS):
                    table[col] = p[:, j] if p is not None else nan.copy()
            else:
                for j, col in enumerate(AU_COLUMNS):
                    table[col] = p[:, j] if p is not None else nan.copy()
        return {c: table[c] for c in COLUMNS}


# ---------------------------------------------------------------------------------------------
# Outputs: CSV, plot, overlay.


_FORMATS = {"timestamp_ms": "{:.3f}", "face_score": "{:.4f}", "x": "{:.1f}", "y": "{:.1f}",
            "w": "{:.1f}", "h": "{:.1f}", "roll": "{:.1f}",
            **{c: "{:.1f}" for c in KEYPOINT_COLUMNS}}


def write_csv(table: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes the table as CSV (module doc); NaN cells are written empty."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [table[c] for c in COLUMNS]
    with files.atomic_open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for i in range(len(columns[0])):
            row = []
            for name, col in zip(COLUMNS, columns):
                v = col[i]
                if isinstance(v, str | np.str_):
                    row.append(str(v))
                elif name in ("frame", "face_found"):
                    row.append(str(int(v)))
                elif not np.isfinite(v):
                    row.append("")
                else:
                    row.append(_FORMATS.get(name, "{:.4f}").format(float(v)))
            out.writerow(row)


def read_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a CSV written by `write_csv` back into a table (empty cells as NaN)."""
    path = pathlib.Path(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise PredictError(f"{path}: line 1: header is not the predict CSV header")
    table = {}
    for j, name in enumerate(COLUMNS):
        cells = []
        for lineno, r in enumerate(rows[1:], start=2):
            if len(r) != len(COLUMNS):
                raise PredictError(f"{path}: line {lineno}: {len(r)} columns, expected {len(COLUMNS)}")
            cells.append(r[j])
        if name == "expression":
            table[name] = np.array(cells)
        else:
            table[name] = np.array([float(c) if c else np.nan for c in cells])
    return table


def plot(table: Mapping[str, np.ndarray], path: str | os.PathLike, *, title: str = "") -> None:
    """PNG: valence / arousal over time, the expression timeline and an AU heatmap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = np.asarray(table["timestamp_ms"]) / 1000.0
    no_face = np.asarray(table["face_found"]) == 0
    panels = [name for name, cols in (("VA", ("valence",)), ("EXPR", EXPR_COLUMNS),
                                      ("AU", AU_COLUMNS))
              if np.isfinite(np.asarray(table[cols[0]], np.float64)).any()]
    heights = {"VA": 2.0, "EXPR": 2.2, "AU": 2.6}
    fig, axes = plt.subplots(len(panels) + 1, 1, sharex=True, squeeze=False,
                             figsize=(12, 0.6 + sum(heights[p] for p in panels)),
                             gridspec_kw={"height_ratios": [0.25] + [heights[p] for p in panels]})
    axes = axes[:, 0]
    end = seconds[-1] + (seconds[1] - seconds[0] if len(seconds) > 1 else 1 / 30)
    extent = (seconds[0], end)
    axes[0].imshow(no_face[None].astype(float), aspect="auto", cmap="Greys", vmin=0, vmax=1,
                   extent=(*extent, 0, 1), interpolation="nearest")
    axes[0].set_yticks([])
    axes[0].set_ylabel("no face", rotation=0, ha="right", va="center")
    for ax, panel in zip(axes[1:], panels):
        if panel == "VA":
            ax.plot(seconds, table["valence"], label="valence", lw=1.2)
            ax.plot(seconds, table["arousal"], label="arousal", lw=1.2)
            ax.axhline(0, color="0.6", lw=0.6)
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel("VA")
            ax.legend(loc="upper right", fontsize=8)
        elif panel == "EXPR":
            probs = np.stack([table[c] for c in EXPR_COLUMNS])
            ax.imshow(probs, aspect="auto", cmap="magma", vmin=0, vmax=1, origin="lower",
                      extent=(*extent, -0.5, len(EXPR_COLUMNS) - 0.5), interpolation="nearest")
            ax.plot(seconds, probs.argmax(0), color="cyan", lw=0.0, marker="|", ms=4)
            ax.set_yticks(range(len(affwild2.EXPR_CLASSES)), affwild2.EXPR_CLASSES, fontsize=7)
            ax.set_ylabel("expression")
        else:
            probs = np.stack([table[c] for c in AU_COLUMNS])
            im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower",
                           extent=(*extent, -0.5, len(AU_COLUMNS) - 0.5), interpolation="nearest")
            ax.set_yticks(range(len(AU_COLUMNS)), AU_COLUMNS, fontsize=7)
            ax.set_ylabel("AU probability")
            fig.colorbar(im, ax=ax, pad=0.01, fraction=0.02)
    axes[-1].set_xlabel("time (s)")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_overlay(video: str | os.PathLike | video_lib.FrameSource, table: Mapping[str, np.ndarray],
                  path: str | os.PathLike, *, fps: float | None = None,
                  chunk_size: int = 64) -> None:
    """An mp4 (mp4v) of the video with the face box and the current predictions drawn."""
    cv2 = video_lib.cv2_module()
    source = video_lib.open_source(video, fps)
    info = source.info
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), info.fps,
                             (info.width, info.height))
    if not writer.isOpened():
        raise video_lib.VideoError(f"{path}: OpenCV cannot write an mp4v video here")
    n = len(table["frame"])
    scale = max(0.4, min(info.width, info.height) / 600)
    i = 0
    try:
        for chunk in source.chunks(chunk_size):
            for frame in chunk:
                if i >= n:
                    break
                img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                if table["face_found"][i]:
                    _draw_face(cv2, img, table, i, scale)
                for k, line in enumerate(_overlay_lines(table, i)):
                    org = (8, int((k + 1) * 22 * scale) + 4)
                    cv2.putText(img, line, org, cv2.FONT_HERSHEY_SIMPLEX, 0.55 * scale,
                                (0, 0, 0), max(2, int(4 * scale)), cv2.LINE_AA)
                    cv2.putText(img, line, org, cv2.FONT_HERSHEY_SIMPLEX, 0.55 * scale,
                                (255, 255, 255), max(1, int(1.5 * scale)), cv2.LINE_AA)
                writer.write(img)
                i += 1
    finally:
        writer.release()


def _draw_face(cv2, img: np.ndarray, table: Mapping[str, np.ndarray], i: int, scale: float) -> None:
    """The crop's region (rotated by `roll`) and the keypoints: what the models saw."""
    colour = (0, 200, 0) if table["face_score"][i] > 0 else (0, 200, 255)
    x, y, w, h = (float(table[k][i]) for k in "xywh")
    roll = float(table["roll"][i]) if np.isfinite(table["roll"][i]) else 0.0
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    corners = half @ np.array([[c, s], [-s, c]]) + [x + w / 2, y + h / 2]
    cv2.polylines(img, [np.round(corners).astype(np.int32)], True, colour, max(1, int(2 * scale)),
                  cv2.LINE_AA)
    for j in range(len(KEYPOINT_NAMES)):
        px, py = table[KEYPOINT_COLUMNS[2 * j]][i], table[KEYPOINT_COLUMNS[2 * j + 1]][i]
        if np.isfinite(px) and np.isfinite(py):
            cv2.circle(img, (int(round(px)), int(round(py))), max(2, int(3 * scale)),
                       (255, 80, 0) if j < 4 else (0, 80, 255), -1, cv2.LINE_AA)


def _overlay_lines(table: Mapping[str, np.ndarray], i: int) -> list[str]:
    lines = [f"frame {int(table['frame'][i])}" + ("" if table["face_found"][i] else "  (no face)")]
    if np.isfinite(table["valence"][i]):
        lines.append(f"V {table['valence'][i]:+.2f}  A {table['arousal'][i]:+.2f}")
    if table["expression"][i]:
        j = affwild2.EXPR_CLASSES.index(str(table["expression"][i]))
        lines.append(f"{table['expression'][i]} {table[EXPR_COLUMNS[j]][i]:.2f}")
    if np.isfinite(table[AU_COLUMNS[0]][i]):
        on = [au for au in AU_COLUMNS if table[au][i] >= 0.5]
        lines.append("AU " + (" ".join(a[2:] for a in on) if on else "-"))
    return lines


# ---------------------------------------------------------------------------------------------
# Command line.


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
                        help="face detector: MediaPipe's BlazeFace (needs --face-model) or "
                        "OpenCV's Haar cascade")
    parser.add_argument("--face-model", help="BlazeFace .tflite file: face_detection_full_range "
                        f"or face_detection_short_range (default: ${faces_lib.MODEL_ENV})")
    parser.add_argument("--min-score", type=float, help="BlazeFace score threshold (default: "
                        "MediaPipe's, 0.6 full range, 0.5 short range)")
    parser.add_argument("--track", default="subject", choices=faces_lib.TRACK_MODES,
                        help="whose face: the clip's dominant track, the largest face of each "
                        "frame, or every track (one CSV each)")
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
                              batch_size=args.batch_size, detector=detector, track=args.track)
        tables = predictor.predict_tracks(source)
    except (PredictError, video_lib.VideoError, FileNotFoundError) as e:
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


if __name__ == "__main__":
    sys.exit(main())
