"""The prediction table: its columns, how a followed face and the models' outputs fill it, and
its CSV file (`write_csv`, `read_csv`). The columns are listed in `abaw_jax.predict`'s doc."""

from __future__ import annotations

import csv
import os
import pathlib
from collections.abc import Mapping

import numpy as np

from abaw_jax import files
from abaw_jax.data import affwild2
from abaw_jax.data import faces as faces_lib

EXPR_COLUMNS = tuple(f"prob_{c}" for c in affwild2.EXPR_CLASSES)
AU_COLUMNS = affwild2.AU_NAMES
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion",
                  "left_ear_tragion")
KEYPOINT_COLUMNS = tuple(f"kp_{n}_{a}" for n in KEYPOINT_NAMES for a in "xy")
COLUMNS = ("frame", "timestamp_ms", "face_found", "face_interpolated", "face_score",
           "x", "y", "w", "h", "roll", *KEYPOINT_COLUMNS, "valence", "arousal", "expression",
           *EXPR_COLUMNS, *AU_COLUMNS)
TASK_COLUMNS = {"VA": ("valence", "arousal"), "EXPR": ("expression", *EXPR_COLUMNS),
                "AU": AU_COLUMNS}


class PredictError(ValueError):
    """A workdir, encoder or input that cannot be used for prediction; the message names it."""


def build_table(num_frames: int, fps: float, track: faces_lib.FollowedFace,
                probs: Mapping[str, np.ndarray], *, crop_size: int = 112, zoom: float = 0.75,
                margin: float = 0.4) -> dict[str, np.ndarray]:
    """The table of one followed face: frame, box and keypoint columns from `track` (the crop's
    square, see `faces.crop_boxes`), task columns from `probs` ({task: probabilities [T, C]};
    a task not in it stays empty: NaN, "" for the expression)."""
    frame = np.arange(1, num_frames + 1)
    nan = np.full(num_frames, np.nan)
    table: dict[str, np.ndarray] = {
        "frame": frame,
        "timestamp_ms": (frame - 1) * 1000.0 / fps,
        "face_found": track.found.astype(np.int64),
        "face_interpolated": track.interpolated.astype(np.int64),
        "face_score": track.score.astype(np.float64),
    }
    boxes, roll = faces_lib.crop_boxes(track, size=crop_size, zoom=zoom,
                                       margin=margin)
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
                elif name in ("frame", "face_found", "face_interpolated"):
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

