"""Orbax checkpoints of a run: the latest train state with the data iterator, and the best state.

`<workdir>/checkpoints/<step>/{state,data}`: the most recent states (for resuming; the grain
iterator position is saved with the state so a resumed run sees exactly the data it would have).
`<workdir>/best/<step>/state`: the state with the best validation score so far (for `evaluate`).
Orbax writes each checkpoint into a temporary directory, writes `commit_success.txt` into it
and renames it when complete. `cleanup_tmp_directories` removes temporary directories a killed
save left behind, and `RunCheckpoints` also removes step directories without the commit file
(a save killed in orbax's commit-file mode, or a partial copy), so an interrupted save never
looks like a checkpoint.

Each checkpoint also holds a content digest of every array of its state (`abaw_jax.digests`,
item `digest`), computed on the device when it is saved and checked when it is restored: a
checkpoint whose bytes changed afterwards is reported and set aside like an unreadable one. A
save that fails for want of space or permission stops the run with one line naming the path,
the free space and the last intact step.
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

from abaw_jax import digests, workdirs

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


class _DiskErrorFilter(logging.Filter):
    """Drops orbax's log records of a failed write for want of space or permission (hundreds
    of lines of TensorStore context per array): RunCheckpoints reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and workdirs.is_disk_error(
                record.exc_info[1]):
            return False
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        return not any(s in text for s in ("RESOURCE_EXHAUSTED", "No space left",
                                           "Read-only file system"))


def _quiet_disk_errors() -> None:
    # orbax logs through absl.logging; its unawaited write tasks through asyncio at exit.
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DiskErrorFilter) for f in logger.filters):
            logger.addFilter(_DiskErrorFilter())


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
        _quiet_disk_errors()
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
            item_names=("state", "data", "digest"))
        self.best = ocp.CheckpointManager(
            workdir / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max", create=True,
                cleanup_tmp_directories=True, enable_async_checkpointing=async_save,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix="abaw_jax_best")),
            item_names=("state", "digest"))
        self.directory = workdir / "checkpoints"
        self.abstract_state: Any = None   # the restore target, once restore_latest has run

    def _saving(self, manager: ocp.CheckpointManager, state: Any, save: Any) -> None:
        """Runs `save()` (an orbax save of `state` by `manager`): first the space check, then any
        failure of this or the previous asynchronous save as one line (workdirs)."""
        directory = pathlib.Path(manager.directory)
        need = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            free = None
        last = self._last_committed()
        if free is not None and free < need:
            raise CheckpointError(workdirs.disk_full_message(
                directory, OSError(28, f"No space left: {need} bytes needed"), last))
        try:
            manager.check_for_errors()
            save()
        except Exception as e:  # noqa: BLE001 - orbax wraps the OS error in its own types
            if workdirs.is_disk_error(e):
                raise CheckpointError(workdirs.disk_full_message(directory, e, last)) from None
            raise

    def save(self, step: int, state: Any, data_iter: Any, *, force: bool = False) -> None:
        """Saves the train state and the data iterator position at `step`."""
        self._wait(self.best)   # one save in flight at a time (see __init__)
        record = digests.digest(state)
        self._saving(self.latest, state, lambda: self.latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter),
            digest=ocp.args.JsonSave(record)), force=force))

    def save_best(self, step: int, state: Any, score: float) -> None:
        """Offers `state` as the best one; orbax keeps it only if `score` beats the kept one.

        A resumed run evaluates again at steps past its checkpoint, which may include the step
        of the kept best state (saved before the interruption): that state is the same, so it
        is not saved twice.
        """
        if step in self.best.all_steps():
            return
        self._wait(self.latest)
        record = digests.digest(state)
        self._saving(self.best, state, lambda: self.best.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), digest=ocp.args.JsonSave(record)),
            metrics={"score": float(score)}, force=True))

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
        self.abstract_state = abstract_state
        damaged = []
        for step in reversed(self.latest.all_steps()):
            try:
                restored = restore_verified(self.latest, step, abstract_state)
                iterator_state = _iterator_state(self.latest.directory / str(step) / "data")
            except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
                if is_mismatch(e):   # intact bytes of another model: not damaged, not renamed
                    raise CheckpointError(
                        f"{self.latest.directory / str(step)} holds a state of another model "
                        f"({' '.join(str(e).split())[:160]}); use the config it was trained with "
                        f"or another --workdir") from None
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

    def intact_step(self) -> int | None:
        """The newest checkpoint whose bytes still match their digest (damaged ones are set
        aside); None when there is none or no restore target is known. Reads the checkpoints:
        for error messages, not for every step."""
        if self.abstract_state is None:
            return self.latest.latest_step()
        self.latest.reload()
        for step in reversed(self.latest.all_steps()):
            try:
                restore_verified(self.latest, step, self.abstract_state)
            except Exception as e:  # noqa: BLE001
                _set_aside(self.latest, step, e)
                continue
            return step
        return None

    def wait(self) -> None:
        self._wait(self.latest)
        self._wait(self.best)

    def _wait(self, manager: ocp.CheckpointManager) -> None:
        """Waits for `manager`'s save in flight; a failed write is one line (workdirs)."""
        try:
            manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax wraps the OS error in its own types
            if workdirs.is_disk_error(e):
                raise CheckpointError(workdirs.disk_full_message(
                    manager.directory, e, self._last_committed())) from None
            raise

    def _last_committed(self) -> int | None:
        steps = complete_steps(self.directory)
        return steps[-1] if steps else None

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def intact_note(ckpt: RunCheckpoints) -> str:
    """"the last intact checkpoint is step N in <dir>" after its digest was checked again (a
    damaged newer one is set aside first), for the message of a run that stops."""
    step = ckpt.intact_step()
    if step is None:
        return (f"no intact checkpoint in {ckpt.directory}: a re-run starts from step 0")
    return (f"the last intact checkpoint is step {step} in {ckpt.directory} (content digest "
            f"checked); a re-run resumes there")


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
    if not str(which).isdigit():
        raise CheckpointError(f"checkpoint {which!r}: expected best, latest or a step number "
                              f"(steps in {directory}: {steps})")
    step = int(which)
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint at step {step} in {directory}; have {steps}")
    return directory, step


class _ReadOnlyNotes(logging.Filter):
    """Drops orbax's warnings that a read-only manager is read-only (asked for here: a restore
    opens the checkpoints read-only on purpose), while the manager is being opened."""

    EXPECTED = ("CheckpointManagerOptions.read_only=True", "Given directory is read only",
                "Metadata file does not exist")   # item metadata: a manager keeps it per step

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.EXPECTED)

    def __enter__(self):
        logging.getLogger("absl").addFilter(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("absl").removeFilter(self)
        return False


def state_metadata(workdir: str | pathlib.Path, which: str = "best") -> tuple[int, Any]:
    """(step, the saved state's tree of array metadata) of checkpoint `which`, read without
    restoring any array (shapes decide a model's input width, for example)."""
    directory, step = find_step(workdir, which)
    with _ReadOnlyNotes():
        saved = ocp.StandardCheckpointer().metadata(pathlib.Path(directory) / str(step) / "state")
    return step, getattr(saved, "item_metadata", saved)


def restore_params(workdir: str | pathlib.Path, abstract_state: Any, which: str = "best") -> tuple[int, Any]:
    """Restores a state from a workdir: `which` is "best", "latest" or a step number.

    The state is placed on the shardings in `abstract_state`, so a checkpoint written on one
    device count restores on any other.
    """
    directory, step = find_step(workdir, which)
    items = ("state", "digest") if directory.name == "best" else ("state", "data", "digest")
    with _ReadOnlyNotes(), ocp.CheckpointManager(
            directory, item_names=items,
            options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
        try:
            restored = restore_verified(mngr, step, abstract_state)
        except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many types
            if is_mismatch(e):
                raise
            damage = f"{directory / str(step)} is damaged ({_reason(e)})"
            if which != "best":
                raise CheckpointError(damage) from None
            return _latest_instead(directory.parent, abstract_state, damage)
    return step, restored.state


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _latest_instead(workdir: pathlib.Path, abstract_state: Any, damage: str) -> tuple[int, Any]:
    """The newest intact state of `workdir/checkpoints`, for a damaged best checkpoint (read
    only: nothing is renamed); says which step is used."""
    directory = workdir / "checkpoints"
    steps = complete_steps(directory)
    with ocp.CheckpointManager(directory, item_names=("state", "data", "digest"),
                               options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
        for step in reversed(steps):
            try:
                restored = restore_verified(mngr, step, abstract_state)
            except Exception as e:  # noqa: BLE001
                if is_mismatch(e):
                    raise
                print(f"Checkpoint {directory / str(step)} is damaged too ({_reason(e)})",
                      file=sys.stderr, flush=True)
                continue
            print(f"The best checkpoint {damage}; using the latest intact checkpoint instead: "
                  f"step {step} of {directory}", file=sys.stderr, flush=True)
            return step, restored.state
    raise CheckpointError(f"{damage}, and {directory} holds no intact checkpoint "
                          f"(steps {steps}); train again in a new workdir")


def is_mismatch(error: BaseException) -> bool:
    """An orbax restore that failed because the target has other arrays or shapes than the
    checkpoint (another config's model), as opposed to unreadable or altered bytes."""
    text = str(error)
    return isinstance(error, ValueError) and not isinstance(error, digests.DigestMismatch) and (
        "tree structures do not match" in text or "is not compatible with the stored shape" in text)


def restore_verified(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """The orbax restore of `step`'s state, checked against the digest saved with it (raises
    digests.DigestMismatch); checkpoints written without a digest restore unchecked."""
    has_digest = (pathlib.Path(manager.directory) / str(step) / "digest").is_dir()
    args = dict(state=ocp.args.StandardRestore(abstract_state))
    if has_digest:
        args["digest"] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    if has_digest:
        digests.verify(restored.state, restored.digest)
    return restored


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
