"""The built-in demo dataset: a synthetic Aff-Wild2 in the official layout, at any scale.

Everything downstream (annotation parsing, feature stores, windows, training, evaluation,
submission) runs on it unchanged, and a temporal model learns it clearly better than chance.
The same arguments give byte-identical annotation, list, shard and image files (the feature
stores' meta.json records its creation time).

Written layout (`<out>/`)::

    6th ABAW Annotations/{VA_Estimation,EXPR_Recognition,AU_Detection}_Challenge/
        {Train_Set,Validation_Set}/<video>.txt
    6th ABAW Annotations/MTL_Challenge/         the multi-task split (abaw_jax.data.mtl)
        training_set_annotations.txt, validation_set_annotations.txt,
        MTL_Challenge_test_set_release.txt
    names_of_videos_in_each_test_set/<Challenge>_test_set_release.txt
    features/<set name>/            feature stores (abaw_jax.data.features), every video
    cropped_aligned/<video>/NNNNN.jpg   with jpeg=True; no image where there is no face
    demo.json                       the build parameters (written first)
    demo.complete                   a summary, written last: its presence marks a finished build

Generative process. All randomness comes from numpy PCG64 streams seeded by
`(seed, purpose, video index[, feature set])`, so videos are independent of each other.

Videos. `num_videos` source videos. Their lengths are stratified draws from the length
distribution of the 548 real Aff-Wild2 source videos (log-linear interpolation between its
quantiles, `LENGTH_QUANTILES`; 73 to 47,434 frames, median 3,937, 2.6M in total), multiplied by
`length_scale` and rounded, at least `MIN_FRAMES`. Names take every real form in about the real
proportions: `103`, `1-30-1280x720`, `5-60-1920x1080-2`, `video45`, `video45_3`. About
`PAIR_FRACTION` of the sources show two people and yield `<name>_left` and `<name>_right`, with
the same length and independent latent states. Sources (so both sides of a pair together) are
split into test (`TEST_FRACTION`, at least one), then train / validation 70 / 30. Each train or
validation video is annotated for each challenge with probability `TASK_COVERAGE[task]`, each test
video is listed for each challenge with probability 0.85; every video has at least one challenge
and every challenge at least one video per split.

Latent state of a video of T frames, per frame t:
  - expression e_t: segments of log-normal duration (median 60 frames, log-sd 0.8, at least 5);
    each segment's class is drawn from the video's class mix p ~ Dirichlet(40 * EXPR_PRIOR), so
    Neutral and Happiness dominate, Other is moderate, Fear and Disgust are rare, and each video
    has its own mood. Consecutive segments of one class merge into one longer one.
  - valence / arousal: (EXPR_VA[e_t] smoothed by an exponential filter of time constant 20
    frames) + an Ornstein-Uhlenbeck process per dimension (time constant 60 frames, stationary
    sd 0.25) + a per-video offset ~ N(0, 0.1^2); clipped to [-1, 1], rounded to 3 decimals.
  - action units: AU_j(t) = [AU_BASE[j] + AU_BOOST[e_t, j] + u_j(t) > 0], u_j an
    Ornstein-Uhlenbeck process (time constant 15 frames, sd 1): AU6+AU12 come with Happiness,
    AU1+AU2+AU25+AU26 with Surprise, AU4 with Anger and Sadness, AU10 with Disgust, and so on.
  s_t = [valence, arousal, one-hot(e_t) (8), AU (12)] is the 22-d latent vector.

Annotation damage: VA -5 spans (Poisson(0.4) per video; a quarter of them in one column only),
EXPR -1 spans (Poisson(0.4)), AU -1 spans (Poisson(0.3) whole rows, Poisson(0.1) one column);
span lengths uniform in 5 .. T/10. The video with plan index 1 always gets a one-column VA span
and index 2 a one-column AU span, so that even tiny demos have them. No-face frames: a rate
r ~ U(0.03, 0.08) per video, Poisson(r T / 12) runs of geometric length (mean 12) at uniform
starts; those frames are not present (no image, zero features) but keep their labels. The last
frame of a test video always has a face, so that its image count gives its length.

Features (the same formula for every frame of every video, present or not, then zero where not
present):
  - a projection set of dim D (any name but "openface"):
        x_t = GAIN * (box_15 * s)(t - 6) @ W + c + n_t
    box_15 * s is the centered 15-frame moving average of s (edges repeated), the argument t - 6
    (clamped at 0) lags it by 6 frames, so x_t sees the state of frames t - 13 .. t + 1. W [22, D]
    has orthonormal rows (D >= 22; otherwise unit-norm rows) drawn per set, GAIN = 1.5, c ~
    N(0, 0.5^2 I_D) per video (identity), n_t ~ N(0, I_D) per frame. Decoding one frame gives
    each latent coordinate with noise sd 1 / GAIN, so a single frame is ambiguous while a window
    of frames around t + 6 averages the noise away.
  - "openface" (17-d, OpenFace AU intensity order): y_t = clip(2.5 * (box_5 * s)(t - 2) @ M + c' +
    0.6 n_t, 0, 5), M mapping AUs and expressions to the 17 OpenFace AUs (AU05 from Surprise and
    Fear, AU09 from Disgust, AU17 from Sadness, AU20 from Fear, AU24 folded into AU23, AU45 noise
    only), c' ~ U(0, 0.3) per video and AU.

MTL split (s-Aff-Wild2 style). Each frame with a face is selected with probability
`MTL_SAMPLE_RATE` (at least one per video), so a video's frame numbers have gaps. A selected
frame of a train / validation video carries the video's own labels for each challenge that
annotates the video (with their invalid spans), and none (-5 / -1) for the others; each task is
then dropped from each frame with probability `MTL_TASK_DROP`, so some rows miss one task only;
rows left with no label at all are not written. Selected frames of the test videos form the test
image list. The features of frame number f of video v are row f - 1 of v in every feature store.
This split draws from its own random stream: the single-task files do not depend on it.

Images (jpeg=True): a drawn face per present frame from the true (not lagged) state: brows raised
by AU1 / AU2 and lowered by AU4, eyes narrowed by AU6 / AU7 and widened by arousal, cheeks by AU6,
nose wrinkles by AU10 and Disgust, mouth corners up with AU12 and valence and down with AU15, lips
parted by AU25 and the jaw dropped by AU26; per video face shape and colours, per frame a small
shift and brightness change. About one train / validation video in ten gets one image more than
its annotation has frames, as in the real data.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import uuid
import zlib
from collections.abc import Mapping

import ml_dtypes
import numpy as np
from scipy import ndimage, signal

from abaw_jax.data import affwild2, mtl
from abaw_jax.data.features import FeatureStoreWriter

GENERATOR_VERSION = 1  # part of the cache key: bump whenever the generated data changes

# Quantiles of the lengths (frames) of the 548 real Aff-Wild2 source videos.
LENGTH_PROBS = (0, .01, .02, .05, .1, .15, .2, .3, .4, .5, .6, .7, .8, .85, .9, .95, .98, .99, 1)
LENGTH_QUANTILES = (73, 268, 300, 654, 1401, 1919, 2279, 2784, 3328, 3937, 4462, 5204, 6314, 7584,
                    8807, 10898, 16522, 20284, 47434)
MIN_FRAMES = 32
PAIR_FRACTION = 0.08
TEST_FRACTION = 0.06
VAL_FRACTION = 0.3
TASK_COVERAGE = {"VA": 0.9, "EXPR": 0.8, "AU": 0.8}
TEST_LISTS = {
    "VA": "Valence_Arousal_Estimation_Challenge_test_set_release.txt",
    "EXPR": "Expression_Recognition_Challenge_test_set_release.txt",
    "AU": "Action_Unit_Detection_Challenge_test_set_release.txt",
}
# Name forms of the real source videos and their shares (bare numbers, id-fps-size,
# id-fps-size-part, video<id>, video<id>_<part>).
NAME_FORMS = {"bare": 0.54, "res": 0.25, "res_part": 0.03, "video": 0.16, "video_part": 0.02}
_FPS = (30, 30, 30, 25, 24, 60, 15, 29)
_SIZES = ((1280, 720), (1920, 1080), (640, 360), (640, 480), (1080, 1920), (720, 480), (480, 360),
          (854, 480), (720, 1280), (384, 480))

# Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise, Other.
EXPR_PRIOR = np.array([0.36, 0.05, 0.03, 0.03, 0.22, 0.10, 0.07, 0.14])
EXPR_VA = np.array([[0.0, 0.0], [-0.6, 0.6], [-0.5, 0.3], [-0.5, 0.6],
                    [0.6, 0.35], [-0.5, -0.3], [0.2, 0.6], [0.0, 0.2]])
# Logits per AU (AU1 AU2 AU4 AU6 AU7 AU10 AU12 AU15 AU23 AU24 AU25 AU26), sd-1 noise on top.
AU_BASE = np.array([-1.6, -1.8, -1.4, -1.3, -0.6, -0.8, -1.2, -2.0, -1.9, -2.0, -0.3, -1.4])
_AU_BOOSTS = {
    "Anger": {"AU4": 2.5, "AU7": 1.5, "AU10": 0.8, "AU23": 2.0, "AU24": 1.8},
    "Disgust": {"AU4": 1.2, "AU7": 1.2, "AU10": 2.5, "AU15": 1.0},
    "Fear": {"AU1": 2.0, "AU2": 1.5, "AU4": 1.5, "AU25": 1.5, "AU26": 1.0},
    "Happiness": {"AU6": 2.5, "AU7": 0.8, "AU10": 0.8, "AU12": 3.0, "AU25": 1.0},
    "Sadness": {"AU1": 1.5, "AU4": 2.0, "AU15": 2.5},
    "Surprise": {"AU1": 2.5, "AU2": 2.8, "AU25": 2.0, "AU26": 2.5},
    "Other": {"AU7": 0.5, "AU25": 0.5},
}
AU_BOOST = np.zeros((len(affwild2.EXPR_CLASSES), len(affwild2.AU_NAMES)))
for _expr, _boosts in _AU_BOOSTS.items():
    for _au, _v in _boosts.items():
        AU_BOOST[affwild2.EXPR_CLASSES.index(_expr), affwild2.AU_NAMES.index(_au)] = _v

LATENT_DIM = 2 + len(affwild2.EXPR_CLASSES) + len(affwild2.AU_NAMES)
GAIN, IDENTITY_SD, BLUR, LAG = 1.5, 0.5, 15, 6
OPENFACE_BLUR, OPENFACE_LAG = 5, 2
OPENFACE_DIM = 17
# Set names generated as the 17-d AU-intensity view ("fau" is system C's name for OpenFace's AU
# intensities); every other name is a random projection of the latent state.
AU_VIEWS = ("openface", "fau")
# Rows of M: where each OpenFace AU intensity comes from (latent name -> weight).
_OPENFACE_SOURCES = (
    {"AU1": 1}, {"AU2": 1}, {"AU4": 1}, {"Surprise": 0.8, "Fear": 0.8}, {"AU6": 1}, {"AU7": 1},
    {"Disgust": 1}, {"AU10": 1}, {"AU12": 1}, {"AU12": 0.5, "Anger": 0.3}, {"AU15": 1},
    {"Sadness": 0.7, "Anger": 0.4}, {"Fear": 1}, {"AU23": 1, "AU24": 0.5}, {"AU25": 1}, {"AU26": 1}, {},
)
_LATENT_NAMES = ("valence", "arousal") + affwild2.EXPR_CLASSES + affwild2.AU_NAMES

# MTL split: the share of frames with a face that are selected, the chance that a selected
# frame loses one task's labels, and the test list's name (as in the 3rd to 7th ABAW releases).
MTL_SAMPLE_RATE = 0.2
MTL_TASK_DROP = 0.05
MTL_TEST_LIST = "MTL_Challenge_test_set_release.txt"

_ANNOTATION_DIRS = {task: dirs[0] for task, dirs in affwild2.CHALLENGE_DIRS.items()}
_PARAMS_FILE = "demo.json"
_COMPLETE_FILE = "demo.complete"
_PURPOSE = {"plan": 0, "labels": 1, "features": 2, "projection": 3, "images": 4, "mtl": 5}


@dataclasses.dataclass(frozen=True)
class DemoVideo:
    """One generated video: where it goes and how long it is."""

    name: str
    index: int  # position in the plan (sorted by name); keys this video's random streams
    num_frames: int
    split: str  # "train" | "val" | "test"
    tasks: tuple[str, ...]  # challenges annotating (or, for test videos, listing) it


@dataclasses.dataclass(frozen=True, eq=False)
class DemoLabels:
    """The true per-frame state of a video and which annotation entries survive.

    `va`, `expr`, `au` hold the true state everywhere (also where the annotation says invalid);
    `labels(task)` gives the annotation's view, zero where not valid.
    """

    va: np.ndarray  # float32 [T, 2], multiples of 0.001
    expr: np.ndarray  # int32 [T]
    au: np.ndarray  # int32 [T, 12]
    valid: dict[str, np.ndarray]  # per task, shapes as affwild2's valid arrays
    present: np.ndarray  # bool [T]

    def labels(self, task: str) -> np.ndarray:
        """The label array of `task` as an annotation file holds it (invalid entries 0)."""
        state = {"VA": self.va, "EXPR": self.expr, "AU": self.au}[task]
        return np.where(self.valid[task], state, 0).astype(state.dtype)

    def latent(self) -> np.ndarray:
        """s_t = [valence, arousal, one-hot expression, AUs]: float32 [T, 22]."""
        onehot = np.eye(len(affwild2.EXPR_CLASSES), dtype=np.float32)[self.expr]
        return np.concatenate([self.va, onehot, self.au.astype(np.float32)], axis=1)


def _rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, _PURPOSE[purpose], *keys])


def _set_key(name: str) -> int:
    return zlib.crc32(name.encode())


def _counts(shares: Mapping[str, float], n: int) -> dict[str, int]:
    """Largest-remainder rounding of n * shares, every form at least once when n allows."""
    floor = {k: int(n * v) for k, v in shares.items()}
    if n >= len(shares):
        floor = {k: max(1, c) for k, c in floor.items()}
    order = sorted(shares, key=lambda k: n * shares[k] - int(n * shares[k]), reverse=True)
    i = 0
    while sum(floor.values()) < n:
        floor[order[i % len(order)]] += 1
        i += 1
    while sum(floor.values()) > n:
        biggest = max(floor, key=floor.get)
        floor[biggest] -= 1
    return floor


def _source_names(rng: np.random.Generator, n: int) -> list[str]:
    counts = _counts(NAME_FORMS, n)
    pool = max(600, 3 * n)
    names: list[str] = []
    # Forms sharing a pattern draw their ids from one pool so that no two sources share an id.
    res_ids = iter(rng.permutation(pool)[: counts["res"] + counts["res_part"]] + 1)
    video_ids = iter(rng.permutation(pool)[: counts["video"] + counts["video_part"]] + 1)
    names += [str(i) for i in rng.permutation(pool)[: counts["bare"]] + 1]
    for _ in range(counts["res"]):
        w, h = _SIZES[rng.integers(len(_SIZES))]
        names.append(f"{next(res_ids)}-{_FPS[rng.integers(len(_FPS))]}-{w}x{h}")
    left = counts["res_part"]
    while left:
        parts = min(left, int(rng.integers(2, 6)))
        w, h = _SIZES[rng.integers(len(_SIZES))]
        stem = f"{next(res_ids)}-{_FPS[rng.integers(len(_FPS))]}-{w}x{h}"
        names += [f"{stem}-{k}" for k in range(1, parts + 1)]
        left -= parts
    names += [f"video{next(video_ids)}" for _ in range(counts["video"])]
    left = counts["video_part"]
    while left:
        parts = min(left, int(rng.integers(2, 8)))
        stem = f"video{next(video_ids)}"
        names += [f"{stem}_{k}" for k in range(1, parts + 1)]
        left -= parts
    return names


def source_lengths(num_videos: int, *, seed: int = 0, length_scale: float = 1.0) -> np.ndarray:
    """Frame counts of the `num_videos` source videos of a demo (int64, in plan order of sources)."""
    rng = _rng(seed, "plan", 1)
    u = (rng.permutation(num_videos) + rng.random(num_videos)) / num_videos
    lengths = np.exp(np.interp(u, LENGTH_PROBS, np.log(LENGTH_QUANTILES)))
    return np.maximum(MIN_FRAMES, np.rint(lengths * length_scale)).astype(np.int64)


def plan_videos(num_videos: int = 40, *, seed: int = 0, length_scale: float = 0.1) -> list[DemoVideo]:
    """The videos of a demo, sorted by name: names, lengths, splits and challenges."""
    if num_videos < 4:
        raise ValueError(f"num_videos must be at least 4 (train, validation and test), got {num_videos}")
    if not length_scale > 0:
        raise ValueError(f"length_scale must be positive, got {length_scale}")
    rng = _rng(seed, "plan", 0)
    sources = _source_names(rng, num_videos)
    lengths = source_lengths(num_videos, seed=seed, length_scale=length_scale)
    paired = set(rng.choice(num_videos, size=max(1, round(PAIR_FRACTION * num_videos)), replace=False).tolist())
    order = rng.permutation(num_videos)
    n_test = max(1, round(TEST_FRACTION * num_videos))
    n_val = max(1, round(VAL_FRACTION * (num_videos - n_test)))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[i] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"

    entries = []  # (name, frames, split)
    for i, source in enumerate(sources):
        names = [f"{source}_left", f"{source}_right"] if i in paired else [source]
        entries += [(name, int(lengths[i]), split_of[i]) for name in names]
    entries.sort()

    tasks: list[list[str]] = []
    for _, _, split in entries:
        coverage = {t: 0.85 for t in affwild2.TASKS} if split == "test" else TASK_COVERAGE
        mine = [t for t in affwild2.TASKS if rng.random() < coverage[t]]
        tasks.append(mine or [affwild2.TASKS[int(rng.integers(len(affwild2.TASKS)))]])
    for split in ("train", "val", "test"):
        members = [i for i, e in enumerate(entries) if e[2] == split]
        for task in affwild2.TASKS:
            if not any(task in tasks[i] for i in members):
                tasks[members[0]].append(task)
    return [
        DemoVideo(name, index, frames, split, tuple(t for t in affwild2.TASKS if t in tasks[index]))
        for index, (name, frames, split) in enumerate(entries)
    ]


def _ou(rng: np.random.Generator, shape: tuple[int, ...], tau: float, sd: float) -> np.ndarray:
    """Ornstein-Uhlenbeck paths along axis 0, started from the stationary law."""
    rho = np.exp(-1.0 / tau)
    drive = rng.standard_normal(shape) * sd
    drive[1:] *= np.sqrt(1 - rho**2)
    return signal.lfilter([1.0], [1.0, -rho], drive, axis=0)


def _spans(rng: np.random.Generator, t: int, count: int) -> list[slice]:
    spans = []
    for _ in range(count):
        length = int(rng.integers(5, max(6, t // 10 + 1)))
        start = int(rng.integers(0, max(1, t - length + 1)))
        spans.append(slice(start, min(t, start + length)))
    return spans


def simulate(video: DemoVideo, seed: int = 0) -> DemoLabels:
    """The latent state, annotation validity and face presence of one video (see module doc)."""
    t = video.num_frames
    rng = _rng(seed, "labels", video.index)

    mix = rng.dirichlet(40 * EXPR_PRIOR)
    durations = np.maximum(5, np.rint(rng.lognormal(np.log(60), 0.8, size=t // 5 + 1))).astype(np.int64)
    n_seg = int(np.searchsorted(np.cumsum(durations), t)) + 1
    classes = rng.choice(len(mix), size=n_seg, p=mix)
    expr = np.repeat(classes, durations[:n_seg])[:t].astype(np.int32)

    rho = np.exp(-1.0 / 20)
    target = EXPR_VA[expr]
    mean = signal.lfilter([1 - rho], [1.0, -rho], target, axis=0, zi=rho * target[:1])[0]
    va = mean + _ou(rng, (t, 2), 60, 0.25) + rng.normal(0, 0.1, size=2)
    va = (np.rint(np.clip(va, -1, 1) * 1000) / 1000).astype(np.float32)

    logits = AU_BASE + AU_BOOST[expr] + _ou(rng, (t, len(AU_BASE)), 15, 1.0)
    au = (logits > 0).astype(np.int32)

    valid = {
        "VA": np.ones((t, 2), bool),
        "EXPR": np.ones(t, bool),
        "AU": np.ones((t, len(AU_BASE)), bool),
    }
    for span in _spans(rng, t, rng.poisson(0.4)):
        valid["VA"][span, rng.integers(2) if rng.random() < 0.25 else slice(None)] = False
    for span in _spans(rng, t, rng.poisson(0.4)):
        valid["EXPR"][span] = False
    for span in _spans(rng, t, rng.poisson(0.3)):
        valid["AU"][span] = False
    for span in _spans(rng, t, rng.poisson(0.1)):
        valid["AU"][span, rng.integers(len(AU_BASE))] = False
    if video.index == 1:
        valid["VA"][_spans(rng, t, 1)[0], 1] = False
    if video.index == 2:
        valid["AU"][_spans(rng, t, 1)[0], 3] = False

    present = np.ones(t, bool)
    rate = rng.uniform(0.03, 0.08)
    n_runs = rng.poisson(rate * t / 12)
    starts = rng.integers(0, t, size=n_runs)
    ends = starts + rng.geometric(1 / 12, size=n_runs)
    for s, e in zip(starts.tolist(), ends.tolist()):
        present[s:e] = False
    if video.split == "test":
        present[-1] = True
    return DemoLabels(va=va, expr=expr, au=au, valid=valid, present=present)


def _blur_lag(latent: np.ndarray, size: int, lag: int) -> np.ndarray:
    blurred = ndimage.uniform_filter1d(latent, size=size, axis=0, mode="nearest")
    return np.concatenate([np.repeat(blurred[:1], lag, axis=0), blurred[: len(blurred) - lag]])


def projection(set_name: str, dim: int, seed: int = 0) -> np.ndarray:
    """W [22, dim] of a projection feature set: orthonormal rows when dim >= 22, else unit rows."""
    g = _rng(seed, "projection", _set_key(set_name)).standard_normal((dim, LATENT_DIM))
    if dim >= LATENT_DIM:
        q, r = np.linalg.qr(g)
        return (q * np.sign(np.diag(r))).T.astype(np.float32)
    return (g / np.linalg.norm(g, axis=0)).T.astype(np.float32)


def openface_map() -> np.ndarray:
    """M [22, 17]: how the latent state drives the 17 OpenFace AU intensities."""
    m = np.zeros((LATENT_DIM, OPENFACE_DIM), np.float32)
    for k, sources in enumerate(_OPENFACE_SOURCES):
        for name, weight in sources.items():
            m[_LATENT_NAMES.index(name), k] = weight
    return m


def features(video: DemoVideo, labels: DemoLabels, set_name: str, dim: int, seed: int = 0,
             w: np.ndarray | None = None) -> np.ndarray:
    """The float32 [T, dim] features of one video in one feature set (zero where not present)."""
    rng = _rng(seed, "features", video.index, _set_key(set_name))
    latent = labels.latent()
    t = video.num_frames
    if set_name in AU_VIEWS:
        if dim != OPENFACE_DIM:
            raise ValueError(f"feature set {set_name!r} has {OPENFACE_DIM} dims, got {dim}")
        x = 2.5 * (_blur_lag(latent, OPENFACE_BLUR, OPENFACE_LAG) @ openface_map())
        x += rng.uniform(0, 0.3, size=dim).astype(np.float32)
        x += 0.6 * rng.standard_normal((t, dim), dtype=np.float32)
        np.clip(x, 0, 5, out=x)
    else:
        if w is None:
            w = projection(set_name, dim, seed)
        x = rng.standard_normal((t, dim), dtype=np.float32)
        x += IDENTITY_SD * rng.standard_normal(dim, dtype=np.float32)
        x += GAIN * (_blur_lag(latent, BLUR, LAG) @ w)
    x[~labels.present] = 0
    return x


# --------------------------------------------------------------------------- images


def _face_style(rng: np.random.Generator) -> dict:
    return {
        "bg": tuple(int(c) for c in rng.integers(40, 200, 3)),
        "skin": tuple(int(c) for c in (rng.integers(150, 235), rng.integers(110, 190), rng.integers(80, 160))),
        "rx": rng.uniform(0.32, 0.40),
        "ry": rng.uniform(0.42, 0.48),
        "eye_dx": rng.uniform(0.13, 0.17),
        "mouth_w": rng.uniform(0.13, 0.17),
    }


def render_face(size: int, style: Mapping, valence: float, arousal: float, expr: int, au: np.ndarray,
                rng: np.random.Generator):
    """A drawn face (PIL image, RGB, size x size) showing the given state."""
    from PIL import Image, ImageDraw

    a = dict(zip(affwild2.AU_NAMES, (float(v) for v in au)))
    disgust = float(expr == affwild2.EXPR_CLASSES.index("Disgust"))
    s = float(size)
    cx = s / 2 + rng.uniform(-0.02, 0.02) * s
    cy = s / 2 + rng.uniform(-0.02, 0.02) * s
    img = Image.new("RGB", (size, size), style["bg"])
    d = ImageDraw.Draw(img)
    rx, ry = style["rx"] * s, style["ry"] * s
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=style["skin"])

    dark = (40, 30, 30)
    eye_y = cy - 0.10 * s
    eye_h = 0.035 * s * (1 + 0.5 * arousal) * (1 - 0.35 * a["AU7"]) * (1 - 0.25 * a["AU6"])
    for side in (-1, 1):
        ex = cx + side * style["eye_dx"] * s
        d.ellipse([ex - 0.06 * s, eye_y - eye_h, ex + 0.06 * s, eye_y + eye_h], fill=(245, 245, 245))
        pupil = min(eye_h, 0.025 * s)
        d.ellipse([ex - 0.025 * s, eye_y - pupil, ex + 0.025 * s, eye_y + pupil], fill=dark)
        # Inner brow ends move with AU1 (up) and AU4 (down, toward the middle), outer ends with AU2.
        brow_y = eye_y - 0.08 * s
        inner = (cx + side * 0.05 * s * (1 - 0.3 * a["AU4"]), brow_y - 0.05 * s * a["AU1"] + 0.04 * s * a["AU4"])
        outer = (cx + side * (style["eye_dx"] + 0.09) * s, brow_y - 0.05 * s * a["AU2"])
        d.line([inner, outer], fill=dark, width=max(1, round(0.025 * s)))
        if a["AU6"]:
            d.ellipse([ex - 0.05 * s, eye_y + 0.08 * s, ex + 0.05 * s, eye_y + 0.13 * s], fill=(220, 120, 120))
    nose_y = cy + 0.08 * s
    d.line([(cx, eye_y + 0.02 * s), (cx - 0.03 * s, nose_y), (cx + 0.02 * s, nose_y)], fill=dark, width=1)
    if a["AU10"] or disgust:
        for side in (-1, 1):
            d.line([(cx + side * 0.04 * s, nose_y - 0.05 * s), (cx + side * 0.07 * s, nose_y)], fill=dark, width=1)

    mouth_y = cy + 0.22 * s
    half_w = style["mouth_w"] * s * (1 + 0.25 * a["AU12"] - 0.15 * a["AU23"])
    lift = 0.05 * s * (a["AU12"] + 0.5 * valence) - 0.04 * s * a["AU15"]
    gap = 0.012 * s + 0.035 * s * a["AU25"] + 0.06 * s * a["AU26"] - 0.01 * s * a["AU24"]
    left, right = (cx - half_w, mouth_y - lift), (cx + half_w, mouth_y - lift)
    upper = (cx, mouth_y - gap / 2)
    lower = (cx, mouth_y + gap / 2 + 0.4 * lift)
    d.polygon([left, upper, right, lower], fill=(150, 40, 50))

    shade = 1 + rng.uniform(-0.12, 0.12)
    return img.point(lambda v: max(0, min(255, int(v * shade))))


def _write_frames(folder: pathlib.Path, video: DemoVideo, labels: DemoLabels, seed: int, size: int,
                  extra: int) -> None:
    rng = _rng(seed, "images", video.index)
    style = _face_style(rng)
    folder.mkdir(parents=True)
    frames = np.flatnonzero(labels.present).tolist() + list(range(video.num_frames, video.num_frames + extra))
    for f in frames:
        i = min(f, video.num_frames - 1)
        img = render_face(size, style, float(labels.va[i, 0]), float(labels.va[i, 1]), int(labels.expr[i]),
                          labels.au[i], rng)
        img.save(folder / f"{f + 1:05d}.jpg", quality=90)


# --------------------------------------------------------------------------- MTL split


def sample_mtl(video: DemoVideo, labels: DemoLabels, seed: int = 0) -> mtl.MTLVideo | None:
    """The frames of `video` in the demo's MTL split with their three label sets (see module doc).

    Returns None when no frame is selected. Test videos get their selected frames with no
    valid label (they form the test image list).
    """
    rng = _rng(seed, "mtl", video.index)
    candidates = np.flatnonzero(labels.present)
    chosen = candidates[rng.random(candidates.size) < MTL_SAMPLE_RATE]
    if chosen.size == 0 and candidates.size:
        chosen = candidates[[int(rng.integers(candidates.size))]]
    k = len(affwild2.AU_NAMES)
    valid = {}
    for task in affwild2.TASKS:
        mask = labels.valid[task][chosen]
        if video.split == "test" or task not in video.tasks:
            mask = np.zeros_like(mask)
        # Whole-task gaps per frame, drawn for every frame in a fixed order so that each task's
        # draw is the same whatever the others are.
        dropped = rng.random(chosen.size) < MTL_TASK_DROP
        mask = mask & ~(dropped if mask.ndim == 1 else dropped[:, None])
        valid[task] = mask
    if video.split != "test":
        keep = valid["VA"].any(axis=1) | valid["EXPR"] | valid["AU"].any(axis=1)
        chosen = chosen[keep]
        valid = {task: mask[keep] for task, mask in valid.items()}
    if chosen.size == 0:
        return None
    return mtl.MTLVideo(
        video.name, (chosen + 1).astype(np.int64),
        np.where(valid["VA"], labels.va[chosen], 0).astype(np.float32), valid["VA"],
        np.where(valid["EXPR"], labels.expr[chosen], 0).astype(np.int32), valid["EXPR"],
        np.where(valid["AU"], labels.au[chosen], 0).astype(np.int32).reshape(-1, k), valid["AU"])


def _write_mtl(out: pathlib.Path, videos: Mapping[str, list[mtl.MTLVideo]]) -> dict:
    folder = out / affwild2.ANNOTATIONS_DIR / mtl.MTL_DIR
    folder.mkdir(parents=True)
    summary = {}
    for split in ("train", "val"):
        if not videos[split]:
            raise RuntimeError(f"the demo's MTL {split} split selected no frame; use more or longer videos")
        mtl.write_mtl_annotation(folder / f"{mtl.SPLIT_FILES[split]}.txt", videos[split])
        summary[split] = sum(v.num_rows for v in videos[split])
    images = [(v.name, int(f)) for v in videos["test"] for f in v.frames]
    mtl.write_mtl_test_list(folder / MTL_TEST_LIST, images)
    summary["test"] = len(images)
    return summary


# --------------------------------------------------------------------------- building

_DISK_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}


def _in_order(pool: concurrent.futures.Executor, fn, items, depth: int):
    """fn(item) for each item, computed up to `depth` ahead in `pool`, yielded in order."""
    pending: collections.deque = collections.deque()
    items = iter(items)
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            break
    while pending:
        result = pending.popleft().result()
        for item in items:
            pending.append(pool.submit(fn, item))
            break
        yield result


def _params(num_videos: int = 40, *, seed: int = 0, length_scale: float = 0.1,
            feature_sets: Mapping[str, int] | None = None, jpeg: bool = False, jpeg_size: int = 112,
            dtype: str = "float16") -> dict:
    feature_sets = {"vit": 768, "openface": OPENFACE_DIM} if feature_sets is None else dict(feature_sets)
    for name, dim in feature_sets.items():
        if not name or "/" in name or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"feature_sets: bad entry {name!r}: {dim!r} (name: a folder name, dim: int > 0)")
        if name in AU_VIEWS and dim != OPENFACE_DIM:
            raise ValueError(f"feature_sets: {name!r} has {OPENFACE_DIM} dims, got {dim}")
    if dtype not in _DISK_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(_DISK_DTYPES)}, got {dtype!r}")
    if not isinstance(jpeg_size, int) or jpeg_size < 16:
        raise ValueError(f"jpeg_size must be an int >= 16, got {jpeg_size!r}")
    return {
        "num_videos": int(num_videos),
        "seed": int(seed),
        "length_scale": float(length_scale),
        "feature_sets": {k: feature_sets[k] for k in sorted(feature_sets)},
        "jpeg": bool(jpeg),
        "jpeg_size": int(jpeg_size),
        "dtype": str(dtype),
        "version": GENERATOR_VERSION,
    }


def build_demo(out: str | os.PathLike, *, num_videos: int = 40, seed: int = 0, length_scale: float = 0.1,
               feature_sets: Mapping[str, int] | None = None, jpeg: bool = False, jpeg_size: int = 112,
               dtype: str = "float16") -> pathlib.Path:
    """Writes a demo dataset into `out` (a new or empty folder) and returns its path.

    `feature_sets` maps set names to dims (default {"vit": 768, "openface": 17}); "openface" is
    the 17-d AU-intensity view, every other name a random projection of the latent state.
    """
    out = pathlib.Path(out)
    params = _params(num_videos, seed=seed, length_scale=length_scale, feature_sets=feature_sets,
                     jpeg=jpeg, jpeg_size=jpeg_size, dtype=dtype)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: demo output folder must be new or empty")
    out.mkdir(parents=True, exist_ok=True)
    (out / _PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")

    videos = plan_videos(num_videos, seed=seed, length_scale=length_scale)
    for task, challenge in _ANNOTATION_DIRS.items():
        for split in affwild2.SPLITS.values():
            (out / affwild2.ANNOTATIONS_DIR / challenge / split).mkdir(parents=True)
    lists = out / affwild2.TEST_LISTS_DIR
    lists.mkdir()
    for task, filename in TEST_LISTS.items():
        names = [v.name for v in videos if v.split == "test" and task in v.tasks]
        (lists / filename).write_text("".join(f"{n}\n" for n in names))

    sets = params["feature_sets"]
    weights = {name: projection(name, dim, seed) for name, dim in sets.items() if name not in AU_VIEWS}
    disk_dtype = _DISK_DTYPES[dtype]
    extra_rng = _rng(seed, "images", 1 << 30)
    extras = {v.name: int(v.split != "test" and extra_rng.random() < 0.1) for v in videos}

    def generate(video: DemoVideo) -> tuple[DemoLabels, dict[str, np.ndarray]]:
        # Runs in worker threads: numpy's random fills, matmuls and casts, and PIL's JPEG
        # encoder release the GIL, so videos are generated in parallel and written in order.
        labels = simulate(video, seed)
        feats = {name: features(video, labels, name, dim, seed, weights.get(name)).astype(disk_dtype)
                 for name, dim in sets.items()}
        if params["jpeg"]:
            _write_frames(out / affwild2.FRAMES_DIR / video.name, video, labels, seed, jpeg_size,
                          extras[video.name])
        return labels, feats

    writers = {
        name: FeatureStoreWriter(out / "features" / name, dim=dim, dtype=dtype, extractor=f"demo:{name}",
                                 params={"demo": params})
        for name, dim in sets.items()
    }
    summary = {"videos": {}, "frames": 0, "present": 0}
    mtl_videos: dict[str, list[mtl.MTLVideo]] = {"train": [], "val": [], "test": []}
    workers = max(1, min(4, os.cpu_count() or 1))
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for video, (labels, feats) in zip(videos, _in_order(pool, generate, videos, 2 * workers)):
                if video.split != "test":
                    for task in video.tasks:
                        folder = out / affwild2.ANNOTATIONS_DIR / _ANNOTATION_DIRS[task] / affwild2.SPLITS[video.split]
                        affwild2.write_annotation(folder / f"{video.name}.txt", task, labels.labels(task),
                                                  labels.valid[task])
                for name, writer in writers.items():
                    writer.write(video.name, feats[name], labels.present)
                for task in video.tasks:
                    key = f"{task}/{video.split}"
                    summary["videos"][key] = summary["videos"].get(key, 0) + 1
                summary["frames"] += video.num_frames
                summary["present"] += int(labels.present.sum())
                selected = sample_mtl(video, labels, seed)
                if selected is not None:
                    mtl_videos[video.split].append(selected)
    finally:
        for writer in writers.values():
            writer.close()
    summary["videos"] = dict(sorted(summary["videos"].items()))
    summary["mtl"] = _write_mtl(out, mtl_videos)
    (out / _COMPLETE_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return out


def is_complete(path: str | os.PathLike, **kwargs) -> bool:
    """Whether `path` holds a finished demo built with these build_demo arguments."""
    path = pathlib.Path(path)
    try:
        built = json.loads((path / _PARAMS_FILE).read_text())
        summary = json.loads((path / _COMPLETE_FILE).read_text())
    except (OSError, ValueError):
        return False
    # A demo finished before the MTL split existed lacks it: ensure_demo rebuilds it in place,
    # with byte-identical single-task files (their random streams do not involve the MTL split).
    return built == _params(**kwargs) and isinstance(summary, dict) and "mtl" in summary


def demo_dir(cache_dir: str | os.PathLike | None = None, **kwargs) -> pathlib.Path:
    """Where `ensure_demo` keeps the demo for these arguments: `<cache>/demo-<hash of the arguments>`.

    `<cache>` is `cache_dir`, else $ABAW_JAX_DEMO_DIR, else ~/.cache/abaw_jax.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("ABAW_JAX_DEMO_DIR") or pathlib.Path.home() / ".cache" / "abaw_jax"
    key = hashlib.sha256(json.dumps(_params(**kwargs), sort_keys=True).encode()).hexdigest()[:12]
    return pathlib.Path(cache_dir).expanduser() / f"demo-{key}"


def ensure_demo(cache_dir: str | os.PathLike | None = None, **kwargs) -> pathlib.Path:
    """The path of a finished demo for these `build_demo` arguments, building it once if needed.

    The build goes to a temporary sibling folder that is renamed into place when complete, so a
    crashed build is never reused and concurrent callers end up sharing one result.
    """
    final = demo_dir(cache_dir, **kwargs)
    if is_complete(final, **kwargs):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        build_demo(tmp, **kwargs)
        if final.exists() and not is_complete(final, **kwargs):
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final, **kwargs):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def main(argv: list[str] | None = None) -> None:
    """Command line: python -m abaw_jax.data.demo --out DIR [--videos N] [--seed S] ..."""
    p = argparse.ArgumentParser(prog="python -m abaw_jax.data.demo", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="new or empty output folder")
    p.add_argument("--videos", type=int, default=40, help="number of source videos")
    p.add_argument("--seed", type=int, default=0, help="seed of every random stream")
    p.add_argument("--length-scale", type=float, default=0.1,
                   help="1.0 gives the real lengths (2.6M frames at 548 videos)")
    p.add_argument("--jpeg", action="store_true", help="also draw cropped_aligned/ face images")
    p.add_argument("--jpeg-size", type=int, default=112, help="side of the face images, px")
    p.add_argument("--dim", type=int, default=768, help="dim of the 'vit' feature set")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                   help="dtype of the feature stores")
    args = p.parse_args(argv)
    out = build_demo(args.out, num_videos=args.videos, seed=args.seed, length_scale=args.length_scale,
                     feature_sets={"vit": args.dim, "openface": OPENFACE_DIM}, jpeg=args.jpeg,
                     jpeg_size=args.jpeg_size, dtype=args.dtype)
    summary = json.loads((out / _COMPLETE_FILE).read_text())
    print(f"demo dataset in {out}: {summary['frames']} frames, {summary['present']} with a face; videos per "
          f"task/split: {summary['videos']}", file=sys.stderr)


if __name__ == "__main__":
    main()
