"""Face videos in: streaming decode, face detection and tracking, and Aff-Wild2-like face crops.

The steps, as `abaw_jax.predict` runs them:

1. Decode. :func:`open_source` gives a :class:`FrameSource` for a video file (OpenCV
   ``VideoCapture``), a folder of frame images, or an in-memory ``uint8 [T, H, W, 3]`` array.
   Frames come out as RGB ``uint8`` chunks, so memory stays constant whatever the video length;
   a source can be read several times (every read decodes again).
2. Detect. :class:`FaceDetector` runs OpenCV's frontal-face Haar cascade (shipped in the ``cv2``
   package data) on a grey, histogram-equalised copy of each frame scaled down to at most
   ``detect_size`` pixels on its long side. Every detection gets a score in ``[0, 1)``:
   ``1 - exp(-w / 4)`` of the cascade's final-stage weight ``w`` (negative weights score 0), so
   a clear frontal face scores about 0.8 and above, and a marginal one below 0.4.
3. Track. :func:`track_faces` keeps one face per frame: the largest detection, except that while
   a track is running the largest of the detections overlapping the previous box (IoU > 0.3) wins,
   so a larger passer-by does not steal the track. Gaps of at most ``max_gap`` frames between two
   detections are filled by linear interpolation of the box (score 0: nothing was detected
   there); longer gaps, and frames before the first or after the last detection, have no face.
   Box centre and side are then smoothed with a Gaussian of ``smooth`` frames inside each run of
   frames with a face; runs never borrow from each other.
4. Crop. :func:`crop_faces` cuts a square around the box centre, ``1 + margin`` times the box
   side, padded with black where it leaves the frame, and resizes it to ``size`` (112, as
   Aff-Wild2's ``cropped_aligned``) with area interpolation. Haar boxes span brows to chin, so the
   default margin 0.4 shows the whole face with a little context, like the aligned crops.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import sys
from collections.abc import Iterator, Sequence

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


class VideoError(ValueError):
    """A video, frame folder or frame array that cannot be read; the message names it."""


def cv2_module():
    try:
        import cv2
    except ImportError:
        raise ImportError(
            "face videos need OpenCV 4.x: pip install 'abaw_jax[video]' "
            "(opencv-python-headless>=4.8,<5)") from None
    return cv2


# ---------------------------------------------------------------------------------------------
# Frame sources.


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a source says about itself before decoding; `num_frames` is -1 when unknown."""

    path: str
    fps: float
    width: int
    height: int
    num_frames: int


def warn_if_short(info: VideoInfo, decoded: int) -> str:
    """Warns on stderr (and returns the line) when fewer frames decoded than the container
    declares: a file cut short (an interrupted copy or download) still opens and decodes up to
    the cut, so the rows past it are silently absent otherwise. One frame less is common (the
    container's count is an estimate) and not reported."""
    if info.num_frames <= 0 or decoded >= info.num_frames - 1:
        return ""
    line = (f"Warning: {info.path}: decoded {decoded} of the {info.num_frames} frames its "
            f"container declares; the file may be cut short (the rows stop at frame {decoded})")
    print(line, file=sys.stderr, flush=True)
    return line


class FrameSource:
    """Frames of one video as RGB ``uint8 [n, H, W, 3]`` chunks; re-readable from the start."""

    info: VideoInfo

    def chunks(self, size: int = 64) -> Iterator[np.ndarray]:
        """Decodes the video from its first frame, `size` frames at a time (the last may be short)."""
        raise TypeError(f"{type(self).__name__} does not define chunks()")


class VideoFileSource(FrameSource):
    """A video file decoded by OpenCV (FFmpeg backend)."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None):
        cv2 = cv2_module()
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such video file")
        cap = cv2.VideoCapture(str(self.path))
        try:
            if not cap.isOpened():
                raise VideoError(f"{self.path}: OpenCV cannot open this file as a video")
            ok, first = cap.read()
            if not ok or first is None:
                raise VideoError(f"{self.path}: the video has no decodable frame")
            reported = cap.get(cv2.CAP_PROP_FPS)
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or -1)
        finally:
            cap.release()
        if fps is None:
            if not (math.isfinite(reported) and reported > 0):
                raise VideoError(f"{self.path}: the file states no frame rate; pass fps")
            fps = float(reported)
        self.info = VideoInfo(str(self.path), float(fps), first.shape[1], first.shape[0],
                              count if count > 0 else -1)

    def chunks(self, size: int = 64) -> Iterator[np.ndarray]:
        cv2 = cv2_module()
        cap = cv2.VideoCapture(str(self.path))
        try:
            buf: list[np.ndarray] = []
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                if frame.shape[:2] != (self.info.height, self.info.width):
                    raise VideoError(
                        f"{self.path}: frame {int(cap.get(cv2.CAP_PROP_POS_FRAMES))} is "
                        f"{frame.shape[1]}x{frame.shape[0]}, the first was "
                        f"{self.info.width}x{self.info.height}")
                buf.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                if len(buf) == size:
                    yield np.stack(buf)
                    buf = []
            if buf:
                yield np.stack(buf)
        finally:
            cap.release()


def _frame_sort_key(path: pathlib.Path):
    """Natural order: ``frame2.png`` before ``frame10.png``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


class FrameFolderSource(FrameSource):
    """A folder of frame images (any of IMAGE_SUFFIXES), in natural name order, at `fps`."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None):
        self.path = pathlib.Path(path)
        self.files = sorted((p for p in self.path.iterdir()
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                            key=_frame_sort_key)
        if not self.files:
            raise VideoError(f"{self.path}: folder holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
        first = self._read(self.files[0])
        # Folders carry no frame rate; Aff-Wild2's videos are mostly 30 fps.
        self.info = VideoInfo(str(self.path), float(fps or 30.0), first.shape[1], first.shape[0],
                              len(self.files))

    def _read(self, file: pathlib.Path) -> np.ndarray:
        cv2 = cv2_module()
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            raise VideoError(f"{file}: not a readable image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def chunks(self, size: int = 64) -> Iterator[np.ndarray]:
        for i in range(0, len(self.files), size):
            frames = []
            for file in self.files[i:i + size]:
                image = self._read(file)
                if image.shape[:2] != (self.info.height, self.info.width):
                    raise VideoError(
                        f"{file}: frame is {image.shape[1]}x{image.shape[0]}, the first "
                        f"({self.files[0].name}) is {self.info.width}x{self.info.height}")
                frames.append(image)
            yield np.stack(frames)


class ArraySource(FrameSource):
    """Frames already in memory, ``uint8 [T, H, W, 3]`` RGB."""

    def __init__(self, frames: np.ndarray, fps: float = 30.0, name: str = "<frames>"):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise VideoError(f"{name}: frames must be uint8 [T > 0, H, W, 3], got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise VideoError(f"{name}: frames must be uint8, got {frames.dtype}")
        if not (math.isfinite(fps) and fps > 0):
            raise VideoError(f"{name}: fps must be a positive number, got {fps!r}")
        self.frames = frames
        self.info = VideoInfo(name, float(fps), frames.shape[2], frames.shape[1], frames.shape[0])

    def chunks(self, size: int = 64) -> Iterator[np.ndarray]:
        for i in range(0, len(self.frames), size):
            yield self.frames[i:i + size]


def open_source(video: str | os.PathLike | np.ndarray | FrameSource,
                fps: float | None = None) -> FrameSource:
    """A video file, a folder of frames, or a ``uint8 [T, H, W, 3]`` array as a FrameSource."""
    if isinstance(video, FrameSource):
        return video
    if isinstance(video, np.ndarray):
        return ArraySource(video, 30.0 if fps is None else fps)
    path = pathlib.Path(video)
    if path.is_dir():
        return FrameFolderSource(path, fps)
    return VideoFileSource(path, fps)


# ---------------------------------------------------------------------------------------------
# Detection.


class FaceDetector:
    """OpenCV's Haar cascade face detector on a downscaled grey frame (see the module doc)."""

    def __init__(self, cascade: str | os.PathLike | None = None, *, detect_size: int = 320,
                 scale_factor: float = 1.1, min_neighbors: int = 4, min_face: float = 0.1):
        """`min_face`: the smallest face side, as a fraction of the frame's short side."""
        cv2 = cv2_module()
        path = pathlib.Path(cascade) if cascade else pathlib.Path(cv2.data.haarcascades) / DEFAULT_CASCADE
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise VideoError(f"{path}: not a loadable OpenCV cascade file")
        self.path = path
        self.detect_size = detect_size
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face = min_face

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Faces in one RGB frame: float32 ``[n, 5]`` rows ``(x, y, w, h, score)`` in frame pixels."""
        cv2 = cv2_module()
        h, w = frame.shape[:2]
        scale = min(1.0, self.detect_size / max(h, w))
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        side = max(int(self.min_face * min(grey.shape)), 20)
        rects, _, weights = self.classifier.detectMultiScale3(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(side, side), outputRejectLevels=True)
        if len(rects) == 0:
            return np.zeros((0, 5), np.float32)
        boxes = np.asarray(rects, np.float32).reshape(-1, 4) / scale
        weights = np.asarray(weights, np.float64).reshape(-1)
        scores = 1.0 - np.exp(-np.maximum(weights, 0.0) / 4.0)
        return np.concatenate([boxes, scores[:, None].astype(np.float32)], axis=1)


# ---------------------------------------------------------------------------------------------
# Tracking.


@dataclasses.dataclass
class FaceTrack:
    """One face per frame: boxes ``[T, 4]`` (x, y, w, h; zeros where `found` is False)."""

    boxes: np.ndarray       # float32 [T, 4], square
    found: np.ndarray       # bool [T]: a box exists (detected, or filled in a short gap)
    detected: np.ndarray    # bool [T]: the detector found this frame's face itself
    score: np.ndarray       # float32 [T]: detector score; 0 where filled or not found

    def __len__(self) -> int:
        return len(self.found)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a [n, 4]`` with one box ``b [4]`` (x, y, w, h)."""
    x0 = np.maximum(a[:, 0], b[0])
    y0 = np.maximum(a[:, 1], b[1])
    x1 = np.minimum(a[:, 0] + a[:, 2], b[0] + b[2])
    y1 = np.minimum(a[:, 1] + a[:, 3], b[1] + b[3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / (a[:, 2] * a[:, 3] + b[2] * b[3] - inter)


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a bool vector."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 with weights renormalised at the ends."""
    if sigma <= 0 or len(values) < 2:
        return values
    radius = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    n = len(values)
    out = np.empty_like(values)
    for i in range(n):
        lo, hi = max(0, i - radius), min(n, i + radius + 1)
        w = k[lo - i + radius:hi - i + radius]
        out[i] = (w[:, None] * values[lo:hi]).sum(0) / w.sum()
    return out


def track_faces(detections: Sequence[np.ndarray], *, max_gap: int = 15,
                smooth: float = 2.0) -> FaceTrack:
    """One smoothed square face box per frame from per-frame detections ``[n, 5]`` (module doc)."""
    t = len(detections)
    raw = np.zeros((t, 3), np.float64)   # centre x, centre y, side
    score = np.zeros(t, np.float32)
    detected = np.zeros(t, bool)
    prev, prev_t = None, -1
    for i, det in enumerate(detections):
        det = np.asarray(det, np.float32).reshape(-1, 5)
        if len(det) == 0:
            continue
        area = det[:, 2] * det[:, 3]
        pick = int(np.argmax(area))
        if prev is not None and i - prev_t <= max_gap + 1:
            overlap = _iou(det[:, :4], prev) > 0.3
            if overlap.any():
                pick = int(np.flatnonzero(overlap)[np.argmax(area[overlap])])
        x, y, w, h, s = det[pick]
        side = max(w, h)
        raw[i] = (x + w / 2, y + h / 2, side)
        score[i] = s
        detected[i] = True
        prev, prev_t = det[pick, :4], i

    found = detected.copy()
    hits = np.flatnonzero(detected)
    for a, b in zip(hits[:-1], hits[1:]):
        if 1 < b - a <= max_gap + 1:
            frac = (np.arange(a + 1, b) - a)[:, None] / (b - a)
            raw[a + 1:b] = raw[a] + frac * (raw[b] - raw[a])
            found[a + 1:b] = True
    boxes = np.zeros((t, 4), np.float32)
    for start, stop in true_runs(found):
        seg = gaussian_smooth(raw[start:stop], smooth)
        cx, cy, side = seg[:, 0], seg[:, 1], seg[:, 2]
        boxes[start:stop] = np.stack([cx - side / 2, cy - side / 2, side, side], axis=1)
    return FaceTrack(boxes=boxes, found=found, detected=detected, score=score)


# ---------------------------------------------------------------------------------------------
# Crops.


def crop_faces(frames: np.ndarray, boxes: np.ndarray, *, size: int = 112,
               margin: float = 0.4) -> np.ndarray:
    """Square face crops ``uint8 [n, size, size, 3]`` of ``frames [n, H, W, 3]`` at ``boxes [n, 4]``."""
    cv2 = cv2_module()
    frames = np.asarray(frames)
    out = np.zeros((len(frames), size, size, 3), np.uint8)
    h, w = frames.shape[1:3]
    for i, (frame, (x, y, bw, bh)) in enumerate(zip(frames, np.asarray(boxes, np.float64))):
        side = max(bw, bh) * (1.0 + margin)
        if not side > 0:
            continue
        cx, cy = x + bw / 2, y + bh / 2
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = max(int(round(side)), 1)
        patch = np.zeros((s, s, 3), np.uint8)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + s, w), min(y0 + s, h)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
        interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(patch, (size, size), interpolation=interp)
    return out
