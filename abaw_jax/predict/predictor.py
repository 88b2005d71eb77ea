"""The prediction core: `Predictor` turns a face video into per-frame predictions.

Pass 1 decodes the video in chunks and detects faces in batches (`abaw_jax.data.faces`), then
links them into tracks and follows the chosen face(s); pass 2 decodes again, cuts the aligned
crops of the frames with a face and encodes them with the image encoder; the temporal models
(`abaw_jax.predict.temporal`) then run over the whole clip, and the outputs fill one table per
followed face (`abaw_jax.predict.table`). Wall time per stage is kept in `timings`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from abaw_jax import ensemble, runs
from abaw_jax.data import affwild2
from abaw_jax.data import faces as faces_lib
from abaw_jax.data import mtl as mtl_lib
from abaw_jax.data import video as video_lib
from abaw_jax.models import encoders
from abaw_jax.predict.table import PredictError, build_table
from abaw_jax.predict.temporal import Compiled, bucket, load_run, run_temporal

STAGES = ("decode", "detect", "crop", "encoder", "temporal")


def load_encoder(spec: str, **kwargs) -> encoders.Encoder:
    """`encoders.load_encoder`, with its errors raised as PredictError naming the spec."""
    try:
        return encoders.load_encoder(spec, **kwargs)
    except (TypeError, ValueError) as e:   # encoders.EncoderError is a ValueError
        raise PredictError(f"encoder {spec!r}: {e}") from None


class Clock:
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
        default BlazeFace with the weights of `faces.find_model` (those shipped with the
        package unless $ABAW_FACE_MODEL names others). `track`: "subject", "largest" or "all";
        `max_gap_s`: the longest gap inside a track that is bridged, in seconds (0: none; see
        `abaw_jax.predict`).
        """
        if track not in faces_lib.TRACK_MODES:
            raise PredictError(f"track={track!r}: choose one of {', '.join(faces_lib.TRACK_MODES)}")
        if not max_gap_s >= 0:
            raise PredictError(f"max gap {max_gap_s!r} s: give a number of seconds >= 0")
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
        if batch_size < 1:
            raise PredictError(f"batch size {batch_size}: must be at least 1")
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
        self._encode = Compiled(self.encoder.fn, "encoder", self._compile_times)
        self._temporal = [Compiled(runs.make_predict(r.model), "temporal", self._compile_times)
                          for r in self.runs]

    def _resolve_encoder(self, spec: str | None) -> encoders.Encoder:
        if spec:
            return load_encoder(spec)
        found = {r.workdir: encoders.store_encoder(r.store.meta) if r.store is not None else None
                 for r in self.runs}
        named = {json.dumps(f, sort_keys=True) for f in found.values() if f is not None}
        if None in found.values() or len(named) != 1:
            said = "; ".join(
                f"{r.workdir}: " + (f"store {r.store_path} names extractor {r.extractor!r}"
                                    if r.store is not None
                                    else f"no training feature store ({r.store_error})")
                for r in self.runs)
            why = ("the runs were trained on features of different encoders"
                   if len(named) > 1 else "cannot tell which image encoder made the training features")
            raise PredictError(f"{why} ({said}); pass --encoder (a weights path, an encoder "
                               f"directory or a spec such as vit:B/16)")
        spec, kwargs = json.loads(named.pop())
        return load_encoder(spec, **kwargs)

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
        clock = Clock()

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
        video_lib.warn_if_short(source.info, num_frames)   # a cut file decodes fewer frames
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
            tables[name] = build_table(
                num_frames, fps, face, {task: np.mean(v, axis=0) for task, v in by_task.items()},
                crop_size=self.crop_size, zoom=self.zoom, margin=self.margin)
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
            bs = bucket(len(part), self.batch_size)
            padded = np.zeros((bs, *part.shape[1:]), np.uint8)
            padded[:len(part)] = part
            out[i:i + len(part)] = np.asarray(
                self._encode(self.encoder.variables, padded), np.float32)[:len(part)]
        return out
