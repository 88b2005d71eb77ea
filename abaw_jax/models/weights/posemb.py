"""Position-embedding resampling with exactly PyTorch's ``F.interpolate`` arithmetic.

Computed in float64 as a separable ``[n_out, n_in]`` matrix per axis, so that a checkpoint
resized here equals the one its own library would produce at the new image size.
"""

from __future__ import annotations

import math

import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def resample_matrix(n_in: int, n_out: int, method: str, antialias: bool) -> np.ndarray:
    """``[n_out, n_in]`` float64 weights of 1-D ``F.interpolate(mode=method, align_corners=False)``.

    Without antialias PyTorch clamps indices at the border (bicubic with a = -0.75); with it,
    it uses Pillow's normalised filters (bicubic a = -0.5) widened by the downscale factor.
    """
    if method not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {method!r}")
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    if antialias:
        support = (1.0 if method == "bilinear" else 2.0) * max(scale, 1.0)
        inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(n_out):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            x = (np.arange(lo, hi) - center + 0.5) * inv_scale
            w = np.maximum(1 - np.abs(x), 0.0) if method == "bilinear" else _cubic(x, -0.5)
            weights[i, lo:hi] = w / w.sum()
    elif method == "bilinear":
        for i in range(n_out):
            src = max(scale * (i + 0.5) - 0.5, 0.0)
            i0 = int(src)
            frac = src - i0
            weights[i, i0] += 1 - frac
            weights[i, min(i0 + 1, n_in - 1)] += frac
    else:
        for i in range(n_out):
            src = scale * (i + 0.5) - 0.5
            i0 = math.floor(src)
            t = src - i0
            for k in (-1, 0, 1, 2):
                weights[i, min(max(i0 + k, 0), n_in - 1)] += _cubic(np.float64(t - k), -0.75)
    return weights


def resample_posemb(
    posemb: np.ndarray, new_grid: tuple[int, int], *, num_prefix_tokens: int,
    old_grid: tuple[int, int] | None = None, method: str = "bicubic", antialias: bool = True,
) -> np.ndarray:
    """Resize ``[1, prefix + gh * gw, D]`` position embeddings to ``new_grid``; prefix rows kept."""
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    if old_grid is None:
        side = math.isqrt(grid.shape[1])
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    g = np.asarray(grid, np.float64).reshape(old_grid[0], old_grid[1], -1)
    wh = resample_matrix(old_grid[0], new_grid[0], method, antialias)
    ww = resample_matrix(old_grid[1], new_grid[1], method, antialias)
    g = np.einsum("ih,jw,hwd->ijd", wh, ww, g).reshape(1, -1, g.shape[-1])
    return np.concatenate([np.asarray(prefix, np.float64), g], axis=1).astype(posemb.dtype)
