"""The video with the predictions drawn on it: the crop's region, the keypoints and the current
values of each frame (mp4v, OpenCV)."""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping

import numpy as np

from abaw_jax.data import affwild2
from abaw_jax.data import video as video_lib
from abaw_jax.predict.table import AU_COLUMNS, EXPR_COLUMNS, KEYPOINT_COLUMNS, KEYPOINT_NAMES


def write_overlay(video: str | os.PathLike | video_lib.FrameSource, table: Mapping[str, np.ndarray],
                  path: str | os.PathLike, *, fps: float | None = None,
                  chunk_size: int = 64) -> None:
    """An mp4 (mp4v) of the video with the face box and the current predictions drawn."""
    cv2 = video_lib.cv2_module()
    source = video_lib.open_source(video, fps)
    info = source.info
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target (the .mp4 suffix tells OpenCV the container) and renamed when
    # complete: a failed or interrupted run leaves no truncated video under the asked name.
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), info.fps,
                             (info.width, info.height))
    if not writer.isOpened():
        raise video_lib.VideoError(f"{path}: OpenCV cannot write an mp4v video here")
    n = len(table["frame"])
    scale = max(0.4, min(info.width, info.height) / 600)
    i = 0
    try:
        for chunk in source.chunks(chunk_size):
            for frame in chunk:
                if i >= n:
                    break
                img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                if table["face_found"][i]:
                    _draw_face(cv2, img, table, i, scale)
                for k, line in enumerate(_overlay_lines(table, i)):
                    org = (8, int((k + 1) * 22 * scale) + 4)
                    cv2.putText(img, line, org, cv2.FONT_HERSHEY_SIMPLEX, 0.55 * scale,
                                (0, 0, 0), max(2, int(4 * scale)), cv2.LINE_AA)
                    cv2.putText(img, line, org, cv2.FONT_HERSHEY_SIMPLEX, 0.55 * scale,
                                (255, 255, 255), max(1, int(1.5 * scale)), cv2.LINE_AA)
                writer.write(img)
                i += 1
    except BaseException:
        writer.release()
        partial.unlink(missing_ok=True)
        raise
    writer.release()
    os.replace(partial, path)


def _draw_face(cv2, img: np.ndarray, table: Mapping[str, np.ndarray], i: int, scale: float) -> None:
    """The crop's region (rotated by `roll`) and the keypoints: what the models saw."""
    colour = (0, 200, 0) if table["face_score"][i] > 0 else (0, 200, 255)
    x, y, w, h = (float(table[k][i]) for k in "xywh")
    roll = float(table["roll"][i]) if np.isfinite(table["roll"][i]) else 0.0
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    corners = half @ np.array([[c, s], [-s, c]]) + [x + w / 2, y + h / 2]
    cv2.polylines(img, [np.round(corners).astype(np.int32)], True, colour, max(1, int(2 * scale)),
                  cv2.LINE_AA)
    for j in range(len(KEYPOINT_NAMES)):
        px, py = table[KEYPOINT_COLUMNS[2 * j]][i], table[KEYPOINT_COLUMNS[2 * j + 1]][i]
        if np.isfinite(px) and np.isfinite(py):
            cv2.circle(img, (int(round(px)), int(round(py))), max(2, int(3 * scale)),
                       (255, 80, 0) if j < 4 else (0, 80, 255), -1, cv2.LINE_AA)


def _overlay_lines(table: Mapping[str, np.ndarray], i: int) -> list[str]:
    lines = [f"frame {int(table['frame'][i])}" + ("" if table["face_found"][i] else "  (no face)")]
    if np.isfinite(table["valence"][i]):
        lines.append(f"V {table['valence'][i]:+.2f}  A {table['arousal'][i]:+.2f}")
    if table["expression"][i]:
        j = affwild2.EXPR_CLASSES.index(str(table["expression"][i]))
        lines.append(f"{table['expression'][i]} {table[EXPR_COLUMNS[j]][i]:.2f}")
    if np.isfinite(table[AU_COLUMNS[0]][i]):
        on = [au for au in AU_COLUMNS if table[au][i] >= 0.5]
        lines.append("AU " + (" ".join(a[2:] for a in on) if on else "-"))
    return lines
