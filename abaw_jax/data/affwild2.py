"""The official Aff-Wild2 layout: annotation files, splits, test lists, video names, frame images.

Layout (6th ABAW naming; older releases say `EXPR_Classification_Challenge`)::

    <root>/6th ABAW Annotations/<Challenge>/{Train_Set,Validation_Set}/<video>.txt
    <root>/cropped_aligned/<video>/00001.jpg ...       # 5-digit, 1-based; no image = no face
    <root>/names_of_videos_in_each_test_set/<...>_test_set_release.txt

The annotation folder may also be any folder directly under `<root>` whose name ends in
"Annotations", or `<root>` itself when it holds the challenge folders.

Frame count reconciliation. The annotation file defines the frames of a video: one line per
frame, line `t + 2` is frame `t` (0-based). Images numbered beyond the last annotated frame are
ignored (their number is logged once per video); annotated frames without an image get
`present = False`. A test video has no annotation file: its frame count is taken from
`frame_counts` when given, otherwise it is the highest image number in its cropped_aligned
folder (frames after the last face image cannot be seen that way, so pass `frame_counts`, e.g.
from the feature store, when they matter).

When `<root>` has no `cropped_aligned/` folder at all (feature-only setups, the demo dataset),
`frames_present` returns None and `Video.present` is all True: the feature store's present
mask is then the authority on which frames had a face, and callers combine the two with a
logical and. A `cropped_aligned/` folder that lacks a video, or holds no image of it, is an
error rather than a silent "no face anywhere".
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np

TASKS = ("VA", "EXPR", "AU")
EXPR_CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
VA_NAMES = ("valence", "arousal")
# Model outputs per task; "MTL" (the multi-task challenge, data/mtl.py) packs all three.
NUM_OUTPUTS = {"VA": 2, "EXPR": 8, "AU": 12, "MTL": 2 + 8 + 12}
SPLITS = {"train": "Train_Set", "val": "Validation_Set"}

# Folder names per task, preferred first.
CHALLENGE_DIRS = {
    "VA": ("VA_Estimation_Challenge",),
    "EXPR": ("EXPR_Recognition_Challenge", "EXPR_Classification_Challenge"),
    "AU": ("AU_Detection_Challenge",),
}
ANNOTATIONS_DIR = "6th ABAW Annotations"
FRAMES_DIR = "cropped_aligned"
TEST_LISTS_DIR = "names_of_videos_in_each_test_set"

HEADERS = {"VA": ",".join(VA_NAMES), "EXPR": ",".join(EXPR_CLASSES), "AU": ",".join(AU_NAMES)}
# Columns of an annotation line: EXPR has one value although its header names eight classes.
_NUM_COLUMNS = {"VA": 2, "EXPR": 1, "AU": 12}
_INVALID = {"VA": -5, "EXPR": -1, "AU": -1}
# Any one of these word sets, all present in a test list's file name, marks the task.
_TEST_LIST_KEYWORDS = {
    "VA": ({"valence"}, {"arousal"}, {"va"}),
    "EXPR": ({"expression"}, {"expr"}),
    "AU": ({"action", "unit"}, {"au"}),
}
VA_DECIMALS = 3

_FRAME_RE = re.compile(r"(\d{5})\.jpg")
NUMBER_RE = re.compile(r"[ \t]*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[ \t]*")
_BLANK_LINE_RE = re.compile(r"\n[ \t]*(?=\n)")
_SIDE_RE = re.compile(r"(.+)_(left|right)")
_RESOLUTION_RE = re.compile(r"(\d+)-(\d+)-(\d+)x(\d+)(?:-\d+)?")

log = logging.getLogger(__name__)
_reported_extra_images: set[str] = set()


class AnnotationError(ValueError):
    """A malformed annotation or video-list file; the message starts with `<path>:<line>:`."""


class LayoutError(ValueError, FileNotFoundError):
    """A folder or file the official layout requires is missing or empty; the message names it."""


def read_frame_counts(path: str | os.PathLike) -> dict[str, int]:
    """``{video: frames}`` from a CSV of ``name,frames`` rows (a header line is optional).

    Names keep no video-file suffix (``1-30-1280x720.mp4`` -> ``1-30-1280x720``), as in
    Aff-Wild2's ``counter_frame.csv``.
    """
    path = pathlib.Path(path)
    counts: dict[str, int] = {}
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise AnnotationError(f"{path}: line {lineno}: expected 'name,frames', got {row!r}")
            name, value = row[0].strip(), row[1].strip()
            try:
                frames = int(value)
            except ValueError:
                if lineno == 1:
                    continue  # the header
                raise AnnotationError(
                    f"{path}: line {lineno}: frame count {value!r} is not an integer") from None
            if frames < 1:
                raise AnnotationError(f"{path}: line {lineno}: frame count {frames} must be >= 1")
            stem, dot, suffix = name.rpartition(".")
            if dot and suffix.lower() in ("mp4", "avi", "mkv", "mov", "webm"):
                name = stem
            if name in counts:
                raise AnnotationError(f"{path}: line {lineno}: video {name!r} listed twice")
            counts[name] = frames
    return counts


@dataclasses.dataclass(frozen=True, eq=False)
class Annotation:
    """Labels of one annotation file: `labels` and `valid` as in the table of docs/architecture.md."""

    task: str
    labels: np.ndarray
    valid: np.ndarray

    @property
    def num_frames(self) -> int:
        """Number of frames (lines after the header)."""
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Video:
    """One video of a split: per-frame labels, valid masks and present mask, all of length num_frames."""

    name: str
    num_frames: int
    labels: np.ndarray
    valid: np.ndarray
    present: np.ndarray


@dataclasses.dataclass(frozen=True)
class VideoName:
    """What an Aff-Wild2 video name says: `<id>-<fps>-<W>x<H>[-<part>]`, `<id>`, `video<id>[_<part>]`,
    each optionally with `_left` / `_right` when two people share the source video.

    `fps` and `size` (width, height) are as written in the name (None when the name has none);
    the name's fps is not always the true frame rate of the file.
    """

    name: str
    source: str
    side: str | None
    fps: int | None
    size: tuple[int, int] | None


def check_task(task: str) -> str:
    """`task` when it is one of the video challenges' tasks, else a ValueError."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return task


def check_video_name(name: str) -> str:
    """`name` when it can name a video (no path separators, no surrounding spaces)."""
    if not isinstance(name, str) or not name or name != name.strip() or "/" in name or "\\" in name:
        raise ValueError(f"not a video name: {name!r}")
    return name


def source_video(name: str) -> str:
    """The source video of `name`: `_left` / `_right` stripped (both people share one source)."""
    m = _SIDE_RE.fullmatch(check_video_name(name))
    return m.group(1) if m else name


def parse_video_name(name: str) -> VideoName:
    """Splits a video name into source, side, and the fps and size its name carries."""
    m = _SIDE_RE.fullmatch(check_video_name(name))
    source, side = (m.group(1), m.group(2)) if m else (name, None)
    fps = size = None
    r = _RESOLUTION_RE.fullmatch(source)
    if r:
        fps = int(r.group(2))
        size = (int(r.group(3)), int(r.group(4)))
    return VideoName(name=name, source=source, side=side, fps=fps, size=size)


# --------------------------------------------------------------------------- annotation files


def read_text(path: pathlib.Path) -> str:
    """The text of an annotation or list file (UTF-8, BOM tolerated); errors name the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LayoutError(f"{path}: no such file") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise AnnotationError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None
    return text.replace("\r\n", "\n")


def _first_bad_line(path: pathlib.Path, lines: list[str], task: str, columns: int) -> AnnotationError | None:
    """The error for the first line whose shape or numbers are wrong (the slow path)."""
    for i, line in enumerate(lines):
        fields = line.split(",")
        where = f"{path}:{i + 2}"
        if len(fields) != columns:
            return AnnotationError(
                f"{where}: expected {columns} comma-separated value{'s' * (columns > 1)} for "
                f"{task}, got {len(fields)}: {line.strip()!r}"
            )
        for field in fields:
            if not NUMBER_RE.fullmatch(field):
                if field.strip().lower().lstrip("+-") == "nan":
                    return AnnotationError(f"{where}: NaN value: {line.strip()!r}")
                return AnnotationError(f"{where}: non-numeric value {field.strip()!r}")
    return None


def _column_error(path: pathlib.Path, bad: np.ndarray, values: np.ndarray, task: str, what: str) -> AnnotationError:
    row, col = (int(i) for i in np.argwhere(bad)[0])
    names = {"VA": VA_NAMES, "EXPR": ("expression",), "AU": AU_NAMES}[task]
    return AnnotationError(f"{path}:{row + 2}: {names[col]} = {float(values[row, col]):g} {what}")


def read_annotation(path: str | os.PathLike, task: str) -> Annotation:
    """Reads one official annotation file (header line, then one line per frame)."""
    path = pathlib.Path(path)
    check_task(task)
    text = read_text(path)
    # Trailing whitespace and blank lines at the end carry no frame; blank lines before the last
    # frame line would shift every later frame, so they are errors.
    text = text.rstrip()
    if not text:
        raise AnnotationError(f"{path}:1: empty file (expected the {task} header)")
    header, _, body = text.partition("\n")
    if header.strip() != HEADERS[task]:
        raise AnnotationError(f"{path}:1: expected the {task} header {HEADERS[task]!r}, got {header.strip()!r}")
    if not body:
        raise AnnotationError(f"{path}:2: no frame lines after the header")
    blank = _BLANK_LINE_RE.search("\n" + body)
    if blank:
        raise AnnotationError(f"{path}:{body.count(chr(10), 0, blank.start()) + 2}: blank line before the last frame")

    columns = _NUM_COLUMNS[task]
    try:
        values = np.loadtxt(io.StringIO(body), delimiter=",", comments=None, dtype=np.float64, ndmin=2)
    except ValueError as e:
        error = _first_bad_line(path, body.split("\n"), task, columns)
        raise (error or AnnotationError(f"{path}: cannot parse: {e}")) from None
    if values.shape[1] != columns:
        error = _first_bad_line(path, body.split("\n"), task, columns)
        raise error or AnnotationError(f"{path}: expected {columns} values per line, got {values.shape[1]}")

    nan = np.isnan(values)
    if nan.any():
        raise _column_error(path, nan, values, task, "is NaN")
    if not np.isfinite(values).all():
        raise _column_error(path, ~np.isfinite(values), values, task, "is not finite")
    invalid = values == _INVALID[task]
    if task == "VA":
        bad = ~invalid & ((values < -1) | (values > 1))
        if bad.any():
            raise _column_error(path, bad, values, task, "is outside [-1, 1] (and not the invalid marker -5)")
        labels = np.where(invalid, 0.0, values).astype(np.float32)
        return Annotation(task, labels, ~invalid)
    if task == "EXPR":
        bad = ~np.isin(values, np.arange(-1, len(EXPR_CLASSES)))
        if bad.any():
            raise _column_error(path, bad, values, task, f"is not a class index 0..{len(EXPR_CLASSES) - 1} (or -1)")
        return Annotation(task, np.where(invalid, 0, values)[:, 0].astype(np.int32), ~invalid[:, 0])
    bad = ~np.isin(values, (-1, 0, 1))
    if bad.any():
        raise _column_error(path, bad, values, task, "is not 0, 1 (or -1)")
    return Annotation(task, np.where(invalid, 0, values).astype(np.int32), ~invalid)


def _checked_arrays(where: str, task: str, labels, valid) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    valid = np.asarray(valid, dtype=bool)
    columns = () if task == "EXPR" else (_NUM_COLUMNS[task],)
    if labels.ndim != 1 + len(columns) or labels.shape[1:] != columns or labels.shape[0] == 0:
        expected = "[T > 0" + "".join(f", {c}" for c in columns) + "]"
        raise ValueError(f"{where}: {task} labels must have shape {expected}, got {labels.shape}")
    if valid.shape != labels.shape:
        raise ValueError(f"{where}: {task} valid must have shape {labels.shape}, got {valid.shape}")
    if task == "VA":
        ok = np.isfinite(labels) & (np.abs(labels) <= 1)
        what = "not in [-1, 1]"
    elif task == "EXPR":
        ok = np.isin(labels, np.arange(len(EXPR_CLASSES)))
        what = f"not a class index 0..{len(EXPR_CLASSES) - 1}"
    else:
        ok = np.isin(labels, (0, 1))
        what = "not 0 or 1"
    bad = valid & ~ok
    if bad.any():
        t = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{where}: valid {task} label of frame index {t} is {labels[t].tolist()!r}: {what}")
    return labels, valid


def _format_ints(values: np.ndarray, valid: np.ndarray, invalid: int) -> np.ndarray:
    """Characters [T, C, 3] (0 = none) of single-digit values, the invalid marker where not valid."""
    v = np.where(valid, values, invalid).astype(np.int64)
    chars = np.zeros(v.shape + (3,), np.uint8)
    chars[..., 0] = np.where(v < 0, ord("-"), 0)
    chars[..., 1] = ord("0") + np.abs(v)
    chars[..., 2] = ord(",")
    return chars


def _format_va(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Characters [T, 2, 7] (0 = none) of `[-]d.ddd,` or `-5,` per value."""
    # Rounding in float64 from the float32 label gives the decimal text that reads back to it.
    k = np.rint(values.astype(np.float64) * 10**VA_DECIMALS).astype(np.int64)
    chars = np.zeros(values.shape + (VA_DECIMALS + 4,), np.uint8)
    chars[..., 0] = np.where(k < 0, ord("-"), 0)  # never "-0.000"
    a = np.abs(k)
    chars[..., 1] = ord("0") + a // 10**VA_DECIMALS
    chars[..., 2] = ord(".")
    for i in range(VA_DECIMALS):
        chars[..., 3 + i] = ord("0") + (a // 10 ** (VA_DECIMALS - 1 - i)) % 10
    chars[..., -1] = ord(",")
    marker = np.zeros(VA_DECIMALS + 4, np.uint8)
    marker[[0, 1, -1]] = (ord("-"), ord("5"), ord(","))
    chars[~valid] = marker
    return chars


def format_annotation(task: str, labels, valid, *, where: str = "labels") -> bytes:
    """The bytes of an official annotation file for `labels` / `valid` (see `write_annotation`)."""
    check_task(task)
    labels, valid = _checked_arrays(where, task, labels, valid)
    if task == "EXPR":
        labels, valid = labels[:, None], valid[:, None]
    chars = _format_va(labels, valid) if task == "VA" else _format_ints(labels, valid, _INVALID[task])
    # The separator after the last value of a line becomes its newline.
    last = chars[:, -1]
    sep = np.argwhere(last == ord(","))
    last[sep[:, 0], sep[:, 1]] = ord("\n")
    flat = chars.reshape(-1)
    return (HEADERS[task] + "\n").encode() + flat[flat != 0].tobytes()


def write_annotation(path: str | os.PathLike, task: str, labels, valid) -> None:
    """Writes an official annotation file: the header, then one line per frame.

    VA values are written with three decimals (`0.123,-0.456`), so reading back gives exactly
    the float32 of that decimal; invalid entries are written as -5 (VA, per column) or -1.
    """
    path = pathlib.Path(path)
    path.write_bytes(format_annotation(task, labels, valid, where=str(path)))


# --------------------------------------------------------------------------- layout


def annotation_dir(root: str | os.PathLike, task: str) -> pathlib.Path:
    """The folder holding `task`'s Train_Set / Validation_Set (both EXPR folder names work)."""
    root = pathlib.Path(root)
    check_task(task)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset root is not a folder")
    candidates = [root]
    preferred = root / ANNOTATIONS_DIR
    if preferred.is_dir():
        candidates.append(preferred)
    candidates += sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.endswith("Annotations") and p != preferred
    )
    for base in candidates:
        for name in CHALLENGE_DIRS[task]:
            if (base / name).is_dir():
                return base / name
    raise LayoutError(
        f"{root}: no {task} annotation folder ({' or '.join(CHALLENGE_DIRS[task])}) in the root, "
        f"in '{ANNOTATIONS_DIR}', or in another folder ending in 'Annotations'"
    )


def list_videos(root: str | os.PathLike, task: str, split: str) -> list[str]:
    """Names of the videos annotated for `task` in `split` ("train" | "val"), sorted."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
    folder = annotation_dir(root, task) / SPLITS[split]
    if not folder.is_dir():
        raise LayoutError(f"{folder}: missing {task} {split} folder")
    names = sorted(p.stem for p in folder.iterdir() if p.suffix == ".txt" and p.is_file())
    if not names:
        raise LayoutError(f"{folder}: no annotation (.txt) files")
    return names


def _frame_numbers(root: pathlib.Path, video: str) -> np.ndarray | None:
    """Sorted 1-based numbers of the images of `video`; None when root has no cropped_aligned/."""
    frames = root / FRAMES_DIR
    if not frames.is_dir():
        return None
    folder = frames / video
    if not folder.is_dir():
        raise LayoutError(f"{folder}: missing frame folder of video {video!r}")
    numbers = sorted(int(m.group(1)) for e in os.scandir(folder) if (m := _FRAME_RE.fullmatch(e.name)))
    numbers = np.asarray(numbers, dtype=np.int64)
    if numbers.size == 0 or numbers[-1] == 0:
        raise LayoutError(f"{folder}: no frame images (NNNNN.jpg, numbered from 00001)")
    return numbers


def _present_from_numbers(folder: pathlib.Path, numbers: np.ndarray, num_frames: int) -> np.ndarray:
    present = np.zeros(num_frames, dtype=bool)
    inside = (numbers >= 1) & (numbers <= num_frames)
    present[numbers[inside] - 1] = True
    extra = int(np.count_nonzero(numbers > num_frames))
    if extra and str(folder) not in _reported_extra_images:
        _reported_extra_images.add(str(folder))
        log.warning("%s: %d image(s) numbered beyond the %d annotated frames are ignored", folder, extra, num_frames)
    return present


def frames_present(root: str | os.PathLike, video: str, num_frames: int) -> np.ndarray | None:
    """Which of `num_frames` frames have an image in `cropped_aligned/<video>/` (bool [T]).

    Returns None when `root` has no `cropped_aligned/` folder at all: the feature store's present
    mask is then authoritative. Images beyond `num_frames` are ignored (logged once per video).
    """
    root = pathlib.Path(root)
    check_video_name(video)
    numbers = _frame_numbers(root, video)
    if numbers is None:
        return None
    return _present_from_numbers(root / FRAMES_DIR / video, numbers, num_frames)


def _video(root: pathlib.Path, name: str, annotation: Annotation) -> Video:
    present = frames_present(root, name, annotation.num_frames)
    if present is None:
        present = np.ones(annotation.num_frames, dtype=bool)
    return Video(name, annotation.num_frames, annotation.labels, annotation.valid, present)


def load_split(root: str | os.PathLike, task: str, split: str) -> list[Video]:
    """Every annotated video of `task` / `split`, sorted by name, with labels, valid and present."""
    root = pathlib.Path(root)
    names = list_videos(root, task, split)
    folder = annotation_dir(root, task) / SPLITS[split]
    return [_video(root, name, read_annotation(folder / f"{name}.txt", task)) for name in names]


def listed_once(path: pathlib.Path, entries, what: str, empty: str) -> list:
    """The entries of a list file, from `(line number, entry, shown)` in file order; an entry
    listed twice ("<what> <shown> is listed again") or none at all (`empty`) is an
    AnnotationError naming the file and line."""
    seen: dict = {}
    out = []
    for lineno, entry, shown in entries:
        if entry in seen:
            raise AnnotationError(f"{path}:{lineno}: {what} {shown} is listed again (first on line "
                                  f"{seen[entry]})")
        seen[entry] = lineno
        out.append(entry)
    if not out:
        raise AnnotationError(f"{path}:1: {empty}")
    return out


def read_test_list(path: str | os.PathLike) -> list[str]:
    """Video names of a test-set list, one per line, in file order (blank lines skipped)."""
    path = pathlib.Path(path)

    def entries():
        for i, line in enumerate(read_text(path).split("\n"), start=1):
            name = line.strip()
            if not name:
                continue
            if any(c.isspace() for c in name) or "," in name or "/" in name or "\\" in name:
                raise AnnotationError(f"{path}:{i}: not a video name: {name!r}")
            yield i, name, repr(name)

    return listed_once(path, entries(), "video", "no video names")


def test_list_path(root: str | os.PathLike, task: str) -> pathlib.Path:
    """The test-set list of `task` under `<root>/names_of_videos_in_each_test_set/`, found by keywords."""
    folder = pathlib.Path(root) / TEST_LISTS_DIR
    check_task(task)
    if not folder.is_dir():
        raise LayoutError(f"{folder}: missing test-set list folder")
    matches = []
    for p in sorted(folder.glob("*.txt")):
        words = set(re.split(r"[^a-z0-9]+", p.stem.lower()))
        if any(keys <= words for keys in _TEST_LIST_KEYWORDS[task]):
            matches.append(p)
    if len(matches) != 1:
        found = ", ".join(p.name for p in matches) or "none"
        raise LayoutError(f"{folder}: expected one {task} test-set list (.txt), found {len(matches)}: {found}")
    return matches[0]


def test_videos(root: str | os.PathLike, task: str, frame_counts: Mapping[str, int] | None = None) -> list[Video]:
    """The test videos of `task`, in list order: labels zero, valid False, present from images.

    The frame count of a video is `frame_counts[video]` when given, else its highest image number.
    """
    root = pathlib.Path(root)
    path = test_list_path(root, task)
    frame_counts = frame_counts or {}
    videos = []
    for name in read_test_list(path):
        numbers = _frame_numbers(root, name)
        if name in frame_counts:
            num_frames = int(frame_counts[name])
            if num_frames <= 0:
                raise ValueError(f"frame_counts[{name!r}] must be positive, got {frame_counts[name]!r}")
        elif numbers is not None:
            num_frames = int(numbers[-1])
        else:
            raise LayoutError(
                f"{path}: frame count of test video {name!r} unknown: {root / FRAMES_DIR} does not "
                f"exist and frame_counts has no entry for it"
            )
        if numbers is None:
            present = np.ones(num_frames, dtype=bool)
        else:
            present = _present_from_numbers(root / FRAMES_DIR / name, numbers, num_frames)
        shape = (num_frames,) if task == "EXPR" else (num_frames, _NUM_COLUMNS[task])
        dtype = np.float32 if task == "VA" else np.int32
        videos.append(Video(name, num_frames, np.zeros(shape, dtype), np.zeros(shape, bool), present))
    return videos


# Library functions whose names start with "test": keep pytest from collecting them when a test
# module imports them by name.
test_videos.__test__ = False
test_list_path.__test__ = False


def frame_counts(root: str | os.PathLike) -> dict[str, int]:
    """{video: frames} of every video of the root: the longest annotation file of the video over
    the challenges and splits, else (test videos) its highest frame image."""
    root = pathlib.Path(root)
    counts: dict[str, int] = {}
    for task in TASKS:
        for split in ("train", "val"):
            try:
                videos = load_split(root, task, split)
            except (FileNotFoundError, LayoutError):
                continue
            for v in videos:
                counts[v.name] = max(counts.get(v.name, 0), v.num_frames)
        try:
            names = read_test_list(test_list_path(root, task))
        except (FileNotFoundError, LayoutError):
            continue
        for name in names:
            numbers = _frame_numbers(root, name)
            if name not in counts and numbers is not None and len(numbers):
                counts[name] = int(numbers[-1])
    return counts
