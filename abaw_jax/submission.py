"""ABAW submission files: writing them, reading the forms seen in the wild, and checking them.

One text file per challenge; header `image_location,<columns>`, then one row per frame:
`<video>/00001.jpg,<values>` (REFERENCE.md). The writer emits every frame of every video (frames
without a face image included) and replaces the file atomically. The reader accepts a quoted
class list in the header and files that skip frames.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from abaw_jax import files
from abaw_jax.data.affwild2 import AU_NAMES, EXPR_CLASSES

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
        values = decisions(task, out)
        for t, row in enumerate(values):
            loc = f"{name}/{t + 1:05d}.jpg"
            if task == "VA":
                lines.append(f"{loc},{row[0]:.6f},{row[1]:.6f}")
            elif task == "EXPR":
                lines.append(f"{loc},{int(row)}")
            else:
                lines.append(loc + "," + ",".join(str(int(v)) for v in row))
    files.write_atomic(path, "\n".join(lines) + "\n")
    return path


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
