"""Run outputs: metrics.jsonl, TensorBoard events and the progress line (process 0 only)."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Mapping

import jax


class MetricWriter:
    """Appends `{"step": s, ...}` lines to `<workdir>/metrics.jsonl` and mirrors them to TensorBoard."""

    def __init__(self, workdir: str | pathlib.Path, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        # (step, keys) of the rows already in the file: a finished run that is run again
        # evaluates its last step again, and that row is not logged twice.
        self._logged = logged_rows(self.path) if self.enabled else set()
        if self.enabled:   # only process 0 writes events
            self._tb = _summary_writer()(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        key = (int(step), tuple(sorted(scalars)))
        if key in self._logged:
            return
        self._logged.add(key)
        row = {"step": int(step)}
        row.update({k: _jsonable(v) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in scalars.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def logged_rows(path: pathlib.Path) -> set[tuple[int, tuple[str, ...]]]:
    """(step, sorted keys) of every row of a metrics.jsonl (unreadable lines are skipped)."""
    out = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                out.add((int(row.pop("step")), tuple(sorted(row))))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return out


def _summary_writer():
    """tensorboardX's SummaryWriter class, imported without PyTorch.

    tensorboardX imports torch when it is installed (about 2.5 s of start-up in every training
    process) only to accept torch tensors; scalars need none of it. While tensorboardX is first
    imported, ``import torch`` is made to fail, unless torch is already loaded; torch stays
    importable afterwards.
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None   # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN; keep the fact visible
    return v


class Progress:
    """A one-line report of steps/s, frames/s and the time left."""

    def __init__(self, total_steps: int, frames_per_step: int, first_step: int, enabled: bool):
        self.total = total_steps
        self.frames_per_step = frames_per_step
        self.enabled = enabled
        self._t = time.perf_counter()
        self._step = first_step

    def update(self, step: int, extra: str = "") -> dict:
        now = time.perf_counter()
        steps = step - self._step
        dt = max(now - self._t, 1e-9)
        rate = steps / dt
        self._t, self._step = now, step
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        stats = {"steps_per_sec": rate, "frames_per_sec": rate * self.frames_per_step}
        if self.enabled:
            print(f"step {step}/{self.total}  {rate:.2f} steps/s  "
                  f"{rate * self.frames_per_step:,.0f} frames/s  ETA {_fmt(eta)}  {extra}",
                  file=sys.stderr, flush=True)
        return stats


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
