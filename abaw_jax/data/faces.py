"""Faces in the wild for prediction: detector front-ends, tracks over frames, aligned crops.

1. Detect. :class:`BlazeFaceDetector` runs MediaPipe's BlazeFace
   (:mod:`abaw_jax.models.blazeface`, the full-range weights shipped with the package unless a
   file is given) on batches of frames, jitted on the default device: boxes, scores and six
   keypoints per face. :class:`HaarDetector` wraps OpenCV's Haar cascade (:class:`abaw_jax.data.video.FaceDetector`): boxes and scores, no
   keypoints (NaN). Both return one :class:`Faces` per frame.
2. Link. :func:`link_tracks` joins detections of consecutive frames into tracks: a detection
   continues a track seen within ``max_gap`` frames when their boxes overlap (IoU > 0.3) or
   their keypoints are close (mean distance under a quarter of the face size, which survives
   fast motion that breaks the overlap); pairs are taken greedily, best affinity first.
3. Choose. :func:`choose` picks what to follow: ``"subject"`` the track that dominates the
   clip, by the sum over its frames of the face side relative to the frame (presence and size
   over time), so a passer-by that is briefly larger does not win; ``"largest"`` the largest
   face of each frame, whoever it is (the old behaviour); ``"all"`` every track of at least
   ``min_frames`` frames. :func:`follow` turns the choice into one value per frame: a gap of
   up to ``max_gap`` frames between two detections of the track is bridged, its boxes and
   keypoints interpolated linearly between them (score 0, flagged in
   ``FollowedFace.interpolated``; :func:`faces_of_video` sets the limit in seconds,
   ``max_gap_s`` = 0.5 by default); a longer gap stays without a face. Box and keypoints are
   then smoothed with a Gaussian inside each run of frames with a face.
4. Align. :func:`align_transforms` fits, per frame, the similarity transform (rotation, uniform
   scale, translation; least squares) from the eyes, nose tip and mouth centre to
   :data:`TEMPLATE`, and :func:`align_crops` warps the frames with it into ``size x size``
   crops, black outside the frame. The template is the widely used 112 x 112 five-point
   face-recognition template (eyes (38.29, 51.70) and (73.53, 51.50), nose tip (56.03, 71.74),
   mouth corners (41.55, 92.37) and (70.73, 92.20); the mouth centre is their mean), zoomed out
   by ``zoom`` (0.75) about the crop centre so that the whole head shows with a margin, as in
   Aff-Wild2's ``cropped_aligned`` frames and the crops of the Haar path (box side x 1.4);
   frames without keypoints (Haar) fall back to :func:`abaw_jax.data.video.crop_faces`.

FaceMesh (``face_landmark.tflite``) refinement of the keypoints is not used: BlazeFace's eye,
nose and mouth points already fix the four degrees of freedom of a similarity transform.

``python -m abaw_jax.data.faces --video clip.mp4 --out cropped_aligned/clip`` writes the subject's aligned crops as ``00001.jpg`` ... (1-based
frame numbers, frames without a face skipped), the layout ``abaw_jax.extract`` reads: features
extracted from them are those ``abaw_jax.predict`` computes from the same video.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from abaw_jax.data import video as video_lib

DETECTORS = ("blazeface", "haar")
TRACK_MODES = ("subject", "largest", "all")
MODEL_ENV = "ABAW_FACE_MODEL"

# The 112 x 112 five-point template (module doc) reduced to the four points BlazeFace gives:
# right eye, left eye, nose tip, mouth centre (the mean of the two mouth corners).
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [(41.5493 + 70.7299) / 2, (92.3655 + 92.2041) / 2]], np.float64)
ALIGN_POINTS = (0, 1, 2, 3)   # indices into BlazeFace's keypoints used for the fit


class Faces(NamedTuple):
    """The faces of one frame: boxes ``float32 [n, 4]`` (x, y, w, h in pixels), scores ``[n]``
    and keypoints ``[n, 6, 2]`` (x, y; NaN for a detector without keypoints)."""

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray

    @staticmethod
    def empty() -> "Faces":
        return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                     np.zeros((0, 6, 2), np.float32))


# ---------------------------------------------------------------------------------------------
# Detector front-ends.


def find_model(path: str | os.PathLike | None = None) -> pathlib.Path:
    """The BlazeFace weights to load: `path`, else ``$ABAW_FACE_MODEL``, else the full-range
    weights shipped with the package. Either may be a ``.tflite`` file (MediaPipe's
    ``face_detection_full_range.tflite`` or ``face_detection_short_range.tflite``), a weights
    file of this project's format, or the name of a shipped variant, ``full_range`` or
    ``short_range``."""
    from abaw_jax.models import blazeface
    given = str(path) if path else os.environ.get(MODEL_ENV, "")
    if not given:
        return blazeface.shipped_path(blazeface.DEFAULT_VARIANT)
    if given in blazeface.SHIPPED:
        return blazeface.shipped_path(given)
    return pathlib.Path(given).expanduser()


class BlazeFaceDetector:
    """BlazeFace on batches of frames (module doc); ``detect_batch(frames) -> [Faces]``.

    `letterbox`: "host" resizes each frame with OpenCV's area interpolation before sending a
    192 x 192 (or 128 x 128) image to the device; "device" sends whole frames and letterboxes in
    the jitted function; "auto" is "host" on a CPU backend (where cv2 resizes several times
    faster than XLA) and "device" on an accelerator. Batches are padded to `batch_size` so one
    shape is compiled per frame size.
    """

    name = "blazeface"

    def __init__(self, model: str | os.PathLike | None = None, *, max_faces: int = 16,
                 min_score: float | None = None, batch_size: int = 16, letterbox: str = "auto"):
        import jax
        from abaw_jax.models import blazeface
        self.path = find_model(model)
        self.model = blazeface.load(self.path)
        self.detector = blazeface.make_detector(self.model, max_faces=max_faces, min_score=min_score)
        self.min_score = self.detector.min_score
        self.batch_size = batch_size
        if letterbox not in ("auto", "host", "device"):
            raise ValueError(f"letterbox={letterbox!r}: choose auto, host or device")
        if letterbox == "auto":
            letterbox = "host" if jax.default_backend() == "cpu" else "device"
        self.letterbox = letterbox

    def _boxed(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        from abaw_jax.models import blazeface
        cv2 = video_lib.cv2_module()
        size = self.model.variant.input_size
        out = np.zeros((len(frames), size, size, 3), np.uint8)
        for i, frame in enumerate(frames):
            _, nh, nw, top, left = blazeface.letterbox_geometry(*frame.shape[:2], size)
            out[i, top:top + nh, left:left + nw] = cv2.resize(frame, (nw, nh),
                                                              interpolation=cv2.INTER_AREA)
        return out

    def detect_images(self, images: Sequence[np.ndarray]) -> list[Faces]:
        """Faces of RGB images of any sizes (one compiled function for all: host letterbox)."""
        def launch(i):
            part = list(images[i:i + self.batch_size])
            hw = [im.shape[:2] for im in part]
            hw += [hw[-1]] * (self.batch_size - len(part))
            return self.detector.from_letterboxed(self._padded(self._boxed(part)), hw), len(part)

        return self._pipelined(len(images), launch)

    def _padded(self, batch: np.ndarray) -> np.ndarray:
        """`batch` with zero images appended up to `batch_size` (one compiled shape)."""
        pad = self.batch_size - len(batch)
        if not pad:
            return batch
        return np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])

    def _pipelined(self, total: int, launch) -> list[Faces]:
        """Runs ``launch(start) -> (detections, n)`` over batches, preparing batch k + 1 on the
        host (its letterbox) while the device computes batch k: JAX dispatches asynchronously,
        and only :meth:`_unpack` waits for the results."""
        out: list[Faces] = []
        inflight = None
        for i in range(0, total, self.batch_size):
            launched = launch(i)
            if inflight is not None:
                out.extend(self._unpack(*inflight))
            inflight = launched
        if inflight is not None:
            out.extend(self._unpack(*inflight))
        return out

    @staticmethod
    def _unpack(det, n: int) -> list[Faces]:
        boxes, kps, scores, valid = (np.asarray(a) for a in det)
        out = []
        for j in range(n):
            v = valid[j]
            b = boxes[j, v]
            out.append(Faces(np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]],
                                      1).astype(np.float32),
                             scores[j, v].astype(np.float32), kps[j, v].astype(np.float32)))
        return out

    def detect_batch(self, frames: np.ndarray) -> list[Faces]:
        """Faces of each RGB frame of ``uint8 [n, H, W, 3]``, best score first."""
        frames = np.asarray(frames)

        def launch(i):
            part = frames[i:i + self.batch_size]
            if self.letterbox == "host":
                return (self.detector.from_letterboxed(self._padded(self._boxed(part)),
                                                       part.shape[1:3]), len(part))
            return self.detector(self._padded(part)), len(part)

        return self._pipelined(len(frames), launch)

    def detect(self, frame: np.ndarray) -> Faces:
        """Faces of one RGB frame."""
        return self.detect_batch(np.asarray(frame)[None])[0]


class HaarDetector:
    """OpenCV's Haar cascade (:class:`abaw_jax.data.video.FaceDetector`) as a front-end."""

    name = "haar"

    def __init__(self, cascade=None, **kwargs):
        self.haar = video_lib.FaceDetector(cascade, **kwargs)

    def detect(self, frame: np.ndarray) -> Faces:
        det = self.haar.detect(frame)
        return Faces(det[:, :4].copy(), det[:, 4].copy(),
                     np.full((len(det), 6, 2), np.nan, np.float32))

    def detect_batch(self, frames: np.ndarray) -> list[Faces]:
        return [self.detect(f) for f in frames]


def make_detector(kind: str = "blazeface", *, model: str | os.PathLike | None = None,
                  **kwargs) -> BlazeFaceDetector | HaarDetector:
    """A detector front-end by name (BlazeFace's weights: :func:`find_model`)."""
    if kind == "blazeface":
        return BlazeFaceDetector(model, **kwargs)
    if kind == "haar":
        return HaarDetector(**kwargs)
    raise ValueError(f"unknown detector {kind!r}; choose one of {', '.join(DETECTORS)}")


# ---------------------------------------------------------------------------------------------
# Tracks.


@dataclasses.dataclass
class Track:
    """One face followed over frames: its frames (sorted) and per-frame box, score, keypoints."""

    frames: list[int] = dataclasses.field(default_factory=list)
    boxes: list[np.ndarray] = dataclasses.field(default_factory=list)
    scores: list[float] = dataclasses.field(default_factory=list)
    keypoints: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, t: int, faces: Faces, i: int) -> None:
        self.frames.append(t)
        self.boxes.append(faces.boxes[i].astype(np.float64))
        self.scores.append(float(faces.scores[i]))
        self.keypoints.append(faces.keypoints[i].astype(np.float64))

    def dominance(self, short_side: float) -> float:
        """Sum over the track's frames of the face side relative to the frame's short side."""
        return float(sum(math.sqrt(max(b[2] * b[3], 0.0)) for b in self.boxes) / short_side)

    def mean_x(self) -> float:
        """Mean horizontal centre, for left-to-right naming."""
        return float(np.mean([b[0] + b[2] / 2 for b in self.boxes]))


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a [n, 4]`` and ``b [m, 4]`` (x, y, w, h) -> ``[n, m]``."""
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def link_tracks(faces: Sequence[Faces], *, max_gap: int = 15, min_iou: float = 0.3,
                max_keypoint_distance: float = 0.25) -> list[Track]:
    """Tracks from per-frame detections (module doc), in order of their first frame."""
    tracks: list[Track] = []
    for t, f in enumerate(faces):
        n = len(f.scores)
        if n == 0:
            continue
        live = [k for k, tr in enumerate(tracks) if t - tr.frames[-1] <= max_gap + 1]
        taken = set()
        if live:
            last_boxes = np.stack([tracks[k].boxes[-1] for k in live])
            iou = _iou_matrix(last_boxes, f.boxes.astype(np.float64))
            last_kp = np.stack([tracks[k].keypoints[-1] for k in live])            # [L, 6, 2]
            size = np.sqrt(np.maximum(last_boxes[:, 2] * last_boxes[:, 3], 1e-6))
            dist = np.linalg.norm(last_kp[:, None] - f.keypoints[None].astype(np.float64), axis=-1)
            dist = np.nanmean(np.where(np.isfinite(dist), dist, np.nan), axis=-1) \
                if np.isfinite(dist).any() else np.full(iou.shape, np.nan)
            rel = dist / size[:, None]
            close = np.where(np.isfinite(rel), rel < max_keypoint_distance, False)
            ok = (iou > min_iou) | close
            affinity = iou + np.where(np.isfinite(rel), np.clip(1 - rel, 0, 1), 0)
            pairs = sorted(((affinity[a, d], a, d) for a in range(len(live)) for d in range(n)
                            if ok[a, d]), reverse=True)
            used_tracks = set()
            for _, a, d in pairs:
                if a in used_tracks or d in taken:
                    continue
                tracks[live[a]].add(t, f, d)
                used_tracks.add(a)
                taken.add(d)
        for d in range(n):
            if d not in taken:
                tr = Track()
                tr.add(t, f, d)
                tracks.append(tr)
    return tracks


def choose(tracks: Sequence[Track], faces: Sequence[Faces], mode: str, frame_hw: tuple[int, int],
           *, min_frames: int = 1) -> list[Track]:
    """The tracks to follow (module doc): one for "subject" and "largest", any number for "all"
    (left to right). "largest" builds one pseudo-track of each frame's largest face."""
    if mode not in TRACK_MODES:
        raise ValueError(f"unknown track mode {mode!r}; choose one of {', '.join(TRACK_MODES)}")
    short = float(min(frame_hw))
    if mode == "largest":
        tr = Track()
        for t, f in enumerate(faces):
            if len(f.scores):
                tr.add(t, f, int(np.argmax(f.boxes[:, 2] * f.boxes[:, 3])))
        return [tr] if tr.frames else []
    if mode == "subject":
        if not tracks:
            return []
        return [_absorb(max(tracks, key=lambda tr: tr.dominance(short)), tracks, short)]
    kept = [tr for tr in tracks if len(tr.frames) >= min_frames]
    return sorted(kept, key=Track.mean_x)


def _absorb(subject: Track, tracks: Sequence[Track], short: float) -> Track:
    """The subject plus the tracks that continue it after a gap too long to bridge.

    A face that leaves for more than ``max_gap`` frames comes back as a new track. A track that
    shares no frame with the subject and starts (or ends) within 1.5 face sizes of where the
    subject was at the nearest frame is the subject again; candidates are taken by dominance.
    """
    merged = Track(list(subject.frames), list(subject.boxes), list(subject.scores),
                   list(subject.keypoints))
    for tr in sorted(tracks, key=lambda t: -t.dominance(short)):
        if tr is subject or set(tr.frames) & set(merged.frames):
            continue
        ends = [(tr.frames[0], tr.boxes[0]), (tr.frames[-1], tr.boxes[-1])]
        close = False
        for t, box in ends:
            j = int(np.argmin(np.abs(np.asarray(merged.frames) - t)))
            ref = merged.boxes[j]
            size = math.sqrt(max(ref[2] * ref[3], 1e-6))
            dist = math.hypot(box[0] + box[2] / 2 - ref[0] - ref[2] / 2,
                              box[1] + box[3] / 2 - ref[1] - ref[3] / 2)
            close |= dist < 1.5 * size
        if close:
            order = np.argsort(merged.frames + tr.frames, kind="stable")
            for name in ("frames", "boxes", "scores", "keypoints"):
                joined = getattr(merged, name) + getattr(tr, name)
                setattr(merged, name, [joined[i] for i in order])
    return merged


def track_names(n: int) -> list[str]:
    """File-name suffixes for `n` tracks, left to right: "" for one, Aff-Wild2's "_left" /
    "_right" for two, "_face1" ... otherwise."""
    if n == 1:
        return [""]
    if n == 2:
        return ["_left", "_right"]
    return [f"_face{i + 1}" for i in range(n)]


@dataclasses.dataclass
class FollowedFace:
    """One face per frame: like :class:`abaw_jax.data.video.FaceTrack`, plus keypoints.

    ``boxes [T, 4]`` are the detector's boxes (x, y, w, h), ``keypoints [T, 6, 2]`` (NaN without
    keypoints); both zero where `found` is False.
    """

    boxes: np.ndarray
    keypoints: np.ndarray
    found: np.ndarray
    detected: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.found)

    @property
    def interpolated(self) -> np.ndarray:
        """``bool [T]``: frames whose box was interpolated across a gap (found, not detected)."""
        return self.found & ~self.detected

    @property
    def has_keypoints(self) -> bool:
        return bool(np.isfinite(self.keypoints[self.found]).all()) and bool(self.found.any())


def follow(track: Track | None, num_frames: int, *, max_gap: int = 15,
           smooth: float = 2.0) -> FollowedFace:
    """One smoothed box and keypoint set per frame from a track (module doc)."""
    values = np.zeros((num_frames, 16), np.float64)      # x, y, w, h, 6 x (x, y)
    score = np.zeros(num_frames, np.float32)
    detected = np.zeros(num_frames, bool)
    if track is not None:
        for t, b, s, k in zip(track.frames, track.boxes, track.scores, track.keypoints):
            values[t, :4], values[t, 4:] = b, k.reshape(-1)
            score[t], detected[t] = s, True
    found = detected.copy()
    hits = np.flatnonzero(detected)
    for a, b in zip(hits[:-1], hits[1:]):
        if 1 < b - a <= max_gap + 1:
            frac = (np.arange(a + 1, b) - a)[:, None] / (b - a)
            values[a + 1:b] = values[a] + frac * (values[b] - values[a])
            found[a + 1:b] = True
    out = np.zeros_like(values)
    for start, stop in video_lib.true_runs(found):
        out[start:stop] = video_lib.gaussian_smooth(values[start:stop], smooth)
    return FollowedFace(boxes=out[:, :4].astype(np.float32),
                        keypoints=out[:, 4:].reshape(num_frames, 6, 2).astype(np.float32),
                        found=found, detected=detected, score=score)


# ---------------------------------------------------------------------------------------------
# Alignment.


def template(size: int = 112, zoom: float = 0.75) -> np.ndarray:
    """The four template points in a ``size x size`` crop (module doc)."""
    c = 56.0
    return ((TEMPLATE - c) * zoom + c) * (size / 112.0)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity transform ``[2, 3]`` taking points ``src [n, 2]`` to ``dst``.

    With complex numbers z = x + iy the transform is z -> a z + b; a and b minimise
    sum |a src + b - dst|^2, so a = sum(conj(s') d') / sum(|s'|^2) on centred points.
    """
    s = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    sc, dc = s - s.mean(), d - d.mean()
    a = (np.conj(sc) * dc).sum() / max((np.abs(sc) ** 2).sum(), 1e-12)
    b = d.mean() - a * s.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def align_transforms(keypoints: np.ndarray, *, size: int = 112, zoom: float = 0.75) -> np.ndarray:
    """Per-frame transforms ``[T, 2, 3]`` from frame pixels to the aligned crop."""
    dst = template(size, zoom)
    return np.stack([similarity(k[list(ALIGN_POINTS)].astype(np.float64), dst)
                     for k in np.asarray(keypoints)]) if len(keypoints) else np.zeros((0, 2, 3))


def crop_quads(transforms: np.ndarray, size: int = 112) -> np.ndarray:
    """The corners ``[T, 4, 2]`` (frame pixels) of each aligned crop: its box in the frame."""
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
    out = []
    for m in np.asarray(transforms, np.float64):
        a = m[:, :2]
        out.append((corners - m[:, 2]) @ np.linalg.inv(a).T)
    return np.asarray(out).reshape(-1, 4, 2)


def align_crops(frames: np.ndarray, transforms: np.ndarray, size: int = 112) -> np.ndarray:
    """Aligned crops ``uint8 [n, size, size, 3]``: each frame warped by its transform."""
    cv2 = video_lib.cv2_module()
    out = np.zeros((len(frames), size, size, 3), np.uint8)
    for i, (frame, m) in enumerate(zip(frames, transforms)):
        out[i] = cv2.warpAffine(frame, np.asarray(m, np.float64), (size, size),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(0, 0, 0))
    return out


def face_crops(frames: np.ndarray, face: FollowedFace, rows: np.ndarray, *, size: int = 112,
               zoom: float = 0.75, margin: float = 0.4) -> np.ndarray:
    """The crops of frames ``frames[i]`` = video frame ``rows[i]``: aligned when the face has
    keypoints, else the square box crop of :func:`abaw_jax.data.video.crop_faces`."""
    rows = np.asarray(rows)
    if face.has_keypoints:
        return align_crops(frames, align_transforms(face.keypoints[rows], size=size, zoom=zoom), size)
    return video_lib.crop_faces(frames, face.boxes[rows], size=size, margin=margin)


def crop_boxes(face: FollowedFace, *, size: int = 112, zoom: float = 0.75,
               margin: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the crop's square as (x, y, w, h) (centre and side of the crop region) and
    its roll in degrees (0 for box crops); zeros where no face was found."""
    t = len(face)
    boxes = np.zeros((t, 4), np.float32)
    roll = np.zeros(t, np.float32)
    rows = np.flatnonzero(face.found)
    if len(rows) == 0:
        return boxes, roll
    if face.has_keypoints:
        m = align_transforms(face.keypoints[rows], size=size, zoom=zoom)
        quads = crop_quads(m, size)
        centre = quads.mean(1)
        side = size / np.hypot(m[:, 0, 0], m[:, 1, 0])
        boxes[rows] = np.stack([centre[:, 0] - side / 2, centre[:, 1] - side / 2, side, side], 1)
        # The transform rotates by atan2(m10, m00); the crop's x axis lies at minus that in
        # the frame: the head's roll (positive: the face's eye line turns clockwise on screen).
        roll[rows] = -np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))
    else:
        b = face.boxes[rows].astype(np.float64)
        side = np.maximum(b[:, 2], b[:, 3]) * (1 + margin)
        cx, cy = b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
        boxes[rows] = np.stack([cx - side / 2, cy - side / 2, side, side], 1)
    return boxes, roll


# ---------------------------------------------------------------------------------------------
# Whole videos.


def detect_video(source: video_lib.FrameSource, detector, chunk_size: int = 64) -> list[Faces]:
    """Every frame's faces, decoding the source once."""
    faces: list[Faces] = []
    for chunk in source.chunks(chunk_size):
        faces.extend(detector.detect_batch(chunk))
    return faces


def faces_of_video(faces: Sequence[Faces], frame_hw: tuple[int, int], fps: float, *,
                   mode: str = "subject", max_gap_s: float = 0.5, smooth_s: float = 0.07,
                   min_track_s: float = 0.5) -> list[FollowedFace]:
    """Per-frame faces to followed faces: link, choose (`mode`), follow (module doc)."""
    max_gap = int(round(max_gap_s * fps))
    tracks = link_tracks(faces, max_gap=max_gap)
    chosen = choose(tracks, faces, mode, frame_hw, min_frames=max(1, int(round(min_track_s * fps))))
    if not chosen:
        return [follow(None, len(faces), max_gap=max_gap, smooth=smooth_s * fps)]
    return [follow(tr, len(faces), max_gap=max_gap, smooth=smooth_s * fps) for tr in chosen]


def write_aligned(video, out: str | os.PathLike, *, detector=None, mode: str = "subject",
                  fps: float | None = None, size: int = 112, quality: int = 95,
                  chunk_size: int = 64) -> dict[str, int]:
    """Writes a video's aligned face crops as ``<out><suffix>/00001.jpg`` ... (module doc).

    Frames without a face get no image, as in ``cropped_aligned``. Returns {folder: images}.
    """
    cv2 = video_lib.cv2_module()
    source = video_lib.open_source(video, fps)
    detector = detector or BlazeFaceDetector()
    faces = detect_video(source, detector, chunk_size)
    info = source.info
    followed = faces_of_video(faces, (info.height, info.width), info.fps, mode=mode)
    names = track_names(len(followed)) if mode == "all" else [""]
    counts = {}
    for face, suffix in zip(followed, names):
        folder = pathlib.Path(str(out) + suffix)
        folder.mkdir(parents=True, exist_ok=True)
        counts[str(folder)] = 0
    seen = 0
    for chunk in source.chunks(chunk_size):
        for face, suffix in zip(followed, names):
            rows = np.flatnonzero(face.found[seen:seen + len(chunk)])
            crops = face_crops(chunk[rows], face, seen + rows, size=size)
            folder = pathlib.Path(str(out) + suffix)
            for r, crop in zip(rows, crops):
                cv2.imwrite(str(folder / f"{seen + r + 1:05d}.jpg"),
                            cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
                counts[str(folder)] += 1
        seen += len(chunk)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m abaw_jax.data.faces``: aligned crops of a video for abaw_jax.extract."""
    parser = argparse.ArgumentParser(prog="python -m abaw_jax.data.faces",
                                     description="Aligned 112x112 face crops of a video, in the "
                                     "cropped_aligned layout (00001.jpg, ...).")
    parser.add_argument("--video", required=True, help="video file or folder of frame images")
    parser.add_argument("--out", required=True, help="output folder (one per track with --track all)")
    parser.add_argument("--face-model", help="BlazeFace weights: full_range or short_range (shipped), "
                        "or a .tflite file (default: $ABAW_FACE_MODEL, else full_range)")
    parser.add_argument("--detector", default="blazeface", choices=DETECTORS)
    parser.add_argument("--track", default="subject", choices=TRACK_MODES)
    parser.add_argument("--fps", type=float, help="frame rate of a frame folder")
    args = parser.parse_args(argv)
    try:
        detector = make_detector(args.detector, model=args.face_model)
        counts = write_aligned(args.video, args.out, detector=detector, mode=args.track, fps=args.fps)
    except (video_lib.VideoError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for folder, n in counts.items():
        print(f"wrote {n} crops to {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
