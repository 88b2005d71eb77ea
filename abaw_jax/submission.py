"""ABAW submission files: writing them, reading the forms seen in the wild, and checking them.

One text file per challenge; header `image_location,<columns>`, then one row per frame:
`<video>/00001.jpg,<values>` (the challenge's format). The multi-task (MTL) challenge has its own format,
one row per image of its test list (the section at the end). The writer emits every frame of every video (frames
without a face image included) and replaces the file atomically. The reader accepts a quoted
class list in the header and files that skip frames.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib

import numpy as np

from abaw_jax import files
from abaw_jax.data import affwild2
from abaw_jax.data.affwild2 import AU_NAMES, EXPR_CLASSES, format_annotation
from abaw_jax.data.mtl import image_name, parse_image_name, split_arrays
from abaw_jax.metrics import p_mtl

COLUMNS = {"VA": ("valence", "arousal"), "EXPR": EXPR_CLASSES, "AU": AU_NAMES}


class SubmissionError(ValueError):
    """A submission file is malformed or incomplete; the message names the file and line."""


def decisions(task: str, outputs: np.ndarray) -> np.ndarray:
    """Raw model outputs [T, C] -> submitted values: VA clipped, EXPR argmax, AU sigmoid >= 0.5."""
    outputs = np.asarray(outputs, np.float64)
    if task == "VA":
        return np.clip(outputs, -1.0, 1.0)
    if task == "EXPR":
        return outputs.argmax(-1)
    if task == "AU":
        return (outputs >= 0.0).astype(np.int64)  # sigmoid(x) >= 0.5  <=>  x >= 0
    raise ValueError(f"unknown task {task!r}")


def write_submission(path: str | pathlib.Path, task: str, videos: list[str],
                     outputs: list[np.ndarray]) -> pathlib.Path:
    """Writes one row per frame of each video from raw per-frame outputs; atomic replace."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["image_location," + ",".join(COLUMNS[task])]
    for name, out in zip(videos, outputs, strict=True):
        finite = np.isfinite(np.reshape(out, (len(out), -1))).all(axis=1)
        if not finite.all():
            raise SubmissionError(f"{path}: outputs of video {name!r} hold NaN/inf (frame index "
                                  f"{int(np.argmin(finite))}); the file was not written")
        values = decisions(task, out)
        for t, row in enumerate(values):
            loc = f"{name}/{t + 1:05d}.jpg"
            if task == "VA":
                lines.append(f"{loc},{row[0]:.6f},{row[1]:.6f}")
            elif task == "EXPR":
                lines.append(f"{loc},{int(row)}")
            else:
                lines.append(loc + "," + ",".join(str(int(v)) for v in row))
    counts = {name: len(out) for name, out in zip(videos, outputs)}
    write_checked(path, "\n".join(lines) + "\n", lambda p: check_submission(p, task, counts))
    return path


def write_checked(path: pathlib.Path, text: str, check) -> None:
    """Writes `text` beside `path`, runs `check` (the checker) on that file, and only then
    renames it to `path`: a file that fails its check never takes the place of the last one."""
    unchecked = path.with_name(f".{path.name}.unchecked")
    files.write_atomic(unchecked, text)
    try:
        check(unchecked)
    except SubmissionError as e:
        unchecked.unlink(missing_ok=True)
        raise SubmissionError(f"{str(e).replace(str(unchecked), str(path))} (the file was not "
                              f"written)") from None
    except BaseException:
        unchecked.unlink(missing_ok=True)
        raise
    os.replace(unchecked, path)


def read_submission(path: str | pathlib.Path, task: str) -> dict[str, dict[int, np.ndarray]]:
    """Reads a submission into {video: {frame (1-based): values}}; frames may be missing."""
    path = pathlib.Path(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise SubmissionError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    # Some files quote the class list into one field: image_location,"Neutral,...,Other".
    flat = [h.strip() for field in header for h in field.split(",")]
    expected = ["image_location", *COLUMNS[task]]
    if flat != expected:
        raise SubmissionError(f"{path}:1: header {','.join(flat)!r} is not {','.join(expected)!r}")
    # EXPR rows carry one class index under the eight-name header.
    ncol = 1 if task == "EXPR" else len(COLUMNS[task])
    out: dict[str, dict[int, np.ndarray]] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != ncol + 1:
            raise SubmissionError(f"{path}:{lineno}: expected {ncol + 1} fields, got {len(row)}")
        loc = row[0].strip()
        video, _, image = loc.rpartition("/")
        stem = image[:-4] if image.lower().endswith(".jpg") else ""
        if not video or not stem.isdigit():
            raise SubmissionError(f"{path}:{lineno}: image_location {loc!r} is not <video>/NNNNN.jpg")
        try:
            values = np.array([float(c) for c in row[1:]])
        except ValueError:
            raise SubmissionError(f"{path}:{lineno}: non-numeric value in {row[1:]}") from None
        _check_values(path, lineno, task, values)
        frames = out.setdefault(video, {})
        frame = int(stem)
        if frame in frames:
            raise SubmissionError(f"{path}:{lineno}: frame {loc} appears twice")
        frames[frame] = values
    return out


def _check_values(path, lineno, task, values) -> None:
    if not np.all(np.isfinite(values)):
        raise SubmissionError(f"{path}:{lineno}: value is not finite")
    if task == "VA" and np.any(np.abs(values) > 1):
        raise SubmissionError(f"{path}:{lineno}: valence/arousal outside [-1, 1]")
    if task == "EXPR" and (values[0] not in range(8)):
        raise SubmissionError(f"{path}:{lineno}: expression {values[0]:g} is not one of 0..7")
    if task == "AU" and not np.all(np.isin(values, (0, 1))):
        raise SubmissionError(f"{path}:{lineno}: action units must be 0 or 1")


def check_submission(path: str | pathlib.Path, task: str, frame_counts: dict[str, int]) -> list[str]:
    """Checks that a submission has exactly one row for every frame of every listed video.

    Returns warnings. Frame counts read from a video file (OpenCV's count) can be one short of the
    image numbering used by the annotations and test lists, so a submission with rows up to frame
    N + 1 for an N-frame video is accepted with a warning when that single trailing frame is the
    only difference; anything else is an error.
    """
    got = read_submission(path, task)
    problems, warnings = [], []
    for video, n in frame_counts.items():
        frames = got.get(video)
        if frames is None:
            problems.append(f"video {video} missing")
            continue
        missing = sorted(set(range(1, n + 1)) - set(frames))
        extra = sorted(set(frames) - set(range(1, n + 1)))
        if missing:
            problems.append(f"video {video}: {len(missing)} of {n} frames missing, e.g. {missing[:3]}")
        if extra == [n + 1]:
            warnings.append(f"video {video}: one row past its {n} frames (frame {n + 1}); frame "
                            f"counts from the video file are often one short of the image "
                            f"numbering")
        elif extra:
            problems.append(f"video {video}: frames beyond its {n} frames, e.g. {extra[:3]}")
    unknown = sorted(set(got) - set(frame_counts))
    if unknown:
        problems.append(f"{len(unknown)} videos not in the list, e.g. {unknown[:3]}")
    if problems:
        raise SubmissionError(f"{path}: " + "; ".join(problems))
    return warnings


# --------------------------------------------------------------------------- multi-task challenge
#
# One file for the whole test set: header `image,valence,arousal,expression,aus`, then one row per
# listed image, `<video>/<NNNNN>.jpg,<v>,<a>,<class 0..7>,<12 AU 0/1>` (the challenge's format).

MTL_HEADER = "image,valence,arousal,expression,aus"
_MTL_FIELDS = 1 + 2 + 1 + len(AU_NAMES)


@dataclasses.dataclass(frozen=True, eq=False)
class MTLSubmission:
    """The rows of an MTL submission in file order: image (video, 1-based frame) and its values."""

    images: list[tuple[str, int]]
    va: np.ndarray  # float64 [N, 2]
    expr: np.ndarray  # int64 [N]
    au: np.ndarray  # int64 [N, 12]

    def rows(self, images: list[tuple[str, int]]) -> dict[str, np.ndarray]:
        """{"VA", "EXPR", "AU"} -> the values of `images`, in that order (KeyError names a missing one)."""
        where = {image: i for i, image in enumerate(self.images)}
        try:
            idx = np.array([where[image] for image in images], dtype=np.int64)
        except KeyError as e:
            video, frame = e.args[0]
            raise KeyError(f"{video}/{frame:05d}.jpg is not in the submission") from None
        return {"VA": self.va[idx], "EXPR": self.expr[idx], "AU": self.au[idx]}


def mtl_decisions(outputs) -> dict[str, np.ndarray]:
    """Raw MTL outputs {"VA": [N, 2], "EXPR": [N, 8] logits, "AU": [N, 12] logits} -> submitted values."""
    missing = [t for t in COLUMNS if t not in outputs]
    if missing:
        raise ValueError(f"outputs: missing {', '.join(missing)} (expected VA, EXPR, AU)")
    shapes = {"VA": 2, "EXPR": len(EXPR_CLASSES), "AU": len(AU_NAMES)}
    values = {}
    for task, width in shapes.items():
        out = np.asarray(outputs[task], np.float64)
        if out.ndim != 2 or out.shape[1] != width:
            raise ValueError(f"outputs {task}: expected shape [N, {width}], got {out.shape}")
        if not np.isfinite(out).all():
            row = int(np.argwhere(~np.isfinite(out))[0, 0])
            raise ValueError(f"outputs {task}: non-finite value in row {row}")
        values[task] = decisions(task, out)
    rows = {task: len(v) for task, v in values.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"outputs: different numbers of rows per task: {rows}")
    return values


def _value_texts(task: str, values: np.ndarray) -> list[str]:
    # The annotation writer gives VA its VA_DECIMALS decimals (never "-0.000") and integers as
    # digits; every value of a submission is valid.
    text = format_annotation(task, values, np.ones(values.shape, bool), where=f"submission {task}").decode()
    return text.split("\n")[1:-1]


def write_mtl_submission(path: str | pathlib.Path, images: list[tuple[str, int]], outputs) -> pathlib.Path:
    """Writes the MTL submission: one row per listed image, in list order, from raw outputs.

    `images` are (video, 1-based frame) as `read_mtl_test_list` gives them; `outputs` maps VA,
    EXPR, AU to raw outputs with one row per image (see `mtl_decisions`): VA is clipped to
    [-1, 1] and written with `affwild2.VA_DECIMALS` decimals, EXPR is the argmax, AU sigmoid >= 0.5.
    The file is replaced atomically.
    """
    path = pathlib.Path(path)
    values = mtl_decisions(outputs)
    if len(images) != len(values["VA"]) or not images:
        raise ValueError(f"{path}: {len(images)} images but {len(values['VA'])} rows of outputs")
    if len(set(images)) != len(images):
        raise ValueError(f"{path}: an image is listed twice")
    texts = zip(*(_value_texts(task, values[task]) for task in ("VA", "EXPR", "AU")))
    lines = [MTL_HEADER] + [f"{image_name(v, f)},{a},{e},{u}" for (v, f), (a, e, u) in zip(images, texts)]
    write_checked(path, "\n".join(lines) + "\n", lambda p: check_mtl_submission(p, images))
    return path


def read_mtl_submission(path: str | pathlib.Path) -> MTLSubmission:
    """Reads an MTL submission; SubmissionError (`<path>:<line>: ...`) on any malformed row.

    Checks the header, 16 fields per row, the image name, values (VA finite in [-1, 1],
    expression an integer 0..7, AUs 0 or 1) and that no image appears twice. Blank lines are
    skipped. Completeness against a test list is `check_mtl_submission`'s job.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SubmissionError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise SubmissionError(f"{path}: not UTF-8 text ({e.reason})") from None
    lines = text.replace("\r\n", "\n").split("\n")
    header = lines[0].strip()
    if header != MTL_HEADER:
        raise SubmissionError(f"{path}:1: header {header!r} is not {MTL_HEADER!r}")
    images: list[tuple[str, int]] = []
    values: list[list[float]] = []
    seen: dict[tuple[str, int], int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != _MTL_FIELDS:
            raise SubmissionError(f"{path}:{lineno}: expected {_MTL_FIELDS} fields (image, valence, arousal, "
                                  f"expression, 12 AUs), got {len(fields)}")
        image = parse_image_name(fields[0].strip())
        if image is None:
            raise SubmissionError(f"{path}:{lineno}: image {fields[0].strip()!r} is not <video>/<NNNNN>.jpg")
        try:
            row = [float(c) for c in fields[1:]]
        except ValueError:
            raise SubmissionError(f"{path}:{lineno}: non-numeric value in {','.join(fields[1:])!r}") from None
        _check_mtl_row(path, lineno, np.array(row))
        if image in seen:
            raise SubmissionError(f"{path}:{lineno}: image {fields[0].strip()} appears twice (first on line "
                                  f"{seen[image]})")
        seen[image] = lineno
        images.append(image)
        values.append(row)
    if not images:
        raise SubmissionError(f"{path}: no rows after the header")
    v = np.array(values, np.float64)
    return MTLSubmission(images, v[:, :2], v[:, 2].astype(np.int64), v[:, 3:].astype(np.int64))


def _check_mtl_row(path, lineno, row: np.ndarray) -> None:
    if not np.isfinite(row).all():
        raise SubmissionError(f"{path}:{lineno}: value is not finite")
    if np.any(np.abs(row[:2]) > 1):
        raise SubmissionError(f"{path}:{lineno}: valence/arousal outside [-1, 1]")
    if row[2] not in range(len(EXPR_CLASSES)):
        raise SubmissionError(f"{path}:{lineno}: expression {row[2]:g} is not one of 0..{len(EXPR_CLASSES) - 1}")
    if not np.isin(row[3:], (0, 1)).all():
        raise SubmissionError(f"{path}:{lineno}: action units must be 0 or 1")


def check_mtl_submission(path: str | pathlib.Path, images: list[tuple[str, int]]) -> MTLSubmission:
    """Checks an MTL submission against the test list: every listed image exactly once, no other.

    Row order is free. Returns the submission read; raises SubmissionError naming the file and
    what is missing or extra (counts and the first few images).
    """
    if len(set(images)) != len(images):
        raise ValueError("images: an image is listed twice")
    got = read_mtl_submission(path)
    listed, submitted = set(images), set(got.images)
    problems = []
    missing = [image for image in images if image not in submitted]
    extra = [image for image in got.images if image not in listed]
    if missing:
        problems.append(f"{len(missing)} of {len(images)} listed images missing, e.g. "
                        + ", ".join(image_name(v, f) for v, f in missing[:3]))
    if extra:
        problems.append(f"{len(extra)} images not in the list, e.g. "
                        + ", ".join(image_name(v, f) for v, f in extra[:3]))
    if problems:
        raise SubmissionError(f"{path}: " + "; ".join(problems))
    return got


def score_mtl_submission(path: str | pathlib.Path, videos) -> dict[str, float]:
    """P_MTL of an MTL submission against annotated videos (`data.mtl.MTLVideo`s of one split).

    The submission must hold exactly the annotated frames (`check_mtl_submission`); returns
    `metrics.p_mtl`'s dict.
    """
    images = [(v.name, int(f)) for v in videos for f in v.frames]
    got = check_mtl_submission(path, images)
    labels, valid = split_arrays(videos)
    return p_mtl(got.rows(images), labels, valid)


# --------------------------------------------------------------------------- command line
#
#   python -m abaw_jax.submission check FILE --root DATA --task VA|EXPR|AU|MTL --split val|test
#
# Frame counts (and the MTL image lists) come from the dataset: the annotation files of the
# validation split, the test-set video list with each video's highest frame image (or
# --frame-counts, a `name,frames` CSV such as Aff-Wild2's counter_frame.csv).


def expected_frames(root: str | pathlib.Path, task: str, split: str,
                    frame_counts: dict[str, int] | None = None) -> dict[str, int]:
    """{video: frames} a submission of `task` on `split` ("val" | "test") must cover."""
    if split == "val":
        return {v.name: v.num_frames for v in affwild2.load_split(root, task, "val")}
    if split == "test":
        return {v.name: v.num_frames for v in affwild2.test_videos(root, task, frame_counts)}
    raise SubmissionError(f"unknown split {split!r}; use 'val' or 'test'")


def expected_images(root: str | pathlib.Path, split: str) -> list[tuple[str, int]]:
    """The (video, frame) images an MTL submission on `split` must hold."""
    from abaw_jax.data import mtl
    if split == "val":
        return [(v.name, int(f)) for v in mtl.load_mtl_split(root, "val") for f in v.frames]
    if split == "test":
        return mtl.load_mtl_test(root)
    raise SubmissionError(f"unknown split {split!r}; use 'val' or 'test'")


def _row_lines(path: pathlib.Path) -> tuple[dict[str, dict[int, int]], int]:
    """{video: {frame: line}} of a file read_submission accepted, and its number of lines."""
    lines: dict[str, dict[int, int]] = {}
    n = 0
    with open(path, newline="") as f:
        for n, line in enumerate(f, start=1):
            loc = line.split(",", 1)[0].strip()
            video, _, image = loc.rpartition("/")
            if n > 1 and video and image[:-4].isdigit():
                lines.setdefault(video, {})[int(image[:-4])] = n
    return lines, n


def check_file(path: str | pathlib.Path, root: str | pathlib.Path, task: str, split: str,
               frame_counts: dict[str, int] | None = None) -> list[str]:
    """Checks a submission file against the dataset's `split`; returns warnings.

    Raises SubmissionError `<file>:<line>: ...` at the first problem in file order (a missing
    video is reported at the end of the file).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such file")
    if task == "MTL":
        check_mtl_submission(path, expected_images(root, split))
        return []
    if task not in COLUMNS:
        raise SubmissionError(f"unknown task {task!r}; use VA, EXPR, AU or MTL")
    expected = expected_frames(root, task, split, frame_counts)
    got = read_submission(path, task)
    lines, last = _row_lines(path)
    problems: list[tuple[int, str]] = []
    warnings = []
    for video, n in expected.items():
        frames = got.get(video)
        if frames is None:
            problems.append((last + 1, f"video {video} ({n} frames) of the {split} list has no row"))
            continue
        where = lines.get(video, {})
        missing = sorted(set(range(1, n + 1)) - set(frames))
        extra = sorted(set(frames) - set(range(1, n + 1)))
        if missing:
            problems.append((max(where.values(), default=last),
                             f"video {video}: {len(missing)} of its {n} frames have no row, e.g. "
                             f"frame {missing[0]}"))
        if extra == [n + 1]:
            warnings.append(f"{path}:{where.get(n + 1, 0)}: video {video}: one row past its {n} "
                            f"frames")
        elif extra:
            problems.append((where.get(extra[0], 0),
                             f"video {video}: frame {extra[0]} is beyond its {n} frames"))
    for video in sorted(set(got) - set(expected), key=lambda v: min(lines.get(v, {0: 0}).values())):
        problems.append((min(lines.get(video, {0: 0}).values()),
                         f"video {video} is not in the {split} list of {task}"))
    if problems:
        line, message = min(problems)
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise SubmissionError(f"{path}:{line}: {message}{more}")
    return warnings


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="python -m abaw_jax.submission",
                                description="Checks ABAW submission files against a dataset.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="check one submission file; exit status 1 on a problem",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("file", help="the submission file")
    c.add_argument("--root", required=True, help="the Aff-Wild2 root (official layout)")
    c.add_argument("--task", required=True, type=str.upper, choices=("VA", "EXPR", "AU", "MTL"))
    c.add_argument("--split", default="test", choices=("val", "test"))
    c.add_argument("--frame-counts", default="",
                   help="CSV of name,frames for the test videos (default: each video's highest "
                        "frame image under cropped_aligned/)")
    c.add_argument("--copy-to", default="",
                   help="after a successful check, copy the file here (atomically)")
    args = p.parse_args(argv)
    counts = None
    try:
        if args.frame_counts:
            counts = affwild2.read_frame_counts(args.frame_counts)
        # The bytes checked are the bytes copied.
        data = pathlib.Path(args.file).read_bytes()
        warnings = check_file(args.file, args.root, args.task, args.split, counts)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        if args.copy_to:
            dest = pathlib.Path(args.copy_to)
            dest.parent.mkdir(parents=True, exist_ok=True)
            files.write_atomic(dest, data)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.copy_to:
        print(f"{args.file}: OK; copied to {args.copy_to}", file=sys.stderr)
    else:
        print(f"{args.file}: OK ({args.task}, {args.split} split of {args.root})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
