"""The prediction table as a picture: valence / arousal over time, the expression timeline and an
AU heatmap (PNG, matplotlib)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np

from abaw_jax.data import affwild2
from abaw_jax.predict.table import AU_COLUMNS, EXPR_COLUMNS


def plot(table: Mapping[str, np.ndarray], path: str | os.PathLike, *, title: str = "") -> None:
    """PNG: valence / arousal over time, the expression timeline and an AU heatmap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = np.asarray(table["timestamp_ms"]) / 1000.0
    no_face = np.asarray(table["face_found"]) == 0
    panels = [name for name, cols in (("VA", ("valence",)), ("EXPR", EXPR_COLUMNS),
                                      ("AU", AU_COLUMNS))
              if np.isfinite(np.asarray(table[cols[0]], np.float64)).any()]
    heights = {"VA": 2.0, "EXPR": 2.2, "AU": 2.6}
    fig, axes = plt.subplots(len(panels) + 1, 1, sharex=True, squeeze=False,
                             figsize=(12, 0.6 + sum(heights[p] for p in panels)),
                             gridspec_kw={"height_ratios": [0.25] + [heights[p] for p in panels]})
    axes = axes[:, 0]
    end = seconds[-1] + (seconds[1] - seconds[0] if len(seconds) > 1 else 1 / 30)
    extent = (seconds[0], end)
    axes[0].imshow(no_face[None].astype(float), aspect="auto", cmap="Greys", vmin=0, vmax=1,
                   extent=(*extent, 0, 1), interpolation="nearest")
    axes[0].set_yticks([])
    axes[0].set_ylabel("no face", rotation=0, ha="right", va="center")
    for ax, panel in zip(axes[1:], panels):
        if panel == "VA":
            ax.plot(seconds, table["valence"], label="valence", lw=1.2)
            ax.plot(seconds, table["arousal"], label="arousal", lw=1.2)
            ax.axhline(0, color="0.6", lw=0.6)
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel("VA")
            ax.legend(loc="upper right", fontsize=8)
        elif panel == "EXPR":
            probs = np.stack([table[c] for c in EXPR_COLUMNS])
            ax.imshow(probs, aspect="auto", cmap="magma", vmin=0, vmax=1, origin="lower",
                      extent=(*extent, -0.5, len(EXPR_COLUMNS) - 0.5), interpolation="nearest")
            ax.plot(seconds, probs.argmax(0), color="cyan", lw=0.0, marker="|", ms=4)
            ax.set_yticks(range(len(affwild2.EXPR_CLASSES)), affwild2.EXPR_CLASSES, fontsize=7)
            ax.set_ylabel("expression")
        else:
            probs = np.stack([table[c] for c in AU_COLUMNS])
            im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower",
                           extent=(*extent, -0.5, len(AU_COLUMNS) - 0.5), interpolation="nearest")
            ax.set_yticks(range(len(AU_COLUMNS)), AU_COLUMNS, fontsize=7)
            ax.set_ylabel("AU probability")
            fig.colorbar(im, ax=ax, pad=0.01, fraction=0.02)
    axes[-1].set_xlabel("time (s)")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
