"""Image decoding for feature extraction: files -> uint8 RGB batches of one size.

Decoding runs in threads: Pillow releases the GIL while it decodes and resizes, so a small pool
keeps up with an accelerator on face crops. A file that cannot be decoded (truncated JPEG, a
non-image under an image name, an unreadable file) never raises here: its row is left zero, its
``ok`` flag False, and the reason is returned, so that one bad frame cannot stop a long run.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Pillow modes holding more than 8 bits per sample: scaled to 8 bits rather than clipped.
_WIDE_MODES = {"I;16": 1 / 257, "I;16L": 1 / 257, "I;16B": 1 / 257, "I;16N": 1 / 257}


class Decoded(NamedTuple):
    """A decoded batch: ``images`` uint8 [B, H, W, 3], ``ok`` bool [B], ``errors`` (None when ok)."""

    images: np.ndarray
    ok: np.ndarray
    errors: tuple[str | None, ...]


def is_image_file(name: str | os.PathLike) -> bool:
    """Whether the file name has one of the image suffixes that extraction reads."""
    return os.fspath(name).lower().endswith(IMAGE_SUFFIXES)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {size!r}")
    return h, w


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; grey is repeated over the three channels."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        grey = np.asarray(img, np.float32) * _WIDE_MODES[img.mode]
        img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
    elif img.mode in ("I", "F"):
        # 32-bit grey has no fixed range: the image's own is mapped to [0, 255].
        grey = np.asarray(img, np.float64)
        lo, hi = float(grey.min()), float(grey.max())
        grey = (grey - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(grey)
        img = Image.fromarray(np.rint(grey).astype(np.uint8), "L")
    return img.convert("RGB")


def load_image(path: str | os.PathLike, size: int | tuple[int, int]) -> np.ndarray:
    """One image as uint8 ``[H, W, 3]`` at ``size`` (bilinear, antialiased when shrinking).

    Raises ``OSError`` / ``ValueError`` (Pillow's own) when the file cannot be decoded.
    """
    h, w = _hw(size)
    with Image.open(path) as img:
        img.load()  # Decodes the whole file now, so that truncation raises here.
        img = to_rgb(img)
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def decode_images(
    paths: Sequence[str | os.PathLike], size: int | tuple[int, int], *,
    pool: concurrent.futures.Executor | None = None, num_threads: int = 4,
) -> Decoded:
    """Decodes ``paths`` into one uint8 batch ``[len(paths), H, W, 3]`` in parallel threads.

    ``pool`` is reused when given (extraction keeps one for the whole run); otherwise a pool of
    ``num_threads`` is made for this call. Failed rows are zero with ``ok`` False and the
    reason, which names the file, in ``errors``.
    """
    h, w = _hw(size)
    images = np.zeros((len(paths), h, w, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    errors: list[str | None] = [None] * len(paths)

    def decode(i: int) -> None:
        try:
            images[i] = load_image(paths[i], (h, w))
            ok[i] = True
        except Exception as e:  # noqa: BLE001 - any decoder failure marks just this frame
            errors[i] = f"{os.fspath(paths[i])}: {type(e).__name__}: {e}"

    if pool is None:
        with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as own:
            list(own.map(decode, range(len(paths))))
    else:
        list(pool.map(decode, range(len(paths))))
    return Decoded(images, ok, tuple(errors))
