"""Orbax checkpoints of a run: the latest train state with the data iterator, and the best state.

`<workdir>/checkpoints/<step>/{state,data}`: the most recent states (for resuming; the grain
iterator position is saved with the state so a resumed run sees exactly the data it would have).
`<workdir>/best/<step>/state`: the state with the best validation score so far (for `evaluate`).
Orbax writes each checkpoint into a temporary directory and renames it when complete, and
`cleanup_tmp_directories` removes what a killed save left behind, so an interrupted save never
looks like a checkpoint.
"""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
    """The two checkpoint managers of a workdir."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 2, async_save: bool = True):
        workdir = pathlib.Path(workdir).absolute()
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save),
            item_names=("state", "data"))
        self.best = ocp.CheckpointManager(
            workdir / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max", create=True,
                cleanup_tmp_directories=True, enable_async_checkpointing=async_save),
            item_names=("state",))

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state: Any, data_iter: Any, *, force: bool = False) -> None:
        """Saves the train state and the data iterator position at `step`."""
        self.latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)),
            force=force)

    def save_best(self, step: int, state: Any, score: float) -> None:
        """Offers `state` as the best one; orbax keeps it only if `score` beats the kept one."""
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                       metrics={"score": float(score)}, force=True)

    def restore_latest(self, abstract_state: Any, data_iter: Any) -> tuple[int, Any]:
        """Restores the newest state (onto the shardings of `abstract_state`) and the iterator."""
        step = self.latest.latest_step()
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iter)))
        return step, restored.state

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def restore_params(workdir: str | pathlib.Path, abstract_state: Any, which: str = "best") -> tuple[int, Any]:
    """Restores a state from a workdir: `which` is "best", "latest" or a step number.

    The state is placed on the shardings in `abstract_state`, so a checkpoint written on one
    device count restores on any other.
    """
    workdir = pathlib.Path(workdir).absolute()
    sub = "best" if which == "best" else "checkpoints"
    directory = workdir / sub
    if not directory.exists():
        raise FileNotFoundError(f"no checkpoints in {directory}: train first (python -m abaw_jax.train)")
    items = ("state",) if sub == "best" else ("state", "data")
    with ocp.CheckpointManager(directory, item_names=items,
                               options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
        if which in ("best", "latest"):
            # The best directory keeps a single checkpoint, so its newest is the best.
            step = mngr.latest_step()
        else:
            step = int(which)
            if step not in mngr.all_steps():
                raise FileNotFoundError(f"no checkpoint at step {step} in {directory}; "
                                        f"have {sorted(mngr.all_steps())}")
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {directory}")
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
    return step, restored.state


def abstract_like(tree: Any, sharding: Any) -> Any:
    """ShapeDtypeStructs of `tree` carrying `sharding`, the restore target orbax needs."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
