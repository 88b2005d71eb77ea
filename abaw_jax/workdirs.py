"""A workdir belongs to one run: the guards every command applies before it writes anything.

- `claim(config, workdir)`: the workdir's `config.json` must describe the same run as the
  resolved config, apart from the settings in `RESUMABLE` (run length, cadence, logging, input
  threads, evaluation batch, dataset location); otherwise the command stops with one line naming
  the differing keys and changes nothing. Then the config is written (process 0).
- `check_writable(path)`: a directory that cannot be written (read-only file system, no
  permission) is refused at start-up, before any device work.
- `disk_full_message(path, error, last_step)`: the one line for a save that failed for want of
  space (the path, the free space, the last intact step).
- `drop_metrics_after(workdir, step)`: after a resume from `step`, rows of `metrics.jsonl`
  logged past it (by the interrupted run) are dropped, so that every step is logged once.
- `check_finite(...)`: non-finite predictions stop `evaluate` with one line naming the video,
  the split and the feature store, before anything is scored or written.
- `check_test_features(...)`: a test-list video without features is an error for a submission,
  unless an incomplete file is asked for explicitly.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import numpy as np

from abaw_jax import files

# Settings that may differ between the run that wrote a workdir and the command that resumes or
# evaluates it: how long it runs, how often it logs, evaluates and checkpoints, how its input is
# read, where the dataset lies and the evaluation batch. Any other difference (task, model,
# feature sets, window length, optimizer, seed, ...) means another run: use another workdir.
RESUMABLE = (
    "total_steps", "num_epochs", "log_every", "eval_every", "checkpoint_every",
    "evals_per_epoch", "early_stopping_patience", "early_stopping_min_delta", "keep_checkpoints",
    "progress", "eval_batch_size", "mesh_data", "model_init", "init_from",
    "data.root", "data.features", "data.num_threads", "data.prefetch", "data.device_bank",
    "data.tfds_name",
)


class WorkdirError(ValueError):
    """A workdir holds another run, or cannot be written (the message names it)."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = tree
    return out


def config_differences(saved: dict, config: Any) -> list[str]:
    """Dotted keys whose value differs between `saved` (a workdir's config.json) and `config`,
    leaving out the `RESUMABLE` settings and keys that only one side has (fields added by a newer
    version of the package)."""
    mine = _flat(json.loads(config.to_json_best_effort()))
    theirs = _flat(saved)
    return sorted(k for k in mine.keys() & theirs.keys()
                  if mine[k] != theirs[k] and k not in RESUMABLE
                  and not any(k.startswith(r + ".") for r in RESUMABLE))


def guard(config: Any, workdir: str | os.PathLike) -> None:
    """Raises WorkdirError when `workdir` holds a run of another config (see `RESUMABLE`)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkdirError(f"{path}: not valid JSON ({e}); this workdir's run cannot be "
                           f"checked: use another --workdir") from None
    if not isinstance(saved, dict):
        raise WorkdirError(f"{path}: not a JSON object; use another --workdir")
    differing = config_differences(saved, config)
    if differing:
        mine = _flat(json.loads(config.to_json_best_effort()))
        theirs = _flat(saved)
        shown = ", ".join(f"{k} ({theirs[k]!r} there, {mine[k]!r} here)" for k in differing[:4])
        more = f" and {len(differing) - 4} more" if len(differing) > 4 else ""
        raise WorkdirError(
            f"--workdir {pathlib.Path(workdir)} holds another run: {shown}{more} differ from its "
            f"config.json; use another --workdir, or the config it was trained with (only "
            f"{', '.join(RESUMABLE[:5])}, ... may change on a resume: "
            f"abaw_jax.workdirs.RESUMABLE)")


def claim(config: Any, workdir: str | os.PathLike, *, is_main: bool = True) -> pathlib.Path:
    """Checks that `workdir` is writable and holds this run (or none), then writes its
    config.json (process 0). Nothing is written when a check fails."""
    workdir = pathlib.Path(workdir)
    check_writable(workdir)
    guard(config, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if is_main:
        files.write_atomic(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
    return workdir


def check_writable(path: str | os.PathLike, what: str = "--workdir") -> None:
    """Raises WorkdirError when files cannot be created in `path` (or, when it does not exist
    yet, in the nearest existing folder above it)."""
    path = pathlib.Path(path).expanduser().absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return   # a file where a folder is expected: reported by the caller's own check
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".abaw_jax_write_test.")
    except OSError as e:
        reason = "read-only file system" if e.errno == errno.EROFS else (
            e.strerror or type(e).__name__)
        raise WorkdirError(f"{what} {path}: cannot write in {probe} ({reason}); choose a "
                           f"writable directory") from None
    os.close(fd)
    os.unlink(tmp)


def free_space(path: str | os.PathLike) -> str:
    """The free space of the file system holding `path`, for messages ("1.2 MB free")."""
    probe = pathlib.Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "free space unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if free >= size:
            return f"{free / size:.1f} {unit} free"
    return f"{free} bytes free"


def is_disk_error(error: BaseException) -> bool:
    """A failed write for want of space or permission (orbax and TensorStore report these
    inside their own exception types; their text carries the cause)."""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                                  errno.EACCES):
            return True
        text = str(e)
        if any(s in text for s in ("RESOURCE_EXHAUSTED", "No space left", "ENOSPC",
                                   "Read-only file system", "Disk quota")):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full_message(path: str | os.PathLike, error: BaseException,
                      last_step: int | None) -> str:
    """One line for a save that failed to write: the path, the free space, the last intact step."""
    text = " ".join(str(error).split())
    cause = ("no space left on the device" if any(
        s in text for s in ("RESOURCE_EXHAUSTED", "No space left", "ENOSPC", "quota"))
        else "the file system refused the write")
    kept = (f"the last intact checkpoint is step {last_step}" if last_step is not None
            else "no checkpoint was completed")
    return (f"cannot save the checkpoint in {path}: {cause} ({free_space(path)}); {kept}; free "
            f"space (or move the workdir) and re-run the same command to resume")


def drop_metrics_after(workdir: str | os.PathLike, step: int) -> int:
    """Drops the rows of `<workdir>/metrics.jsonl` logged after `step` (by a run interrupted after
    its last checkpoint; the resumed run logs those steps again). Returns how many were dropped.
    A last line cut by the interruption is dropped too."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            keep = int(row["step"]) <= step
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        files.write_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


class PredictionError(ValueError):
    """Predictions that cannot be scored or submitted (the message names video, split, store)."""


def describe_store(store: Any) -> str:
    """The path(s) of a feature store, FeatureSets or annotated rows, for messages."""
    stores = getattr(store, "stores", None)
    if isinstance(stores, dict):
        return ", ".join(f"{n}={describe_store(s)}" for n, s in stores.items())
    inner = getattr(store, "store", None)
    if inner is not None and inner is not store:
        return describe_store(inner)
    return str(getattr(store, "path", store))


def check_finite(outputs: list[np.ndarray], names: list[str], split: str, store: Any) -> None:
    """Raises PredictionError naming the first video whose predictions hold NaN or inf."""
    for name, out in zip(names, outputs):
        bad = ~np.isfinite(out)
        if bad.any():
            frames = np.flatnonzero(bad.reshape(len(out), -1).any(axis=1))
            raise PredictionError(
                f"non-finite predictions for video {name!r} of the {split} split ({len(frames)} "
                f"frames, first frame index {int(frames[0])}); its features in "
                f"{describe_store(store)} hold NaN/inf; nothing was written")


def check_test_features(videos: list, store: Any, test_list: Any, *,
                        allow_incomplete: bool) -> list:
    """The test videos that have features; a listed video without them is an error (a
    submission would lack its rows) unless `allow_incomplete`, which leaves it out with a note."""
    missing = [v.name for v in videos if v.name not in store]
    if not missing:
        return videos
    where = (f"{len(missing)} videos of the test list {test_list} have no features in "
             f"{describe_store(store)}, e.g. {missing[:3]}")
    if not allow_incomplete:
        raise PredictionError(f"{where}: the submission would be incomplete; extract their "
                              f"features, or pass --allow_incomplete to write it without them")
    print(f"Warning: {where}; writing an incomplete test submission without them "
          f"(--allow_incomplete)", file=sys.stderr, flush=True)
    return [v for v in videos if v.name in store]


def test_split(data: Any, task: str, *, allow_incomplete: bool, is_main: bool) -> list | None:
    """The test-list videos of `task` with their frame counts from the feature store (which
    covers frames past the last face); None when the dataset has no test-set list. A listed
    video without features is an error (`check_test_features`)."""
    from abaw_jax.data import affwild2
    try:
        path = affwild2.test_list_path(data.root, task)
    except FileNotFoundError as e:
        if is_main:
            print(f"No test-set video list for {task}: skipping the test split ({e})",
                  file=sys.stderr)
        return None
    store = data.features
    counts = {v: store.num_frames(v) for v in store.videos}
    # Listed videos without features get a placeholder count: they are reported, then dropped.
    counts.update({n: 1 for n in affwild2.read_test_list(path) if n not in counts})
    videos = affwild2.test_videos(data.root, task, frame_counts=counts)
    return check_test_features(videos, store, path, allow_incomplete=allow_incomplete)


def index_note(store: Any) -> str:
    """"; <index file> lists N videos ..." for each index file of the store(s) behind `store`,
    so that a message about missing videos names the file that should list them (and says when
    its last line is cut: an index truncated by a copy, a full disk or an editor)."""
    stores = getattr(store, "stores", None)
    if isinstance(stores, dict):
        return "".join(index_note(s) for s in stores.values())
    inner = getattr(store, "store", None)
    if inner is not None and inner is not store:
        return index_note(inner)
    notes = []
    for path, listed, tail in getattr(store, "index_files", []):
        cut = f", then {tail} bytes of a cut line: the file is truncated" if tail else ""
        notes.append(f"{path} lists {listed} videos{cut}")
    return ("; the store's index: " + "; ".join(notes)) if notes else ""
