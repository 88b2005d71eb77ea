"""Labelled face-image sources and grain pipelines for MAE pretraining and fine-tuning.

Sources are random-access sequences of ``(image uint8 [H, W, 3], label int)``:

* :class:`AffWild2Frames`: ``cropped_aligned`` frames of an Aff-Wild2 split with their EXPR
  labels; frames without an image or with an invalid label (-1) are left out.
* :class:`ImageFolder`: one subfolder per class (AffectNet, RAF-DB, FER2013, CK+ as usually
  unpacked); classes are the sorted subfolder names, or given by a ``{folder: class}`` mapping
  (e.g. :data:`RAFDB_TO_EXPR` to train on Aff-Wild2's EXPR classes).
* :class:`TfdsImages`: a prepared TFDS dataset read through ``tfds.data_source`` (ArrayRecord;
  no TensorFlow at read time).

Grey images become three equal channels. :func:`train_batches` gives endless shuffled batches
with random resized crops and horizontal flips, each record's randomness seeded by
``(seed, position in the stream)`` so that a resumed iterator reproduces the same images;
:func:`eval_batches` resizes whole images and pads the last batch (``mask`` marks real rows).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from PIL import Image

from abaw_jax.data import affwild2
from abaw_jax.data import images as images_lib

# Folder names of common facial-expression datasets -> Aff-Wild2 EXPR classes
# (Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise, Other).
NAMES_TO_EXPR = {
    "neutral": 0, "anger": 1, "angry": 1, "disgust": 2, "fear": 3, "happy": 4, "happiness": 4,
    "sad": 5, "sadness": 5, "surprise": 6, "contempt": 7,
}
# RAF-DB basic emotions, folders 1..7: Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral.
RAFDB_TO_EXPR = {"1": 6, "2": 3, "3": 2, "4": 4, "5": 5, "6": 1, "7": 0}
# AffectNet, folders 0..7: Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt.
AFFECTNET_TO_EXPR = {"0": 0, "1": 4, "2": 5, "3": 6, "4": 3, "5": 2, "6": 1, "7": 7}
LAYOUTS = {"names": NAMES_TO_EXPR, "rafdb": RAFDB_TO_EXPR, "affectnet": AFFECTNET_TO_EXPR}


class ImageSourceError(ValueError):
    """A source folder, file or label that cannot be used; the message names it."""


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """A whole image file as uint8 ``[H, W, 3]`` (grey repeated on three channels)."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(images_lib.to_rgb(img), np.uint8)
    except (OSError, ValueError) as e:
        raise ImageSourceError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def _as_rgb_array(image: Any, where: str) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageSourceError(f"{where}: image of shape {list(a.shape)} is not [H, W, 1 | 3 | 4]")
    if a.dtype != np.uint8:
        raise ImageSourceError(f"{where}: image dtype {a.dtype}, expected uint8")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a[:, :, :3]


class FileImages:
    """Images listed as files with integer labels; the base of the folder and frame sources."""

    def __init__(self, paths: Sequence[str | os.PathLike], labels: Sequence[int],
                 classes: Sequence[str] = ()):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, np.int32)
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return read_rgb(self.paths[i]), int(self.labels[i])

    def subset(self, indices: Sequence[int]) -> "FileImages":
        """The records at ``indices``, in that order."""
        idx = np.asarray(indices, np.int64)
        return FileImages([self.paths[i] for i in idx], self.labels[idx], self.classes)


class ImageFolder(FileImages):
    """``root/<class folder>/<image>``: labels from the sorted folder names or ``mapping``.

    ``mapping`` is ``{folder name: class index}`` or the name of one of :data:`LAYOUTS`
    (``"names"``, ``"rafdb"``, ``"affectnet"``); folders it does not name are skipped, so a
    mapping can also select classes. Folder names are matched case-insensitively.
    """

    def __init__(self, root: str | os.PathLike, mapping: Mapping[str, int] | str | None = None):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ImageSourceError(f"{root}: no such image folder")
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        if not folders:
            raise ImageSourceError(f"{root}: no class subfolders")
        if isinstance(mapping, str):
            if mapping not in LAYOUTS:
                raise ImageSourceError(f"{root}: unknown layout {mapping!r}; known: {sorted(LAYOUTS)}")
            mapping = LAYOUTS[mapping]
        if mapping is None:
            label_of = {f.name: i for i, f in enumerate(folders)}
            classes = [f.name for f in folders]
        else:
            lowered = {str(k).lower(): int(v) for k, v in mapping.items()}
            label_of = {f.name: lowered[f.name.lower()] for f in folders if f.name.lower() in lowered}
            if not label_of:
                raise ImageSourceError(
                    f"{root}: none of the subfolders {[f.name for f in folders][:10]} is named in "
                    f"the class mapping {sorted(lowered)}")
            classes = sorted(label_of, key=lambda n: label_of[n])
        paths, labels = [], []
        for folder in folders:
            if folder.name not in label_of:
                continue
            files = sorted(f for f in folder.iterdir() if images_lib.is_image_file(f.name))
            paths += files
            labels += [label_of[folder.name]] * len(files)
        if not paths:
            raise ImageSourceError(f"{root}: the class folders hold no images")
        super().__init__(paths, labels, classes)
        self.root = root


class AffWild2Frames(FileImages):
    """``cropped_aligned`` frames of an Aff-Wild2 split with valid EXPR labels.

    ``every`` keeps one frame in ``every`` of each video (neighbouring frames are near copies).
    """

    def __init__(self, root: str | os.PathLike, split: str, *, every: int = 1):
        root = Path(root).expanduser()
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        frames = root / affwild2.FRAMES_DIR
        if not frames.is_dir():
            raise ImageSourceError(f"{frames}: no cropped_aligned folder (the frame images)")
        paths, labels = [], []
        for video in affwild2.load_split(root, "EXPR", split):
            keep = np.flatnonzero(video.present & video.valid)[::every]
            paths += [frames / video.name / f"{t + 1:05d}.jpg" for t in keep]
            labels += video.labels[keep].tolist()
        if not paths:
            raise ImageSourceError(f"{root}: the {split} split has no frame with an image and a valid EXPR label")
        super().__init__(paths, labels, affwild2.EXPR_CLASSES)


class TfdsImages:
    """A prepared TFDS dataset through ``tfds.data_source`` (ArrayRecord, read without TensorFlow)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None, *,
                 image_key: str = "image", label_key: str = "label"):
        import tensorflow_datasets as tfds
        try:
            self.source = tfds.data_source(name, split=split, data_dir=data_dir)
        except Exception as e:  # noqa: BLE001 - tfds raises many types for a missing dataset
            raise ImageSourceError(
                f"tfds dataset {name!r} split {split!r} in {data_dir or 'the default data_dir'}: "
                f"{type(e).__name__}: {e}") from None
        self.name, self.image_key, self.label_key = name, image_key, label_key
        self.split, self.data_dir = split, data_dir

    def __len__(self) -> int:
        return len(self.source)

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Every record's label, int32 ``[N]`` (for class weights), images left undecoded."""
        import tensorflow_datasets as tfds
        # A second reader that skips the image: PNG decoding would dominate a pass over labels.
        source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                                  decoders={self.image_key: tfds.decode.SkipDecoding()})
        return np.asarray([int(source[i][self.label_key]) for i in range(len(source))], np.int32)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        record = self.source[i]
        for key in (self.image_key, self.label_key):
            if key not in record:
                raise ImageSourceError(f"tfds {self.name}[{i}]: no key {key!r}; has {sorted(record)}")
        return _as_rgb_array(record[self.image_key], f"tfds {self.name}[{i}]"), int(record[self.label_key])


def split_by_group(
    source: FileImages, fraction: float, *, pattern: str, seed: int = 0,
) -> tuple[FileImages, FileImages, list[str]]:
    """``(train, held_out, held_out_groups)``: whole groups (e.g. subjects) held out together.

    The group of a file is the first capture group of ``pattern`` searched in its name
    (``r"^(S\\d+)_"`` for CK+ subjects); ``fraction`` of the groups (at least one) are held out.
    """
    regex = re.compile(pattern)
    groups = []
    for path in source.paths:
        m = regex.search(path.name)
        if not m:
            raise ImageSourceError(f"{path}: file name does not match the group pattern {pattern!r}")
        groups.append(m.group(1) if m.groups() else m.group(0))
    names = sorted(set(groups))
    if len(names) < 2:
        raise ImageSourceError(f"group pattern {pattern!r} finds {len(names)} group(s); need >= 2")
    count = min(max(1, round(fraction * len(names))), len(names) - 1)
    held = set(np.random.default_rng(seed).permutation(names)[:count].tolist())
    is_held = np.array([g in held for g in groups])
    return (source.subset(np.flatnonzero(~is_held)), source.subset(np.flatnonzero(is_held)),
            sorted(held))


# ---------------------------------------------------------------------------------------------
# Augmentation.


def random_resized_crop_box(
    height: int, width: int, rng: np.random.Generator, *, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` as torchvision's RandomResizedCrop draws it (10 tries, then centre)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augment(
    image: np.ndarray, size: tuple[int, int], rng: np.random.Generator, *,
    scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip: bool = True,
) -> np.ndarray:
    """Random resized crop (bicubic) to ``size`` and a horizontal flip with probability 1/2."""
    top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale=scale, ratio=ratio)
    out = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC,
                                        box=(left, top, left + w, top + h))
    out = np.asarray(out, np.uint8)
    if hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The whole image resized (bicubic) to ``size``."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC), np.uint8)


# ---------------------------------------------------------------------------------------------
# Pipelines.


def _hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    return int(image_size[0]), int(image_size[1])


def _process_rows(batch_size: int, process_index: int | None, process_count: int | None) -> tuple[int, int]:
    import jax
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if batch_size % count:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {count} processes")
    local = batch_size // count
    return index * local, (index + 1) * local


class _LoadTrainBatch:
    """Global batch number and its record indices -> this process's augmented rows."""

    def __init__(self, source, size, seed, lo, hi, aug: Mapping[str, Any]):
        self.source, self.size, self.seed, self.lo, self.hi, self.aug = source, size, seed, lo, hi, aug

    def __call__(self, batch_number: int, indices: np.ndarray) -> dict[str, np.ndarray]:
        images = np.zeros((self.hi - self.lo, *self.size, 3), np.uint8)
        labels = np.zeros((self.hi - self.lo,), np.int32)
        for row, j in enumerate(range(self.lo, self.hi)):
            image, label = self.source[int(indices[j])]
            # Keyed by the position in the stream: a new crop each epoch, the same after a resume.
            rng = np.random.default_rng([self.seed, int(batch_number), j])
            images[row] = augment(image, self.size, rng, **self.aug)
            labels[row] = label
        return {"image": images, "label": labels}


def train_batches(
    source: Sequence[tuple[np.ndarray, int]], *, image_size: int | Sequence[int], batch_size: int,
    seed: int, scale: Sequence[float] = (0.2, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True, num_threads: int = 2, prefetch: int | None = None,
    process_index: int | None = None, process_count: int | None = None,
) -> grain.DatasetIterator:
    """Endless shuffled, augmented batches ``{"image": uint8 [b, H, W, 3], "label": int32 [b]}``.

    ``batch_size`` is global; each process loads only its ``batch_size / process_count`` rows.
    The iterator has grain's ``get_state`` / ``set_state`` (checkpointed with the train state).
    """
    if len(source) < batch_size:
        raise ValueError(f"the source has {len(source)} images, fewer than batch_size {batch_size}")
    if not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    lo, hi = _process_rows(batch_size, process_index, process_count)
    aug = dict(scale=tuple(scale), ratio=tuple(ratio), hflip=hflip)
    ds = (grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
          .batch(batch_size, drop_remainder=True)
          .map_with_index(_LoadTrainBatch(source, _hw(image_size), seed, lo, hi, aug)))
    options = grain.ReadOptions(num_threads=num_threads,
                                prefetch_buffer_size=2 * num_threads if prefetch is None else prefetch)
    return iter(ds.to_iter_dataset(options))


def eval_batches(
    source: Sequence[tuple[np.ndarray, int]], *, image_size: int | Sequence[int], batch_size: int,
    process_index: int | None = None, process_count: int | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Every image once, resized, in order: ``image``, ``label`` and ``mask`` (False on padding)."""
    size = _hw(image_size)
    lo, hi = _process_rows(batch_size, process_index, process_count)
    for first in range(0, len(source), batch_size):
        images = np.zeros((hi - lo, *size, 3), np.uint8)
        labels = np.zeros((hi - lo,), np.int32)
        mask = np.zeros((hi - lo,), bool)
        for row, i in enumerate(range(first + lo, min(first + hi, len(source)))):
            image, label = source[i]
            images[row] = resize(image, size) if transform is None else transform(image)
            labels[row], mask[row] = label, True
        yield {"image": images, "label": labels, "mask": mask}


def num_classes(source) -> int:
    """The classes a source's labels index: Aff-Wild2's 8 expressions for its frames, the class
    folders (or the mapping's highest index + 1) for a folder, the label feature's classes (else
    the highest label + 1) for TFDS."""
    if isinstance(source, AffWild2Frames):
        return len(affwild2.EXPR_CLASSES)
    labels = np.asarray(source.labels)
    top = int(labels.max()) + 1 if labels.size else 0
    declared = len(getattr(source, "classes", ()) or ()) or int(getattr(source, "num_classes", 0) or 0)
    return max(declared, top)


def class_counts(source: FileImages, num_classes: int) -> np.ndarray:
    """Images per class ``[num_classes]`` (for class weights)."""
    if len(source.labels) and (source.labels.min() < 0 or source.labels.max() >= num_classes):
        raise ImageSourceError(
            f"labels span [{source.labels.min()}, {source.labels.max()}], outside [0, {num_classes}) "
            f"of config.num_classes = {num_classes} (0 takes the source's own class count)")
    return np.bincount(source.labels, minlength=num_classes)
