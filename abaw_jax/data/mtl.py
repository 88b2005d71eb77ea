"""The multi-task (MTL) challenge files of s-Aff-Wild2: annotations, test image list, layout.

s-Aff-Wild2 is a selection of frames of the Aff-Wild2 videos, each carrying all three label sets
at once. One annotation file per split::

    image,valence,arousal,expression,aus
    <video>/<NNNNN>.jpg,<valence>,<arousal>,<expression 0..7>,<AU1>,...,<AU26>

15 values after the image; missing labels are marked per task (per column for VA and AU):
valence / arousal -5, expression -1, AU -1. The frames of a video are a subset of its frames,
so consecutive lines may skip frame numbers. The test set is a list of images in the same
`<video>/<NNNNN>.jpg` form, one per line, with or without a header line.

Frame numbers. `MTLVideo.frames` holds the numbers written in the image names: 1-based, as in
`cropped_aligned/<video>/00001.jpg`. The feature stores and the video challenges index frames
from 0, so the feature row of frame number `f` is `f - 1` (`MTLVideo.indices`).

Where the files are found (`mtl_annotation_path`, `mtl_test_list_path`): in `<root>`, in
`<root>/MTL_Challenge/`, in any folder directly under `<root>` whose name contains
"Annotations", and in an `MTL_Challenge/` folder inside one of those; the test list may also be
in `<root>/names_of_videos_in_each_test_set/`. Split files are `training_set_annotations.txt`
and `validation_set_annotations.txt`, optionally with a release suffix
(`training_set_annotations_22.txt`); the test list is a `.txt` whose name has the word "test"
and says MTL (`MTL_Challenge_test_set_release.txt`), or any `.txt` with "test" in its name
inside an `MTL_Challenge/` folder.

Labels follow the conventions of `affwild2`: float32 VA, int32 expression and AUs, entries that
are not valid hold 0, and a separate bool mask says which are valid.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from abaw_jax.data import affwild2
from abaw_jax.data.affwild2 import AU_NAMES, EXPR_CLASSES, AnnotationError, LayoutError
from abaw_jax.data.features import FeatureSets, FeatureStore, StoreError

MTL_HEADER = "image,valence,arousal,expression,aus"
MTL_DIR = "MTL_Challenge"
SPLIT_FILES = {"train": "training_set_annotations", "val": "validation_set_annotations"}
# Valence, arousal, expression, then the 12 AUs.
NUM_VALUES = 2 + 1 + len(AU_NAMES)
COLUMN_NAMES = ("valence", "arousal", "expression") + AU_NAMES
VA_INVALID, EXPR_INVALID, AU_INVALID = -5, -1, -1

# `<video>/<NNNNN>.jpg`: a video name has no separators, commas or spaces; five digits as in
# cropped_aligned/ (the longest Aff-Wild2 video has fewer than 100,000 frames).
_IMAGE_RE = re.compile(r"([^/\\,\s]+)/(\d{5})\.jpg")
_TEST_HEADER_NAMES = ("image", "image_location")


@dataclasses.dataclass(frozen=True, eq=False)
class MTLVideo:
    """The selected frames of one video and their three label sets, ordered by frame number.

    `frames` are the 1-based numbers of the image names (int64 [n], strictly increasing); the
    feature-store row of each is `indices` = frames - 1. Labels hold 0 where not valid.
    """

    name: str
    frames: np.ndarray  # int64 [n]
    va: np.ndarray  # float32 [n, 2]
    va_valid: np.ndarray  # bool [n, 2]
    expr: np.ndarray  # int32 [n]
    expr_valid: np.ndarray  # bool [n]
    au: np.ndarray  # int32 [n, 12]
    au_valid: np.ndarray  # bool [n, 12]

    def __post_init__(self):
        n = self.frames.shape[0] if self.frames.ndim == 1 else -1
        shapes = {"frames": (n,), "va": (n, 2), "va_valid": (n, 2), "expr": (n,), "expr_valid": (n,),
                  "au": (n, len(AU_NAMES)), "au_valid": (n, len(AU_NAMES))}
        for field, shape in shapes.items():
            got = getattr(self, field).shape
            if got != shape or n <= 0:
                raise ValueError(f"MTLVideo {self.name!r}: {field} must have shape {shape} with n > 0, got {got}")
        if self.frames[0] < 1 or np.any(np.diff(self.frames) <= 0):
            raise ValueError(f"MTLVideo {self.name!r}: frame numbers must be >= 1 and strictly increasing")

    @property
    def num_rows(self) -> int:
        """Number of selected frames."""
        return int(self.frames.shape[0])

    @property
    def indices(self) -> np.ndarray:
        """0-based frame indices (rows of the video's feature-store entry): frames - 1."""
        return self.frames - 1

    def labels(self, task: str) -> np.ndarray:
        """The label array of `task` ("VA", "EXPR", "AU"), shaped like the video challenges' labels."""
        return {"VA": self.va, "EXPR": self.expr, "AU": self.au}[affwild2.check_task(task)]

    def valid(self, task: str) -> np.ndarray:
        """The valid mask of `task`, per column for VA and AU."""
        return {"VA": self.va_valid, "EXPR": self.expr_valid, "AU": self.au_valid}[affwild2.check_task(task)]

    def images(self) -> list[str]:
        """The image names `<video>/<NNNNN>.jpg` of the selected frames, in order."""
        return [image_name(self.name, int(f)) for f in self.frames]


def image_name(video: str, frame: int) -> str:
    """`<video>/<NNNNN>.jpg` for a 1-based frame number."""
    if not 1 <= frame <= 99999:
        raise ValueError(f"frame number {frame} of video {video!r} is outside 1..99999")
    return f"{affwild2.check_video_name(video)}/{frame:05d}.jpg"


def parse_image_name(text: str) -> tuple[str, int] | None:
    """(video, 1-based frame number) of `<video>/<NNNNN>.jpg`, or None when `text` is not one."""
    m = _IMAGE_RE.fullmatch(text)
    if not m or int(m.group(2)) == 0:
        return None
    return m.group(1), int(m.group(2))


def _image_error(where: str, text: str) -> AnnotationError:
    return AnnotationError(f"{where}: image {text!r} is not <video>/<NNNNN>.jpg (5 digits, from 00001)")


# --------------------------------------------------------------------------- annotation files


def _first_bad_line(path: pathlib.Path, rests: list[str], line_numbers: list[int]) -> AnnotationError | None:
    """The error of the first line whose value count or numbers are wrong (the slow path)."""
    for rest, lineno in zip(rests, line_numbers):
        fields = rest.split(",")
        if len(fields) != NUM_VALUES:
            return AnnotationError(
                f"{path}:{lineno}: expected {NUM_VALUES} comma-separated values after the image "
                f"(valence, arousal, expression, 12 AUs), got {len(fields)}")
        for name, field in zip(COLUMN_NAMES, fields):
            if not affwild2.NUMBER_RE.fullmatch(field):
                if field.strip().lower().lstrip("+-") == "nan":
                    return AnnotationError(f"{path}:{lineno}: {name} is NaN")
                return AnnotationError(f"{path}:{lineno}: non-numeric {name} value {field.strip()!r}")
    return None


def _value_error(path, line_numbers, bad: np.ndarray, values: np.ndarray, what: str) -> AnnotationError:
    row, col = (int(i) for i in np.argwhere(bad)[0])
    return AnnotationError(f"{path}:{line_numbers[row]}: {COLUMN_NAMES[col]} = {values[row, col]:g} {what}")


def read_mtl_annotation(path: str | os.PathLike) -> list[MTLVideo]:
    """Reads one MTL annotation file into its videos, sorted by name, rows ordered by frame number.

    The lines of the file may come in any order. Raises AnnotationError (`<path>:<line>: ...`) for
    a wrong header, a wrong value count, a bad image name, a non-numeric or out-of-range value
    (VA outside [-1, 1] and not -5; expression not in -1..7; an AU not -1, 0 or 1) or a frame
    listed twice.
    """
    path = pathlib.Path(path)
    text = affwild2.read_text(path).rstrip()
    if not text:
        raise AnnotationError(f"{path}:1: empty file (expected the header {MTL_HEADER!r})")
    header, _, body = text.partition("\n")
    if header.strip() != MTL_HEADER:
        raise AnnotationError(f"{path}:1: expected the MTL header {MTL_HEADER!r}, got {header.strip()!r}")
    if not body:
        raise AnnotationError(f"{path}:2: no frame lines after the header")

    names: list[str] = []
    frames: list[int] = []
    rests: list[str] = []
    for lineno, line in enumerate(body.split("\n"), start=2):
        image, comma, rest = line.partition(",")
        if not line.strip():
            # Each line names its frame, so a blank line loses nothing; but no release has one,
            # and it usually means a file was cut or concatenated by hand.
            raise AnnotationError(f"{path}:{lineno}: blank line before the last frame")
        parsed = parse_image_name(image.strip())
        if parsed is None:
            raise _image_error(f"{path}:{lineno}", image.strip())
        names.append(parsed[0])
        frames.append(parsed[1])
        rests.append(rest if comma else "")
    line_numbers = list(range(2, 2 + len(rests)))

    # Fast path for the whole file; loadtxt skips empty lines (an image with no values), which
    # the shape check catches, and the slow path then names the line.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            values = np.loadtxt(io.StringIO("\n".join(rests)), delimiter=",", comments=None, dtype=np.float64,
                                ndmin=2)
        shape_ok = values.shape == (len(rests), NUM_VALUES)
    except ValueError:
        shape_ok = False
    if not shape_ok:
        error = _first_bad_line(path, rests, line_numbers)
        raise error or AnnotationError(f"{path}: cannot parse the values")

    if not np.isfinite(values).all():
        raise _value_error(path, line_numbers, ~np.isfinite(values), values, "is not finite")
    va, expr, au = values[:, :2], values[:, 2:3], values[:, 3:]
    va_invalid = va == VA_INVALID
    bad = ~va_invalid & (np.abs(va) > 1)
    if bad.any():
        raise _value_error(path, line_numbers, bad, va, "is outside [-1, 1] (and not the invalid marker -5)")
    bad = ~np.isin(expr, np.arange(EXPR_INVALID, len(EXPR_CLASSES)))
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise AnnotationError(f"{path}:{line_numbers[row]}: expression = {expr[row, 0]:g} is not a class index "
                              f"0..{len(EXPR_CLASSES) - 1} (or -1)")
    bad = ~np.isin(au, (AU_INVALID, 0, 1))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise AnnotationError(f"{path}:{line_numbers[row]}: {AU_NAMES[col]} = {au[row, col]:g} is not 0, 1 (or -1)")

    video_names, video_of = np.unique(np.asarray(names, dtype=object), return_inverse=True)
    frame_numbers = np.asarray(frames, np.int64)
    order = np.lexsort((frame_numbers, video_of))
    same = (video_of[order][1:] == video_of[order][:-1]) & (frame_numbers[order][1:] == frame_numbers[order][:-1])
    if same.any():
        # lexsort is stable: of two equal rows, the earlier line comes first.
        first, again = order[np.flatnonzero(same)[0]], order[np.flatnonzero(same)[0] + 1]
        raise AnnotationError(f"{path}:{line_numbers[again]}: frame {names[again]}/{frames[again]:05d}.jpg is "
                              f"listed again (first on line {line_numbers[first]})")

    labels_va = np.where(va_invalid, 0.0, va).astype(np.float32)
    expr_valid = expr[:, 0] != EXPR_INVALID
    labels_expr = np.where(expr_valid, expr[:, 0], 0).astype(np.int32)
    au_valid = au != AU_INVALID
    labels_au = np.where(au_valid, au, 0).astype(np.int32)
    bounds = np.searchsorted(video_of[order], np.arange(len(video_names) + 1))
    videos = []
    for k, name in enumerate(video_names):
        rows = order[bounds[k]:bounds[k + 1]]
        videos.append(MTLVideo(str(name), frame_numbers[rows], labels_va[rows], ~va_invalid[rows],
                               labels_expr[rows], expr_valid[rows], labels_au[rows], au_valid[rows]))
    return videos


def _lines(task: str, labels: np.ndarray, valid: np.ndarray, where: str) -> list[str]:
    """The value text of each row, formatted as the video challenges' annotation files do."""
    text = affwild2.format_annotation(task, labels, valid, where=where).decode()
    return text.split("\n")[1:-1]  # without the header and the empty string after the last newline


def format_mtl_annotation(videos: Sequence[MTLVideo], *, where: str = "videos") -> bytes:
    """The bytes of an MTL annotation file: the header, then the rows of each video in the given order.

    VA has `affwild2.VA_DECIMALS` decimals; entries that are not valid become -5 (VA, per column)
    or -1 (expression, AU per column), whatever their label array holds.
    """
    seen: set[str] = set()
    out = [MTL_HEADER]
    for v in videos:
        if v.name in seen:
            raise ValueError(f"{where}: video {v.name!r} appears twice")
        seen.add(v.name)
        va = _lines("VA", v.va, v.va_valid, f"{where}[{v.name!r}]")
        expr = _lines("EXPR", v.expr, v.expr_valid, f"{where}[{v.name!r}]")
        au = _lines("AU", v.au, v.au_valid, f"{where}[{v.name!r}]")
        out += [f"{image},{a},{e},{u}" for image, a, e, u in zip(v.images(), va, expr, au)]
    if len(out) == 1:
        raise ValueError(f"{where}: no videos to write")
    return ("\n".join(out) + "\n").encode()


def write_mtl_annotation(path: str | os.PathLike, videos: Sequence[MTLVideo]) -> None:
    """Writes an MTL annotation file (see `format_mtl_annotation`); `read_mtl_annotation` reads it back."""
    path = pathlib.Path(path)
    path.write_bytes(format_mtl_annotation(videos, where=str(path)))


# --------------------------------------------------------------------------- test image list


def read_mtl_test_list(path: str | os.PathLike) -> list[tuple[str, int]]:
    """The (video, 1-based frame number) of each image of a test list, in file order.

    One `<video>/<NNNNN>.jpg` per line; blank lines are skipped; the first line may be a header
    whose first field is `image` or `image_location` (such as the MTL header); empty fields after
    the image (`<image>,,,`) are tolerated. An image listed twice is an error.
    """
    path = pathlib.Path(path)

    def entries():
        first = True
        for lineno, line in enumerate(affwild2.read_text(path).split("\n"), start=1):
            if not line.strip():
                continue
            image, _, rest = line.partition(",")
            image = image.strip()
            if first and image.lower() in _TEST_HEADER_NAMES:
                first = False
                continue
            first = False
            if rest.strip(", \t"):
                raise AnnotationError(f"{path}:{lineno}: expected one image per line, got "
                                      f"{line.strip()!r}")
            parsed = parse_image_name(image)
            if parsed is None:
                raise _image_error(f"{path}:{lineno}", image)
            yield lineno, parsed, image

    return affwild2.listed_once(path, entries(), "image", "no images listed")


def write_mtl_test_list(path: str | os.PathLike, images: Sequence[tuple[str, int]], *, header: bool = True) -> None:
    """Writes a test image list: an `image` header line (unless header=False), then one image per line."""
    lines = (["image"] if header else []) + [image_name(v, f) for v, f in images]
    if len(set(images)) != len(images):
        raise ValueError(f"{path}: an image is listed twice")
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


def mtl_test_videos(images: Sequence[tuple[str, int]]) -> list[MTLVideo]:
    """The listed frames grouped into videos (sorted by name, frames ascending), labels 0, nothing valid.

    Gives test images the same shape as annotated videos, for code that reads features per video.
    """
    by_video: dict[str, list[int]] = {}
    for video, frame in images:
        by_video.setdefault(video, []).append(frame)
    videos = []
    for name in sorted(by_video):
        frames = np.unique(np.asarray(by_video[name], np.int64))
        if frames.size != len(by_video[name]):
            raise ValueError(f"video {name!r}: a frame is listed twice")
        n, k = frames.size, len(AU_NAMES)
        videos.append(MTLVideo(name, frames, np.zeros((n, 2), np.float32), np.zeros((n, 2), bool),
                               np.zeros(n, np.int32), np.zeros(n, bool), np.zeros((n, k), np.int32),
                               np.zeros((n, k), bool)))
    return videos


def gather_frames(per_video: Mapping[str, np.ndarray], images: Sequence[tuple[str, int]]) -> np.ndarray:
    """Rows `per_video[video][frame - 1]` for each listed image, stacked in list order.

    `per_video` holds one array per video indexed by 0-based frame (a feature-store entry, or a
    model's outputs over every frame of the video).
    """
    rows = []
    for video, frame in images:
        if video not in per_video:
            raise KeyError(f"no entry for video {video!r}")
        values = per_video[video]
        if not 1 <= frame <= len(values):
            raise IndexError(f"{image_name(video, frame)}: frame beyond the {len(values)} frames of the entry")
        rows.append(values[frame - 1])
    if not rows:
        raise ValueError("no images")
    return np.stack(rows)


def split_arrays(videos: Sequence[MTLVideo]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(labels, valid), each {"VA", "EXPR", "AU"} -> the rows of all videos concatenated in order."""
    if not videos:
        raise ValueError("no videos")
    labels = {t: np.concatenate([v.labels(t) for v in videos]) for t in affwild2.TASKS}
    valid = {t: np.concatenate([v.valid(t) for v in videos]) for t in affwild2.TASKS}
    return labels, valid


# --------------------------------------------------------------------------- layout


def _search_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    """Folders that may hold MTL files, preferred first."""
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset root is not a folder")
    annotations = sorted(p for p in root.iterdir() if p.is_dir() and "annotations" in p.name.lower())
    dirs = [root, root / MTL_DIR]
    for folder in annotations:
        dirs += [folder, folder / MTL_DIR]
    return [d for d in dirs if d.is_dir()]


def _split_file_re(split: str) -> re.Pattern:
    return re.compile(re.escape(SPLIT_FILES[split]) + r"(?:_[A-Za-z0-9]+)?\.txt", re.IGNORECASE)


def mtl_annotation_path(root: str | os.PathLike, split: str) -> pathlib.Path:
    """The MTL annotation file of `split` ("train" | "val") under `root` (see the module doc).

    Exactly one candidate must exist; several (say `training_set_annotations.txt` next to
    `training_set_annotations_22.txt`) are an error naming them, never a silent pick.
    """
    root = pathlib.Path(root)
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_FILES)}")
    pattern = _split_file_re(split)
    found = [p for d in _search_dirs(root) for p in sorted(d.iterdir()) if p.is_file() and pattern.fullmatch(p.name)]
    if len(found) != 1:
        listed = ", ".join(str(p) for p in found) or "none"
        raise LayoutError(f"{root}: expected one MTL {split} annotation file ({SPLIT_FILES[split]}[_<suffix>].txt "
                          f"in the root, {MTL_DIR}/ or a folder named *Annotations*), found {len(found)}: {listed}")
    return found[0]


def _is_test_list(path: pathlib.Path) -> bool:
    words = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
    if "test" not in words or path.suffix != ".txt" or not path.is_file():
        return False
    return path.parent.name == MTL_DIR or "mtl" in words or {"multi", "task"} <= words


def mtl_test_list_path(root: str | os.PathLike) -> pathlib.Path:
    """The MTL test image list under `root`, e.g. `MTL_Challenge_test_set_release.txt` (see the module doc)."""
    root = pathlib.Path(root)
    dirs = _search_dirs(root)
    if (root / affwild2.TEST_LISTS_DIR).is_dir():
        dirs.append(root / affwild2.TEST_LISTS_DIR)
    found = [p for d in dirs for p in sorted(d.iterdir()) if _is_test_list(p)]
    if len(found) != 1:
        listed = ", ".join(str(p) for p in found) or "none"
        raise LayoutError(f"{root}: expected one MTL test image list (a .txt named like "
                          f"MTL_Challenge_test_set_release.txt), found {len(found)}: {listed}")
    return found[0]


def load_mtl_split(root: str | os.PathLike, split: str) -> list[MTLVideo]:
    """The videos of the MTL annotation file of `split` ("train" | "val") under `root`."""
    return read_mtl_annotation(mtl_annotation_path(root, split))


def load_mtl_test(root: str | os.PathLike) -> list[tuple[str, int]]:
    """The images of the MTL test list under `root`, in list order (the order of the submission)."""
    return read_mtl_test_list(mtl_test_list_path(root))



# --------------------------------------------------------------------------- models over MTL rows
#
# The temporal models read a video's annotated frames as one sequence, in frame order: position
# p of a window is the p-th annotated frame, whatever the gap to the one before (s-Aff-Wild2
# samples frames, so positions count selected frames, not time). Labels of the three tasks are
# packed into one array per video, and model outputs into one array per frame:

#: Columns of the packed labels [n, 15]: valence, arousal, expression (as a number), 12 AUs.
LABEL_COLUMNS = {"VA": slice(0, 2), "EXPR": slice(2, 3), "AU": slice(3, 3 + len(AU_NAMES))}
#: Columns of a model's outputs [n, 22]: VA values, 8 EXPR logits, 12 AU logits.
OUTPUT_COLUMNS = {"VA": slice(0, 2), "EXPR": slice(2, 10), "AU": slice(10, 10 + len(AU_NAMES))}
NUM_OUTPUTS = 2 + len(EXPR_CLASSES) + len(AU_NAMES)


def as_video(v: MTLVideo) -> affwild2.Video:
    """The annotated rows of `v` as a sequence the temporal pipeline reads: one "frame" per row,
    labels and valid masks packed per `LABEL_COLUMNS`, every row present (it has an image)."""
    labels = np.concatenate([v.va, v.expr[:, None].astype(np.float32), v.au.astype(np.float32)],
                            axis=1).astype(np.float32)
    valid = np.concatenate([v.va_valid, v.expr_valid[:, None], v.au_valid], axis=1)
    return affwild2.Video(v.name, v.num_rows, labels, valid, np.ones(v.num_rows, bool))


def unpack_labels(labels: np.ndarray, valid: np.ndarray) -> tuple[dict, dict]:
    """Packed labels and masks [N, 15] -> ({task: labels}, {task: valid}) as the metrics take."""
    out_l = {"VA": labels[:, LABEL_COLUMNS["VA"]].astype(np.float64),
             "EXPR": labels[:, 2].astype(np.int64),
             "AU": labels[:, LABEL_COLUMNS["AU"]].astype(np.int64)}
    out_v = {"VA": valid[:, LABEL_COLUMNS["VA"]], "EXPR": valid[:, 2], "AU": valid[:, LABEL_COLUMNS["AU"]]}
    return out_l, out_v


def unpack_outputs(outputs: np.ndarray) -> dict[str, np.ndarray]:
    """Model outputs [N, 22] -> {"VA": [N, 2], "EXPR": [N, 8] logits, "AU": [N, 12] logits}."""
    return {task: outputs[:, cols] for task, cols in OUTPUT_COLUMNS.items()}


class AnnotatedRows(FeatureStore):
    """A feature store seen through the annotated rows of each video: `read(video)` gives the
    rows of the listed frames, in order. It stands in for the store wherever the temporal
    pipeline reads one; `annotated_rows` wraps each store of a `FeatureSets` the same way."""

    def __init__(self, store: FeatureStore, rows: Mapping[str, np.ndarray]):   # noqa: D107
        # The store's own files were checked when it was opened; only the row lists are new.
        self.store = store
        self.path, self.meta, self.dim = store.path, store.meta, store.dim
        self.dtype, self.extractor = store.dtype, store.extractor
        self.rows = {name: np.asarray(r, np.int64) for name, r in rows.items()}
        for name, r in self.rows.items():
            if name not in store:
                continue   # reported by the caller, which knows the split
            n = store.num_frames(name)
            if r.size and (r.min() < 0 or r.max() >= n):
                bad = int(r[(r < 0) | (r >= n)][0])
                raise StoreError(f"{store.path}: video {name!r} has {n} frames; the MTL "
                                 f"annotations list frame {bad + 1}")
        self.videos = sorted(set(self.rows) & set(store.videos))

    def __contains__(self, video: str) -> bool:
        return video in self.rows and video in self.store

    def __len__(self) -> int:
        return len(self.videos)

    def num_frames(self, video: str) -> int:
        """Number of annotated rows of `video`."""
        return int(self._rows_of(video).size)

    def _rows_of(self, video: str) -> np.ndarray:
        if video not in self.rows:
            raise StoreError(f"{self.path}: video {video!r} has no annotated rows")
        return self.rows[video]

    def read(self, video: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The feature rows of the annotated frames [start, stop) of `video` (a copy)."""
        return self.store.read(video)[self._rows_of(video)[start:stop]]

    def present(self, video: str) -> np.ndarray:
        """Bool per annotated frame: it had a face image."""
        return self.store.present(video)[self._rows_of(video)]


def annotated_rows(features, videos: Sequence[MTLVideo]):
    """`features` (a FeatureStore or FeatureSets) seen through the annotated rows of `videos`."""
    rows = {v.name: v.indices for v in videos}
    if isinstance(features, FeatureSets):
        return FeatureSets({name: AnnotatedRows(s, rows) for name, s in features.stores.items()})
    return AnnotatedRows(features, rows)
