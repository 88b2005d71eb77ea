"""Orbax checkpoints of a run: the latest train state with the data iterator, and the best state.

`<workdir>/checkpoints/<step>/{state,data}`: the most recent states (for resuming; the grain
iterator position is saved with the state so a resumed run sees exactly the data it would have).
`<workdir>/best/<step>/state`: the state with the best validation score so far (for `evaluate`).
Orbax writes each checkpoint into a temporary directory, writes `commit_success.txt` into it
and renames it when complete. `cleanup_tmp_directories` removes temporary directories a killed
save left behind, and `RunCheckpoints` also removes step directories without the commit file
(a save killed in orbax's commit-file mode, or a partial copy), so an interrupted save never
looks like a checkpoint.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

COMMIT_FILE = "commit_success.txt"
DAMAGED_PREFIX = "damaged-"


class CheckpointError(ValueError):
    """A checkpoint cannot be restored; the message names its directory."""


def _set_aside(manager: ocp.CheckpointManager, step: int, error: BaseException) -> None:
    """Renames an unreadable checkpoint step to `damaged-<step>` (kept for inspection)."""
    directory = pathlib.Path(manager.directory)
    src = directory / str(step)
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    print(f"Checkpoint {src} is damaged ({type(error).__name__}: {reason}); trying the previous "
          f"one", file=sys.stderr, flush=True)
    if jax.process_index() == 0 and src.exists():
        dst = directory / f"{DAMAGED_PREFIX}{step}"
        if dst.exists():
            shutil.rmtree(dst)
        src.rename(dst)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"abaw_jax.checkpoints.set_aside.{step}")
    manager.reload()


def complete_steps(directory: str | pathlib.Path) -> list[int]:
    """Steps in `directory` whose checkpoint was committed, ascending."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and (p / COMMIT_FILE).is_file())


def discard_incomplete(directory: str | pathlib.Path) -> list[pathlib.Path]:
    """Deletes step directories of `directory` that were never committed; returns them."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.iterdir()):
        if p.is_dir() and p.name.isdigit() and not (p / COMMIT_FILE).is_file():
            logging.warning("removing incomplete checkpoint %s (no %s)", p, COMMIT_FILE)
            print(f"Removing incomplete checkpoint {p} (no {COMMIT_FILE}: its save was "
                  f"interrupted)", file=sys.stderr, flush=True)
            shutil.rmtree(p)
            removed.append(p)
    return removed


class RunCheckpoints:
    """The two checkpoint managers of a workdir."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 2, async_save: bool = True):
        workdir = pathlib.Path(workdir).absolute()
        if jax.process_index() == 0:
            for sub in ("checkpoints", "best"):
                discard_incomplete(workdir / sub)
        if jax.process_count() > 1:
            # No process may list the steps before process 0 has removed the incomplete ones.
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("abaw_jax.checkpoints.discard_incomplete")
        # Each manager finishes its saves in a background thread that meets the other processes
        # at barriers named by orbax; without a prefix of its own, the two managers' barriers
        # share names, and a best save finishing while a latest save starts can pair one
        # process's best barrier with another's latest barrier and hang both.
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix="abaw_jax_latest")),
            item_names=("state", "data"))
        self.best = ocp.CheckpointManager(
            workdir / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max", create=True,
                cleanup_tmp_directories=True, enable_async_checkpointing=async_save,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix="abaw_jax_best")),
            item_names=("state",))

    def save(self, step: int, state: Any, data_iter: Any, *, force: bool = False) -> None:
        """Saves the train state and the data iterator position at `step`."""
        self.best.wait_until_finished()   # one save in flight at a time (see __init__)
        self.latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)),
            force=force)

    def save_best(self, step: int, state: Any, score: float) -> None:
        """Offers `state` as the best one; orbax keeps it only if `score` beats the kept one.

        A resumed run evaluates again at steps past its checkpoint, which may include the step
        of the kept best state (saved before the interruption): that state is the same, so it
        is not saved twice.
        """
        if step in self.best.all_steps():
            return
        self.latest.wait_until_finished()
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                       metrics={"score": float(score)}, force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, abstract_state: Any, data_iter: Any) -> tuple[int, Any] | None:
        """Restores the newest intact state (onto the shardings of `abstract_state`) and the
        iterator position; None when the workdir has no checkpoint yet.

        A checkpoint that cannot be read (a data file truncated by a full disk, say) is named on
        stderr, renamed to `damaged-<step>` so that no later run trips on it, and the previous
        one is restored instead: `keep` >= 2 keeps one for that. The state restores on any device
        count. The iterator position is the same in every process (each iterates the global
        batches and keeps its rows), so a run saved by N processes resumes on M: a process
        without its own file takes process 0's.
        """
        damaged = []
        for step in reversed(self.latest.all_steps()):
            try:
                restored = self.latest.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state)))
                iterator_state = _iterator_state(self.latest.directory / str(step) / "data")
            except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
                damaged.append(step)
                _set_aside(self.latest, step, e)
                continue
            data_iter.set_state(iterator_state)
            if hasattr(data_iter, "start_prefetch"):
                data_iter.start_prefetch()   # as grain's own restore does: read ahead from here
            return step, restored.state
        if damaged:
            raise CheckpointError(
                f"{self.latest.directory}: every checkpoint is damaged (steps {damaged}, set "
                f"aside as damaged-<step>); remove the workdir to start afresh")
        return None

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def find_step(workdir: str | pathlib.Path, which: str = "best") -> tuple[pathlib.Path, int]:
    """(directory, step) of checkpoint `which` ("best", "latest" or a step) of a workdir: the
    newest committed step, or the given one; the saved state is ``directory/<step>/state``.

    Steps whose save was interrupted (no commit marker) are skipped, not deleted.
    """
    workdir = pathlib.Path(workdir).absolute()
    directory = workdir / ("best" if which == "best" else "checkpoints")
    if not directory.exists():
        raise FileNotFoundError(f"no checkpoints in {directory}: train first (python -m abaw_jax.train)")
    steps = complete_steps(directory)
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {directory}")
    if which in ("best", "latest"):
        # The best directory keeps a single checkpoint, so its newest is the best.
        return directory, steps[-1]
    step = int(which)
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint at step {step} in {directory}; have {steps}")
    return directory, step


class _ReadOnlyNotes(logging.Filter):
    """Drops orbax's warnings that a read-only manager is read-only (asked for here: a restore
    opens the checkpoints read-only on purpose), while the manager is being opened."""

    EXPECTED = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.EXPECTED)

    def __enter__(self):
        logging.getLogger("absl").addFilter(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("absl").removeFilter(self)
        return False


def restore_params(workdir: str | pathlib.Path, abstract_state: Any, which: str = "best") -> tuple[int, Any]:
    """Restores a state from a workdir: `which` is "best", "latest" or a step number.

    The state is placed on the shardings in `abstract_state`, so a checkpoint written on one
    device count restores on any other.
    """
    directory, step = find_step(workdir, which)
    items = ("state",) if directory.name == "best" else ("state", "data")
    with _ReadOnlyNotes(), ocp.CheckpointManager(
            directory, item_names=items,
            options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
    return step, restored.state


def _iterator_state(directory: Any) -> dict:
    """The grain iterator state saved in `directory` for this process (see restore_latest)."""
    directory = pathlib.Path(directory)
    i, n = jax.process_index(), jax.process_count()
    path = directory / f"process_{i}-of-{n}.json"
    if not path.is_file():
        saved = sorted(directory.glob("process_0-of-*.json"))
        if not saved:
            raise FileNotFoundError(f"{directory}: no data iterator state (process_*-of-*.json)")
        path = saved[0]
        logging.info("no iterator state for process %d of %d: using %s", i, n, path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the data iterator state is not valid JSON ({e})") from None


def abstract_like(tree: Any, sharding: Any) -> Any:
    """ShapeDtypeStructs of `tree` carrying `sharding`, the restore target orbax needs."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
